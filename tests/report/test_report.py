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

from mtt_fast.report.build import build_report
from mtt_fast.report.collect import SynsetInfo, kind_of
from mtt_fast.report.counts import real_class_counts
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


def _synset(path, method: str, ipc: int, store=None, classes=CLASSES, dataset="toy", seed=0, distill=None):
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
    if distill is not None:
        meta["distill"] = distill
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
    _write(rnd / "eval_cross" / "config.yaml", "command: eval\narchs: [alexnet, vgg11]\nrepeats: 3\n"
                                               "lr_grid: [0.001, 0.01]\n")
    for name in ("select-alexnet-lr0.001-r0", "select-alexnet-lr0.01-r0"):  # a killed eval's saved networks
        _write(rnd / "eval_cross" / "networks" / f"{name}.json", "{}")
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
    # per architecture: 2 selection networks (one is repeat 0) + 2 more repeats
    assert "eval_cross: evaluation still running or stopped (2 of 8 networks saved" in md
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


def test_results_markdown_is_the_evaluation_layers():
    """Old scripts import results_markdown from the report; it is the evaluation layer's own."""
    from mtt_fast.evaluate import tables as ev_tables
    from mtt_fast.report import tables as rep_tables

    assert rep_tables.results_markdown is ev_tables.results_markdown
    assert rep_tables.pm is ev_tables.pm and rep_tables.METRIC_NAMES is ev_tables.METRIC_NAMES


def _reachable_synset(tmp_path, classes=("A", "B")):
    """A synset whose dataset root exists but whose trajectory store records no counts."""
    root = tmp_path / "data"
    root.mkdir()
    syn = SynsetInfo(tmp_path, {"classes": list(classes), "dataset": {"name": "toy", "root": str(root), "res": 8,
                                                                      "seed": 0, "split_fingerprint": "beef"}},
                     None, None)
    return syn, root


def test_real_counts_come_from_the_callers_loader(tmp_path):
    """No store records the counts: the caller's loader is asked (with the dataset meta), never the data."""
    from mtt_fast.errors import UserError

    syn, root = _reachable_synset(tmp_path)
    seen = []

    def loader(meta):
        seen.append(meta)
        return [7, 3]

    counts, source = real_class_counts(syn, [], True, {}, loader)
    assert counts == [7, 3] and source == f"counted in {root}"
    assert seen == [syn.meta["dataset"]]
    counts, source = real_class_counts(syn, [], False, {}, loader)
    assert counts is None and "--no-load-data" in source and len(seen) == 1
    counts, source = real_class_counts(syn, [], True, {}, None)
    assert counts is None and "not loaded" in source

    def broken(meta):
        raise UserError("dataset meta: missing key 'seed'")

    counts, source = real_class_counts(syn, [], True, {}, broken)
    assert counts is None and source == f"the data at {root} could not be read: dataset meta: missing key 'seed'"
    # unreachable data: the loader is not asked
    gone = SynsetInfo(tmp_path, {"classes": ["A", "B"], "dataset": {"name": "toy", "root": str(tmp_path / "gone")}},
                      None, None)
    counts, source = real_class_counts(gone, [], True, {}, loader)
    assert counts is None and "not reachable" in source and len(seen) == 1


def test_build_report_passes_the_dataset_meta_to_class_counts(tmp_path):
    syn_dir = tmp_path / "runs" / "syn"
    _synset(syn_dir, "mtt", 1, dataset="toy")
    meta = json.loads((syn_dir / "meta.json").read_text())
    root = tmp_path / "data"
    root.mkdir()
    meta["dataset"]["root"] = str(root)
    (syn_dir / "meta.json").write_text(json.dumps(meta))
    ev = tmp_path / "runs" / "ev"
    _write(ev / "config.yaml", yaml.safe_dump({"command": "eval", "synset": str(syn_dir)}))
    _write(ev / "results.json", json.dumps(_results("mtt", 1, {"convnet": _arch(60.0, 50.0, [1.0, 2.0, 3.0])})))
    calls = []

    def loader(ds):
        calls.append(ds)
        return [30, 10, 5]

    outs = {}
    for name, kw in (("with", {"class_counts": loader}), ("without", {}), ("off", {"class_counts": loader,
                                                                                  "load_data": False})):
        outs[name] = tmp_path / name
        outs[name].mkdir()
        data = build_report([ev], outs[name], log=lambda s: None, **kw)
        assert len(data["images"]) == len(re.findall(r"!\[", (outs[name] / "report.md").read_text()))
    assert calls == [meta["dataset"]]
    counts = [json.loads((outs[n] / "report.json").read_text())["class_counts"][0] for n in ("with", "without", "off")]
    assert counts[0]["real_train"] == [30, 10, 5] and counts[0]["real_source"] == f"counted in {root}"
    assert counts[1]["real_train"] is None and "not loaded" in counts[1]["real_source"]
    assert counts[2]["real_train"] is None and "--no-load-data" in counts[2]["real_source"]
    assert "Real class counts not shown" not in (outs["with"] / "report.md").read_text()


