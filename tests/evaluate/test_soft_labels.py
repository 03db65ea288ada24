"""Evaluation with soft labels: soft cross-entropy against softmax(soft_labels), ``eval --hard-labels``,
``results.json["labels"]``, and the report keeping soft- and hard-label rows apart."""

from __future__ import annotations

import json

import pytest
import torch
from torch.nn import functional as F

from mtt_fast.errors import UserError
from mtt_fast.evaluate.protocol import EvalConfig, soft_targets, train_on_synset
from mtt_fast.stages.evaluate import EvalStage
from mtt_fast.synth import Synset
from tests.cli.conftest import run


def _tiny_set(n_per_class: int = 3, k: int = 3):
    g = torch.Generator().manual_seed(0)
    return torch.randn(k * n_per_class, 1, 8, 8, generator=g), torch.arange(k).repeat_interleave(n_per_class)


def _train(images, labels, soft=None):
    cfg = EvalConfig(epochs=3, batch_size=4, width=4, depth=1)
    return train_on_synset("convnet", images, labels, channels=1, num_classes=3, res=8, lr=0.01, cfg=cfg, seed=5,
                           soft_labels=soft)


def test_one_hot_soft_labels_train_the_same_network_as_the_hard_labels_up_to_rounding():
    images, labels = _tiny_set()
    hard = _train(images, labels)
    # logits whose softmax is exactly one-hot in float32 (exp(-1e4) underflows to 0)
    one_hot = torch.where(F.one_hot(labels, 3).bool(), 0.0, -1e4)
    assert torch.equal(soft_targets(one_hot, 9, 3), F.one_hot(labels, 3).float())
    soft = _train(images, labels, one_hot)
    for a, b in zip(hard.parameters(), soft.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # soft labels that are not one-hot train another network
    other = _train(images, labels, torch.randn(9, 3, generator=torch.Generator().manual_seed(1)))
    assert max((a - b).abs().max().item() for a, b in zip(hard.parameters(), other.parameters())) > 1e-4


def test_soft_targets_are_checked():
    with pytest.raises(UserError, match=r"soft labels of shape \(9, 2\) do not fit 9 images of 3 classes"):
        soft_targets(torch.zeros(9, 2), 9, 3)
    with pytest.raises(UserError, match="NaN or infinite"):
        soft_targets(torch.full((9, 3), float("nan")), 9, 3)


def test_the_eval_stage_reads_its_default_from_the_dataclass():
    from mtt_fast.cli.main import eval_cmd

    opt = next(p for p in eval_cmd.params if p.name == "hard_labels")
    assert opt.default is EvalStage(synset="").hard_labels is False


@pytest.fixture(scope="module")
def soft_synset(store, tmp_path_factory):
    """The random-real synset of the tiny store, and a copy of it with random soft labels."""
    tmp = tmp_path_factory.mktemp("soft")
    run("distill", "--buffer", store, "--method", "random", "--ipc", "2", "--no-progress", "--out", tmp / "random")
    syn = Synset.load(tmp / "random")
    k = len(syn.meta["classes"])
    syn.soft_labels = torch.randn(len(syn.labels), k, generator=torch.Generator().manual_seed(2)) * 3
    syn.save(tmp / "soft")
    return tmp


@pytest.fixture(scope="module")
def evals(soft_synset):
    """Three evaluations: the soft synset as it is, with --hard-labels, and the synset without soft labels."""
    tmp = soft_synset
    common = ["--repeats", "1", "--epochs", "2", "--no-progress"]
    logs = {"ev_soft": run("eval", "--synset", tmp / "soft", *common, "--out", tmp / "ev_soft").output}
    run("eval", "--synset", tmp / "soft", *common, "--hard-labels", "--out", tmp / "ev_hard")
    run("eval", "--synset", tmp / "random", *common, "--out", tmp / "ev_plain")
    return tmp, logs


def test_eval_trains_on_soft_labels_unless_hard_labels_and_says_which(evals):
    tmp, logs = evals
    assert "soft labels" in logs["ev_soft"]
    res = {d: json.loads((tmp / d / "results.json").read_text()) for d in ("ev_soft", "ev_hard", "ev_plain")}
    assert [res[d]["labels"] for d in ("ev_soft", "ev_hard", "ev_plain")] == ["soft", "hard", "hard"]
    # --hard-labels on the soft synset trains exactly what the synset without soft labels trains
    assert res["ev_hard"]["results"] == res["ev_plain"]["results"]
    assert res["ev_soft"]["results"] != res["ev_hard"]["results"]
    assert "hard_labels: true" in (tmp / "ev_hard" / "config.yaml").read_text()
    # the synset's distill options travel with the results (a copied evaluation still names its variant)
    assert res["ev_plain"]["distill"] == Synset.load(tmp / "random").meta["distill"]
    # the same --out with the other choice is another setting: refused, naming it
    r = run("eval", "--synset", tmp / "soft", "--repeats", "1", "--epochs", "2", "--no-progress", "--hard-labels",
            "--out", tmp / "ev_soft", ok=False)
    assert r.exit_code == 2 and "hard_labels" in r.output, r.output


def test_report_keeps_the_soft_row_apart_from_its_hard_twin(evals, tmp_path):
    tmp, _ = evals
    run("report", tmp / "ev_soft", tmp / "ev_hard", "--no-load-data", "--no-progress", "--out", tmp_path / "rep")
    md = (tmp_path / "rep" / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| Dataset | Metric | Img/Cls"))
    assert "| Random real | Random real (soft) |" in header, header
    row = next(line for line in md.splitlines() if line.startswith("| ") and "| 2 |" in line)
    metric = json.loads((tmp / "ev_soft" / "results.json").read_text())["metric"]
    soft = json.loads((tmp / "ev_soft" / "results.json").read_text())["results"]["convnet"]["mean"][metric]
    hard = json.loads((tmp / "ev_hard" / "results.json").read_text())["results"]["convnet"]["mean"][metric]
    cells = [c.strip() for c in row.split("|")]
    assert cells[5].startswith(f"{hard:.1f} ±") and cells[6].startswith(f"{soft:.1f} ±"), row
    data = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert sorted(e["labels"] for e in data["table1"]) == ["hard", "soft"]


def test_an_evaluation_written_before_hard_labels_existed_is_still_finished(evals):
    import yaml

    tmp, _ = evals
    cfg_file = tmp / "ev_plain" / "config.yaml"
    cfg = yaml.safe_load(cfg_file.read_text())
    assert cfg.pop("hard_labels") is False
    cfg_file.write_text(yaml.safe_dump(cfg))
    out = run("eval", "--synset", tmp / "random", "--repeats", "1", "--epochs", "2", "--no-progress",
              "--out", tmp / "ev_plain").output
    assert "nothing to do" in out
