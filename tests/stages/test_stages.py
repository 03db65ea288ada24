"""The stage API: what the CLI, sweep and demo call, used directly from Python."""

from __future__ import annotations

from dataclasses import asdict, fields

import pytest
import yaml
from mtt_fast.cli.gan import gan_train
from mtt_fast.cli.main import buffer, distill, eval_cmd

from mtt_fast.distill import DistillConfig
from mtt_fast.errors import UserError
from mtt_fast.evaluate.protocol import EvalConfig
from mtt_fast.experts import ExpertConfig
from mtt_fast.generative import GANConfig
from mtt_fast.stages import DistillStage, EvalStage, run_distill, run_eval
from mtt_fast.stages.sweep import grid_names, point_stage
from mtt_fast.synth import Synset
from tests.cli.conftest import run

# CLI option name -> library setting name, where they differ
RENAMED = {"buffer_dir": "buffer", "synset_dir": "synset"}


def _defaults(command) -> dict:
    return {RENAMED.get(p.name, p.name): p.default for p in command.params if p.expose_value}


@pytest.mark.parametrize("command, config", [(buffer, ExpertConfig()), (distill, DistillConfig()),
                                             (gan_train, GANConfig()), (eval_cmd, EvalConfig())])
def test_cli_defaults_are_the_config_dataclasses_defaults(command, config):
    """Each default lives once: every CLI option that names a setting shows the dataclass's default."""
    values = config.flat() if isinstance(config, DistillConfig) else asdict(config)
    shown = _defaults(command)
    shared = set(values) & set(shown)
    assert len(shared) >= 4, shared
    wrong = {k: (shown[k], values[k]) for k in shared if shown[k] != values[k]}
    assert not wrong, wrong


def test_eval_cli_defaults_are_the_stage_defaults():
    stage = EvalStage(synset="")
    shown = _defaults(eval_cmd)
    assert shown["archs"] == ",".join(stage.archs) and shown["repeats"] == stage.repeats
    assert shown["split"] == stage.split


def test_distill_config_flat_round_trip_and_unknown_key():
    cfg = DistillConfig(method="dd", ipc=3)
    cfg.dd.dd_models = 7
    cfg.trajectory.engine = "full"
    flat = cfg.flat()
    assert flat["dd_models"] == 7 and flat["engine"] == "full" and "trajectory" not in flat
    assert DistillConfig.from_flat(flat) == cfg
    with pytest.raises(UserError, match="unknown setting 'nope'"):
        DistillConfig.from_flat({"nope": 1})
    # the method's learning-rate defaults are filled in once, by resolved()
    assert (cfg.resolved().lr_img, cfg.resolved().lr_lr) == (0.01, 1e-4)
    assert DistillConfig(method="glad", lr_img=5.0).resolved().lr_img == 5.0


def test_library_run_equals_the_cli_run(store, tmp_path):
    """run_distill from Python writes the same config and the same synset as the command."""
    args = ["--ipc", "1", "--syn-steps", "2", "--iterations", "2", "--eval-it", "2", "--eval-epochs", "2",
            "--max-start-epoch", "2", "--expert-epochs", "1", "--lr-img", "100", "--no-progress"]
    run("distill", "--buffer", store, *args, "--out", tmp_path / "cli")
    cfg = DistillConfig(ipc=1, syn_steps=2, iterations=2, lr_img=100.0)
    cfg.evaluation.eval_it, cfg.evaluation.eval_epochs = 2, 2
    cfg.trajectory.max_start_epoch, cfg.trajectory.expert_epochs = 2, 1
    summary = run_distill(DistillStage(str(store), cfg), tmp_path / "lib", progress=False, log=lambda m: None)
    assert "best_val_auc" in summary
    a, b = (yaml.safe_load((tmp_path / d / "config.yaml").read_text()) for d in ("cli", "lib"))
    assert a == b
    x, y = Synset.load(tmp_path / "cli" / "synset_last"), Synset.load(tmp_path / "lib" / "synset_last")
    assert x.images.equal(y.images) and x.syn_lr == y.syn_lr
    res = run_eval(EvalStage(str(tmp_path / "lib"), EvalConfig(epochs=2), repeats=1), tmp_path / "ev",
                   progress=False, log=lambda m: None)
    assert set(res["results"]) == {"convnet"} and (tmp_path / "ev" / "COMPLETE").is_file()


@pytest.mark.parametrize("change, words", [({"ipc": 0}, "--ipc must be at least 1"),
                                           ({"method": "glad"}, "needs --generator"),
                                           ({"method": "nope"}, "--method nope"),
                                           ({"iterations": -1}, "--iterations must be at least 1")])
def test_distill_validates_before_writing(store, tmp_path, change, words):
    cfg = DistillConfig.from_flat({**DistillConfig().flat(), **change})
    with pytest.raises(UserError, match=words):
        run_distill(DistillStage(str(store), cfg), tmp_path / "o", log=lambda m: None)
    assert not (tmp_path / "o").exists()


def test_sweep_points_become_distill_stages():
    names = grid_names()
    assert names["buffer_dir"] == "buffer" and names["lr_img"] == "lr_img" and "dsa" not in names
    assert set(DistillConfig.flat_names()) - {"dsa"} <= set(names)
    st = point_stage({"buffer": "b", "lr_img": 10, "engine": "full", "dd_models": 2, "dsa_strategy": "none"})
    assert st.buffer == "b" and st.distill.lr_img == 10 and st.distill.trajectory.engine == "full"
    assert st.distill.dd.dd_models == 2 and st.distill.dsa["strategy"] == ""
    assert {f.name for f in fields(DistillStage)} == {"buffer", "distill", "data_root"}