def test_train_class_counts_counts_the_data(tmp_path, monkeypatch):
    """The loader the stage layer passes in: the data's own training split counts."""
    from mtt_fast.data import load_dataset
    from mtt_fast.data.counts import train_class_counts
    from tests.fixtures.datasets import make_crc

    monkeypatch.setenv("MTT_FAST_CACHE", str(tmp_path / "cache"))
    root = make_crc(tmp_path / "crc", patients_per_class=2, tiles_per_patient=2, size=16, test_patients_per_class=1)
    bundle = load_dataset("crc", root, 8, progress=False, cache_dir=str(tmp_path / "cache"))
    want = list(bundle.split("train").class_counts())
    assert train_class_counts(bundle.meta()) == want and sum(want) > 0
    syn = SynsetInfo(tmp_path, {"classes": list(bundle.classes), "dataset": bundle.meta()}, None, None)
    counts, source = real_class_counts(syn, [], True, {}, train_class_counts)
    assert counts == want and source == f"counted in {root}"


def test_report_layer_never_imports_the_data_layer():
    """Statically (no import of mtt_fast.data in mtt_fast/report) and at run time."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    import mtt_fast.report

    for f in Path(mtt_fast.report.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "mtt_fast.data" or n.startswith("mtt_fast.data.") for n in names), (f, names)
    code = ("import sys; import mtt_fast.report.build, mtt_fast.report.plots; "
            "print(sorted(m for m in sys.modules if m == 'mtt_fast.data' or m.startswith('mtt_fast.data.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_steps_hand_plain_data_on(runs, tmp_path):
    """collect -> make_tables (plain data) -> draw_figures (files) -> render (report files)."""
    from mtt_fast.report.collect import collect
    from mtt_fast.report.entries import make_tables
    from mtt_fast.report.figures import draw_figures
    from mtt_fast.report.render import json_safe, render

    col = collect([runs])
    tables = make_tables(col, load_data=False)
    assert tables.found == {"distills": 2, "evals": 4, "sweeps": 1}
    json.dumps(json_safe(tables.__dict__))  # plain data all the way down
    toy = next(g for g in tables.cross_arch if g["dataset"] == "toy")
    assert toy["archs"] == ["alexnet", "vgg11", "resnet18"]
    assert [(r["label"], r["source"]) for r in toy["rows"]] == [("Random real", "study/random_ipc1/eval"),
                                                                ("MTT", "study/mtt_ipc1/eval_cross")]
    assert [r["note"] for r in tables.recall] == ["no random-real baseline evaluated at this ipc: the distilled set alone",
                                                  "distilled sets beside the random-real baseline"]
    assert tables.distill_runs[0]["best_iteration"] == 3 and tables.distill_runs[0]["steps_done"] == 6
    counts = {c["dataset"]: c for c in tables.class_counts}
    assert counts["toy"]["distilled"] == [("ipc 1: Random real, MTT", [1, 1, 1])]
    assert [s["name"] for s in tables.synsets] == ["study/extra/crc_eval", "study/mtt_ipc1", "study/random_ipc1"]
    assert [t["value"] for t in tables.max_test] == [68.0]

    out = tmp_path / "rep"
    figures = draw_figures(col, tables, out)
    assert [f.kind for f in figures] == ["curves", "recall", "recall", "counts", "counts", "grid", "grid", "grid"]
    assert all(f.path.is_file() and f.path.parent == out / "plots" for f in figures)
    assert sorted(f.copy.name for f in figures if f.kind == "grid") == sorted(p.name for p in (out / "grids").iterdir())
    assert not (out / "report.md").exists()
    data = render(tables, figures, out)
    assert data["images"] == [f.path.relative_to(out).as_posix() for f in figures]
    assert json.loads((out / "report.json").read_text())["grids"][1]["grid"] == "grids/study_mtt_ipc1.png"


def test_grid_figure_labels_rows_once(tmp_path, monkeypatch):
    """A labelled grid.png is shown as it is; an old unlabelled one gets the same labels drawn."""
    from mtt_fast.report import plots
    from mtt_fast.synth.synset import label_rows

    _synset(tmp_path / "new", "mtt", 1)
    old = tmp_path / "old.png"
    img = Image.open(tmp_path / "new" / "grid.png").convert("RGB")
    band = np.asarray(img).shape[1] - 64 - 2 * 2  # one 64 px tile per row and its pads
    img.crop((band, 0, img.width, img.height)).save(old)  # as grid.png was written before the labels
    calls = []

    def spy(canvas, classes, **kw):
        calls.append(list(classes))
        return label_rows(canvas, classes, **kw)

    monkeypatch.setattr(plots, "label_rows", spy)
    plots.plot_grid(tmp_path / "new" / "grid.png", CLASSES, "new", tmp_path / "new.png")
    assert calls == []
    plots.plot_grid(old, CLASSES, "old", tmp_path / "old_fig.png")
    assert calls == [CLASSES]
    # the old grid, labelled, is the new grid: the same labels as grid.png carries
    relabelled = label_rows(np.asarray(Image.open(old).convert("RGB")), CLASSES, pad=2)
    assert np.array_equal(relabelled, np.asarray(Image.open(tmp_path / "new" / "grid.png").convert("RGB")))


def test_a_running_evals_note_counts_its_saved_networks(tmp_path):
    from mtt_fast.report.collect import running_eval_note

    run = tmp_path / "ev"
    _write(run / "config.yaml", "command: eval\narchs: [resnet18]\nrepeats: 3\nlr_grid: null\n")
    assert "(0 of 3 networks saved" in running_eval_note(run)
    for r in range(2):
        _write(run / "networks" / f"report-resnet18-lr0.01-r{r}.json", "{}")
    assert "(2 of 3 networks saved" in running_eval_note(run)
    # a grid naming the default rate may coincide with another entry: no total is claimed
    _write(run / "config.yaml", "command: eval\narchs: [resnet18]\nrepeats: 3\nlr_grid: [null, 0.01]\n")
    assert "(2 networks saved" in running_eval_note(run)


def test_runs_of_one_method_with_other_ideas_are_separate_columns_and_rows(tmp_path):
    """MTT, MTT + EMA images and MTT + widening range + PAD's layers are three methods to the report;
    picking one of them as "MTT" would report an idea's number as plain MTT's."""
    variants = {"plain": ({"match_layers": "all", "ema_images": None}, 70.0),
                "ema": ({"ema_images": 0.99, "match_layers": "all"}, 72.0),
                "range_pad": ({"start_epoch_schedule": "2:4:60", "match_layers": "deep:0.5"}, 68.0)}
    for name, (distill, acc) in variants.items():
        run = tmp_path / "runs" / name
        _synset(run / "synset", "mtt", 1, distill=distill)
        _write(run / "eval" / "config.yaml", f"command: eval\nsynset: {run / 'synset'}\n")
        _write(run / "eval" / "results.json", json.dumps(_results("mtt", 1, {
            "convnet": _arch(acc, acc, [acc] * 3), "alexnet": _arch(acc - 10, acc - 10, [1.0, 2.0, 3.0])})))
    out = tmp_path / "report"
    cli(tmp_path / "runs", "--out", out)
    md = (out / "report.md").read_text()
    header = _row(md, "| Dataset | Metric | Img/Cls |")
    assert "| MTT | " in header and "| MTT + EMA images |" in header
    assert "| MTT + widening range + layers deep:0.5 |" in header
    row = _row(md, "| toy | Accuracy (%) | 1 |")
    cells = [c.strip() for c in row.split("|")]
    cols = [c.strip() for c in header.split("|")]
    assert cells[cols.index("MTT")].startswith("70.0")
    assert cells[cols.index("MTT + EMA images")].startswith("72.0")
    assert cells[cols.index("MTT + widening range + layers deep:0.5")].startswith("68.0")
    assert "| MTT + EMA images | 1 | 62.0 ± 1.0 |" in md  # the unseen table keeps them apart too
    methods = {e["method"] for e in json.loads((out / "report.json").read_text())["table1"]}
    assert methods == {"mtt", "mtt+ema", "mtt+range+layers=deep:0.5"}


def test_a_distill_run_kept_without_its_config_is_read_from_its_synset(tmp_path):
    """What a study keeps of a finished run (synset/ and summary.json, no config.yaml) is still a
    distill run to the report, with the ideas it used read from the synset's meta; the evaluations
    laid out under it are its own (they have no config.yaml naming their synset either)."""
    for name, distill, acc in (("plain", {"match_layers": "all", "skip_loss_above": None}, 70.0),
                               ("skip", {"match_layers": "all", "skip_loss_above": 1.1}, 73.0)):
        run = tmp_path / "kept" / name
        _synset(run / "synset", "mtt", 1, distill=distill)
        _write(run / "summary.json", json.dumps({"best_iteration": 100, "best_val_accuracy": acc}))
        _write(run / "eval_cross" / "alexnet" / "results.json", json.dumps(_results("mtt", 1, {
            "alexnet": _arch(acc - 10, acc - 10, [1.0, 2.0, 3.0])})))
        _write(run / "eval" / "results.json", json.dumps(_results("mtt", 1, {
            "convnet": _arch(acc, acc, [acc] * 3)})))
    out = tmp_path / "report"
    cli(tmp_path / "kept", "--out", out, "--no-load-data")
    md = (out / "report.md").read_text()
    assert "- 2 distill run(s), 4 evaluation(s)" in md
    header = _row(md, "| Dataset | Metric | Img/Cls |")
    cols = [c.strip() for c in header.split("|")]
    cells = [c.strip() for c in _row(md, "| toy | Accuracy (%) | 1 |").split("|")]
    assert cells[cols.index("MTT")].startswith("70.0")
    assert cells[cols.index("MTT + loss skipping")].startswith("73.0")
    assert "| MTT + loss skipping | 1 | 63.0 ± 1.0 |" in md
    # a bare synset directory with nothing else is not mistaken for a run
    lone = tmp_path / "lone"
    _synset(lone / "synset" / "x", "mtt", 1)
    assert kind_of(lone) is None


def test_learned_soft_labels_are_a_variant_of_mtt_but_not_of_a_control():
    """DATM's learned labels make another MTT; the controls' fixed soft labels are the same selection
    of real images (the "(soft)" of their evaluations tells them apart)."""
    from mtt_fast.report.collect import method_label, method_variant

    assert method_variant("mtt", {"soft_labels": True, "ema_images": 0.99}) == "mtt+learned-labels+ema"
    assert method_variant("mtt", {"soft_labels": False}) == "mtt"
    assert method_variant("herding", {"soft_labels": True}) == "herding"
    assert method_label("mtt+learned-labels", "soft") == "MTT + learned labels (soft)"


def test_an_evaluation_without_its_synset_names_its_variant_from_its_results(tmp_path):
    """results.json records the synset's distill options: an evaluation copied on its own (no
    config.yaml, no synset) is still "MTT + EMA images", not plain MTT."""
    res = _results("mtt", 1, {"convnet": _arch(72.0, 72.0, [72.0] * 3)})
    _write(tmp_path / "runs" / "ev" / "results.json", json.dumps({**res, "distill": {"ema_images": 0.99}}))
    out = tmp_path / "report"
    cli(tmp_path / "runs", "--out", out, "--no-load-data")
    assert {e["method"] for e in json.loads((out / "report.json").read_text())["table1"]} == {"mtt+ema"}


def test_table1_with_more_methods_than_fit_across_has_a_row_per_method():
    """Many variants of one method: Table 1 turns on its side (a row per method run, a column per
    dataset and size) instead of a table 20 columns wide; methods not run get no row."""
    from mtt_fast.report.tables import TABLE1_MAX_COLUMNS, table1_markdown

    def entry(method, ipc, acc, labels="hard"):
        return {"dataset": "toy", "split": "test", "metric": "accuracy", "ipc": ipc, "ratio_percent": 1.0 * ipc,
                "method": method, "labels": labels, "arch": "convnet", "runs": 3,
                "mean": {"accuracy": acc, "balanced_accuracy": acc - 1}, "std": {"accuracy": 1.0,
                                                                              "balanced_accuracy": 1.0}}

    few = [entry("mtt", 1, 60.0), entry("mtt+ema", 1, 61.0)]
    assert table1_markdown(few).splitlines()[2].startswith("| Dataset | Metric | Img/Cls |")
    variants = [f"mtt+layers=deep:0.{i}" for i in range(1, TABLE1_MAX_COLUMNS)]
    many = [entry("mtt", 1, 60.0), entry("mtt", 10, 70.0), entry("herding", 1, 55.0, "soft"),
            *(entry(v, 10, 71.0 + i) for i, v in enumerate(variants))]
    md = table1_markdown(many)
    lines = md.splitlines()
    assert lines[2] == "| Method | toy, Accuracy (%), 1 img/cls (1.0000 %) | toy, Accuracy (%), 10 img/cls (10.0000 %) |"
    assert "| MTT | 60.0 ± 1.0 (bal. 59.0 ± 1.0) | 70.0 ± 1.0 (bal. 69.0 ± 1.0) |" in lines
    assert "| Herding (soft) | 55.0 ± 1.0 (bal. 54.0 ± 1.0) | - |" in lines
    assert "| MTT + layers deep:0.1 | - | 71.0 ± 1.0 (bal. 70.0 ± 1.0) |" in lines
    assert not any(line.startswith(("| DD |", "| GLaD |", "| Herding |")) for line in lines)
    assert len([line for line in lines if line.startswith("| ")]) == 1 + 2 + len(variants)  # header, MTT, Herding (soft), the variants
