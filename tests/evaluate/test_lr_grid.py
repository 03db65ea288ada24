"""``eval --lr-grid``: each architecture's starting rate chosen on the validation split.

The selection network is repeat 0 of the reported ones, so an evaluation with ``--lr-grid``
reports exactly what ``--lr <chosen>`` reports, and each candidate's recorded validation score
is what ``--split val --lr <candidate> --repeats 1`` measures.
"""

from __future__ import annotations

import json

import pytest
import torch

from mtt_fast.errors import UserError
from mtt_fast.evaluate import run as eval_run
from mtt_fast.evaluate.protocol import EvalConfig
from mtt_fast.stages.common import parse_lr_grid
from mtt_fast.synth import Synset
from tests.cli.conftest import run

COMMON = ["--epochs", "2", "--no-progress"]
GRID = "0.001,0.2"


@pytest.fixture(scope="module")
def synset(store, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lrgrid")
    run("distill", "--buffer", store, "--method", "random", "--ipc", "2", "--no-progress", "--out", tmp / "random")
    return tmp


def _res(path):
    return json.loads((path / "results.json").read_text())


def test_the_grid_reports_what_the_chosen_rate_reports_and_records_each_candidates_validation_score(synset):
    tmp = synset
    run("eval", "--synset", tmp / "random", "--archs", "convnet", "--repeats", "2", "--lr-grid", GRID, *COMMON,
        "--out", tmp / "grid")
    res = _res(tmp / "grid")
    conv = res["results"]["convnet"]
    sel = conv["lr_selection"]
    metric = res["metric"]
    assert sel["split"] == "val" and sel["metric"] == metric
    assert [c["lr"] for c in sel["candidates"]] == [0.001, 0.2]
    scores = [c["val"][metric] for c in sel["candidates"]]
    best = max(range(2), key=lambda i: (scores[i], -i))
    assert sel["chosen"] == conv["lr"] == sel["candidates"][best]["lr"]
    assert len(conv["runs"]) == 2
    # the same evaluation at the chosen rate: the same networks, the same numbers
    run("eval", "--synset", tmp / "random", "--archs", "convnet", "--repeats", "2", "--lr", str(conv["lr"]), *COMMON,
        "--out", tmp / "fixed")
    fixed = _res(tmp / "fixed")["results"]["convnet"]
    assert fixed["runs"] == conv["runs"] and fixed["mean"] == conv["mean"]
    # each candidate's validation score is that of repeat 0 trained at that rate, tested on val
    for c in sel["candidates"]:
        out = tmp / f"val_{c['lr']}"
        run("eval", "--synset", tmp / "random", "--archs", "convnet", "--repeats", "1", "--split", "val",
            "--lr", str(c["lr"]), *COMMON, "--out", out)
        assert _res(out)["results"]["convnet"]["runs"][0][metric] == c["val"][metric]
    cfg = (tmp / "grid" / "config.yaml").read_text()
    assert "lr_grid:" in cfg and "0.2" in cfg
    # a finished grid evaluation is found again; another grid on the same --out is refused, naming it
    assert "nothing to do" in run("eval", "--synset", tmp / "random", "--archs", "convnet", "--repeats", "2",
                                  "--lr-grid", GRID, *COMMON, "--out", tmp / "grid").output
    r = run("eval", "--synset", tmp / "random", "--archs", "convnet", "--repeats", "2", "--lr-grid", "0.001,0.1",
            *COMMON, "--out", tmp / "grid", ok=False)
    assert r.exit_code == 2 and "lr_grid" in r.output, r.output


@pytest.mark.parametrize("args, message", [
    (["--lr-grid", "0.01,abc"], "--lr-grid: 'abc' is neither a number nor 'default'"),
    (["--lr-grid", "0.01,0"], "--lr-grid: 0 is not a positive finite rate"),
    (["--lr-grid", "0.01,nan"], "--lr-grid: nan is not a positive finite rate"),
    (["--lr-grid", "0.01", "--lr", "0.1"], "--lr and --lr-grid: give one of them"),
    (["--lr-grid", "0.01", "--split", "val"], "--lr-grid chooses the rate on the validation split"),
])
def test_bad_grids_are_one_line_exit_2_and_write_nothing(synset, tmp_path, args, message):
    out = tmp_path / "ev"
    r = run("eval", "--synset", synset / "random", "--repeats", "1", *COMMON, *args, "--out", out, ok=False)
    assert r.exit_code == 2 and message in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert not out.exists()


def test_parse_lr_grid():
    assert parse_lr_grid("default, 0.001,1e-2") == [None, 0.001, 0.01]
    assert parse_lr_grid("") is None and parse_lr_grid(None) is None
    with pytest.raises(UserError, match="'x'"):
        parse_lr_grid("x")


def _synset(syn_lr):
    return Synset(images=torch.zeros(2, 1, 8, 8), labels=torch.tensor([0, 1]), syn_lr=syn_lr,
                  meta={"arch": "convnet", "method": "mtt", "classes": ["a", "b"]})


def test_default_in_the_grid_is_evals_default_rate_and_repeats_are_dropped():
    cfg = EvalConfig()
    syn = _synset(0.05)
    assert eval_run.lr_candidates(syn, "convnet", cfg, [None, 0.01, 0.05]) == [0.05, 0.01]
    assert eval_run.lr_candidates(syn, "alexnet", cfg, [None, 0.01, 0.001]) == [0.001, 0.01]
    assert eval_run.lr_candidates(syn, "vgg11", cfg, [0.01, None]) == [0.01, 0.0001]


def test_the_best_validation_score_wins_and_ties_go_to_the_earlier_candidate(monkeypatch):
    """``select_lrs`` on scripted validation scores (no training)."""
    scripted = {("convnet", 0.1): 50.0, ("convnet", 0.01): 70.0, ("convnet", 0.001): 70.0,
                ("alexnet", 0.1): 30.0, ("alexnet", 0.01): 20.0, ("alexnet", 0.001): 10.0}

    def fake_run_cells(cells, images, labels, split, *, extra, **kw):
        assert split == "VAL" and extra == {"reported": "TEST"}
        assert all(r == 0 for _, _, r in cells)
        return [({"accuracy": scripted[(a, lr)]}, {"reported": {"accuracy": -scripted[(a, lr)]}}) for a, lr, _ in cells]

    class Bundle:
        num_classes = 10

        def split(self, name):
            return {"val": "VAL", "test": "TEST"}[name]

    monkeypatch.setattr(eval_run, "run_cells", fake_run_cells)
    chosen, record, first = eval_run.select_lrs(_synset(None), Bundle(), ["convnet", "alexnet"], EvalConfig(),
                                                [0.1, 0.01, 0.001], split="test", seed=0, device="cpu",
                                                progress=False, soft=None)
    assert chosen == {"convnet": 0.01, "alexnet": 0.1}
    assert first == {"convnet": {"accuracy": -70.0}, "alexnet": {"accuracy": -30.0}}
    assert [c["val"]["accuracy"] for c in record["convnet"]["candidates"]] == [50.0, 70.0, 70.0]
    assert record["alexnet"]["chosen"] == 0.1
