"""`mtt-fast report` on fake run directories written in the formats the other commands use."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from mtt_fast.cli.main import main
from PIL import Image

from mtt_fast.report.tables import results_markdown
from mtt_fast.synth import Synset

CLASSES = ["ADI", "LYM", "TUM"]
REAL = {"ADI": 30, "LYM": 10, "TUM": 5}


def cli(*args, code: int = 0):
    r = CliRunner().invoke(main, ["report", *map(str, args)], catch_exceptions=False)
    assert r.exit_code == code, r.output
    return r


def _arch(acc: float, bal: float, recall: list[float], sd: float = 1.0) -> dict:
    mean = {"accuracy": acc, "balanced_accuracy": bal, "auc": acc + 5, "per_class_recall": recall}
    return {"runs": [dict(mean)] * 3, "mean": mean, "std": {"accuracy": sd, "balanced_accuracy": sd / 2, "auc": sd}}


def _results(method: str, ipc: int, archs: dict, classes=CLASSES, metric="accuracy", dataset="toy") -> dict:
    return {"dataset": dataset, "classes": classes, "split": "test", "metric": metric, "method": method, "ipc": ipc,
            "ratio_percent": 100.0 * ipc * len(classes) / 45, "lr": 0.01, "repeats": 3, "protocol": {}, "results": archs}


def _synset(path, method: str, ipc: int, store=None, classes=CLASSES, dataset="toy", seed=0):
    g = torch.Generator().manual_seed(seed)
    k = len(classes)
    images = torch.randn(k * ipc, 1, 8, 8, generator=g)
    labels = torch.arange(k).repeat_interleave(ipc)
    meta = {"method": method, "ipc": ipc, "classes": classes, "arch": "convnet",
            "dataset": {"name": dataset, "root": "/nonexistent/data", "res": 8, "seed": 0, "classes": classes,
                        "split_fingerprint": "f00d"},
            "normalization": {"mean": [0.5], "std": [0.25]}}
    if store is not None:
        meta["buffer"] = str(store)
    Synset(images, labels, 0.01 if method != "random" else None, meta).save(path)


def _write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """demo-like folder: buffer/, mtt_ipc1/ (+eval, eval_cross), random_ipc1/ (+eval), a sweep."""
    root = tmp_path_factory.mktemp("runs") / "study"
    store = root / "buffer"
    _write(store / "config.yaml", "command: buffer\n")
    _write(store / "split.json", json.dumps({"fingerprint": "f00d", "counts": {"train": {"images": 45, "per_class": REAL}}}))
    # an MTT run: 6 iterations, evaluated every 3
    mtt = root / "mtt_ipc1"
    _write(mtt / "config.yaml", yaml.safe_dump({"command": "distill", "buffer": str(store), "method": "mtt", "ipc": 1,
                                                "iterations": 6, "engine": "adjoint"}))
    lines = []
    for it in range(7):
        if it % 3 == 0:
            v = 40.0 + 5 * it - (it == 6) * 20
            lines.append({"iteration": it, "val": {"accuracy": v, "balanced_accuracy": v - 3, "auc": v + 10,
                                                   "per_class_recall": [v, v - 10, v - 20]},
                          "val_std": {"accuracy": 1.0, "balanced_accuracy": 1.0, "auc": 1.0},
                          # the test split peaks where validation does not (iteration 6)
                          "test": {"accuracy": 50.0 + 3 * it, "balanced_accuracy": 45.0},
                          "test_std": {"accuracy": 2.0, "balanced_accuracy": 1.0}})
        if it < 6:
            lines.append({"iteration": it, "loss": 1.0 - 0.1 * it, "syn_lr": 0.01 + 0.001 * it, "seconds": 0.1})
    _write(mtt / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in lines) + '{"torn')
    _write(mtt / "summary.json", json.dumps({"best_iteration": 3, "best_val_accuracy": 55.0}))
    _synset(mtt / "synset", "mtt", 1, store)
    _write(mtt / "eval" / "results.json", json.dumps(_results("mtt", 1, {"convnet": _arch(61.25, 55.5, [90.0, 50.0, 26.5])})))
    _write(mtt / "eval_cross" / "results.json", json.dumps(_results("mtt", 1, {
        "convnet": _arch(60.0, 50.0, [80.0, 40.0, 30.0], sd=2.0), "alexnet": _arch(50.0, 45.0, [1.0, 2.0, 3.0]),
        "vgg11": _arch(52.0, 47.0, [1.0, 2.0, 3.0]), "resnet18": _arch(54.0, 49.0, [1.0, 2.0, 3.0])})))
    # the random-real baseline (no metrics.jsonl) with an eval still running beside a finished one
    rnd = root / "random_ipc1"
    _write(rnd / "config.yaml", yaml.safe_dump({"command": "distill", "method": "random", "ipc": 1, "seed": 0}))
    _synset(rnd / "synset", "random", 1, seed=1)
    _write(rnd / "eval" / "results.json", json.dumps(_results("random", 1, {
        "convnet": _arch(45.5, 33.25, [99.0, 0.5, 0.25]), "alexnet": _arch(40.0, 35.0, [1.0, 2.0, 3.0])})))
    _write(rnd / "eval_cross" / "config.yaml", "command: eval\n")
    # a sweep (format of the `sweep` command's summary.json)
    sweep = root / "sweeps" / "lr_sweep"
    _write(sweep / "summary.json", json.dumps({"metric": "accuracy", "keys": ["lr_img", "syn_steps"], "rows": [
        {"point": {"lr_img": 100.0, "syn_steps": 10}, "run": "p0", "best_val": 41.5, "best_iteration": 3, "status": "complete"},
        {"point": {"lr_img": 1000.0, "syn_steps": 10}, "run": "p1", "best_val": None, "best_iteration": None,
         "status": "incomplete"},
        {"point": {"lr_img": 10000.0, "syn_steps": 20}, "run": "p2", "best_val": 63.75, "best_iteration": 6,
         "status": "complete"}]}))
    # a binary task evaluated on its own (AUC headline)
    crc_syn = root / "extra" / "crc_glad_syn"
    _synset(crc_syn, "glad", 2, classes=["MSS", "MSIMUT"], dataset="crc")
    ev = root / "extra" / "crc_eval"
    _write(ev / "config.yaml", yaml.safe_dump({"command": "eval", "synset": str(crc_syn)}))
    _write(ev / "results.json", json.dumps(_results("glad", 2, {"convnet": _arch(70.0, 60.0, [80.0, 40.0])},
                                                    classes=["MSS", "MSIMUT"], metric="auc", dataset="crc")))
    return root


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("rep") / "report"
    r = cli(runs, "--out", out)
    assert "report in" in r.output
    return out


def _row(md: str, start: str) -> str:
    rows = [line for line in md.splitlines() if line.startswith(start)]
    assert rows, f"no row starting {start!r}"
    return rows[0]


def test_tables_hold_the_numbers(report):
    md = (report / "report.md").read_text()
    # Table 1: convnet, the eval with more networks wins (both have 3: the first found, eval/)
    row = _row(md, "| toy | Accuracy (%) | 1 |")
    assert "45.5 ± 1.0 (bal. 33.2 ± 0.5)" in row and "61.2 ± 1.0 (bal. 55.5 ± 0.5)" in row
    assert row.count(" - ") == 2  # DD and GLaD not run
    assert "| Dataset | Metric | Img/Cls | Ratio % | Random real | DD | MTT | GLaD |" in md
    crc = _row(md, "| crc | AUC (%) | 2 |")
    assert "75.0 ± 1.0 (bal. 60.0 ± 0.5)" in crc
    # Tables 2-3: unseen architectures only, averaged over them
    assert "| Synset | Img/Cls | alexnet | vgg11 | resnet18 | Average |" in md
    assert "| MTT | 1 | 50.0 ± 1.0 | 52.0 ± 1.0 | 54.0 ± 1.0 | 52.0 ± 1.0 |" in md
    assert "| Random real | 1 | 40.0 ± 1.0 | - | - | - |" in md
    # Tables 4-5: best first, unscored last
    sweep = [line for line in md.splitlines() if re.match(r"\| [123] \|", line)]
    assert [s.split("|")[2].strip() for s in sweep] == ["10000", "100", "1000"]
    assert "| 1 | 10000 | 20 | 63.8 | 6 | complete | `p2` |" in md
    # the run, the still-running eval, the real counts from the store
    assert "best validation Accuracy (%) 55.0 at iteration 3" in md
    # the labelled max-over-evaluations test number: where the TEST split peaked, marked as such
    assert "max over evaluations" in md and "selection on the test set" in md
    assert "| toy | 1 | MTT | Accuracy (%) | 68.0 ± 2.0 | 6 | `study/mtt_ipc1` |" in md
    assert "max over in-loop evaluations of the TEST split 68.0 at iteration 6" in md
    assert "eval_cross: evaluation still running" in md
    data = json.loads((report / "report.json").read_text())
    assert [t["value"] for t in data["max_test_over_evals"]] == [68.0]
    counts = {c["dataset"]: c for c in data["class_counts"]}
    assert counts["toy"]["real_train"] == [30, 10, 5] and "split.json" in counts["toy"]["real_source"]
    assert counts["crc"]["real_train"] is None  # no store, data unreachable: skipped with a note
    assert "Real class counts not shown" in md
    assert {e["method"] for e in data["table1"]} == {"mtt", "random", "glad"}


def test_every_picture_exists_and_is_inlined(report):
    md = (report / "report.md").read_text()
    html = (report / "report.html").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    names = {p.split("/")[-1].split("_")[0] for p in images}
    assert {"curves", "recall", "counts", "grid"} <= names
    for rel in images:
        img = np.asarray(Image.open(report / rel).convert("L"))
        assert img.size > 0 and len(np.unique(img)) > 1, rel
    assert len(list((report / "grids").glob("*.png"))) == 3
    assert html.count("data:image/png;base64,") == len(images)
    assert re.findall(r'src="(?!data:image/png;base64,)', html) == []
    assert "<table>" in html and "61.2 ± 1.0" in html


def test_bad_run_dir_is_one_clear_error(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    r = CliRunner().invoke(main, ["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r")])
    assert r.exit_code == 2
    err = r.output.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "empty") in err[0] and err[0].startswith("error:")
    assert not (tmp_path / "r").exists()
    r = CliRunner().invoke(main, ["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r")])
    assert r.exit_code == 2 and "missing" in r.output


def test_rerun_without_overwrite_does_nothing(runs, report):
    before = (report / "report.md").stat().st_mtime_ns
    r = cli(runs, "--out", report)
    assert "nothing to do" in r.output
    assert (report / "report.md").stat().st_mtime_ns == before
    # other inputs into the same --out: refused
    r = CliRunner().invoke(main, ["report", str(runs / "mtt_ipc1"), "--out", str(report)])
    assert r.exit_code == 2 and "--overwrite" in r.output


def test_single_run_dir_and_overwrite(runs, tmp_path):
    out = tmp_path / "one"
    cli(runs / "mtt_ipc1", "--out", out)
    md = (out / "report.md").read_text()
    assert "`mtt_ipc1/eval`" in md and "random" not in md.split("## Every evaluation")[1].lower()
    assert "distilled set alone" in md
    cli(runs / "mtt_ipc1", runs / "random_ipc1", "--out", out, "--overwrite")
    assert "Random real" in (out / "report.md").read_text()


def test_results_markdown_archs_keyword():
    r = _results("mtt", 1, {"convnet": _arch(60, 50, [1, 2, 3]), "alexnet": _arch(40, 30, [1, 2, 3])})
    default = results_markdown([("x", r)])
    assert "| Synset | Img/Cls | convnet | alexnet | Average |" in default
    assert "| x | 1 | 60.0 ± 1.0 | 40.0 ± 1.0 | 50.0 ± 1.0 |" in default
    only = results_markdown([("x", r)], archs=["alexnet"])
    assert "| Synset | Img/Cls | alexnet |" in only and "Average" not in only


def test_real_counts_from_reachable_data(tmp_path, monkeypatch):
    """No store records the counts: they are counted in the data, when it is there."""
    from mtt_fast.data import load_dataset
    from mtt_fast.report.build import real_class_counts
    from mtt_fast.report.collect import SynsetInfo
    from tests.fixtures.datasets import make_crc

    monkeypatch.setenv("MTT_FAST_CACHE", str(tmp_path / "cache"))
    root = make_crc(tmp_path / "crc", patients_per_class=2, tiles_per_patient=2, size=16, test_patients_per_class=1)
    bundle = load_dataset("crc", root, 8, progress=False, cache_dir=str(tmp_path / "cache"))
    syn = SynsetInfo(tmp_path, {"classes": list(bundle.classes), "dataset": bundle.meta()}, None, None)
    counts, source = real_class_counts(syn, [], True, {})
    assert counts == list(bundle.split("train").class_counts()) and "counted in" in source
    counts, source = real_class_counts(syn, [], False, {})
    assert counts is None and "--no-load-data" in source
