"""GAN checkpoints: the shared optimizer-state serializer, and checkpoints of the old (version 1) format.

Version 1 checkpoints (written before the GAN trainer used :mod:`mtt_fast.optim_state`)
stored each Adam state as ``opt_G.<idx>.<key>`` tensors plus the param groups in the
metadata. ``_v1_save_checkpoint`` below is that writer, verbatim, so these tests build a
real version-1 checkpoint from live training objects and resume from it.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch
from safetensors import safe_open

from mtt_fast.errors import UserError
from mtt_fast.generative import GANConfig, GANTrainer, train_gan
from mtt_fast.generative.checkpoint import (
    CHECKPOINT_VERSION,
    load_checkpoint,
    upgrade_v1_optimizer_keys,
)
from mtt_fast.io import load_tensors, save_tensors, write_json
from mtt_fast.optim_state import load_optimizer_state


# ----------------------------------------------------------- the version-1 writer, verbatim
def _opt_tensors(prefix, opt):
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{prefix}.{idx}.{k}"] = v if isinstance(v, torch.Tensor) else torch.tensor(v)
    return tensors, json.loads(json.dumps(sd["param_groups"]))


def _module_tensors(prefix, m):
    return {f"{prefix}.{k}": v for k, v in m.state_dict().items()}


def _v1_save_checkpoint(path, cfg, step, cur_nimg, G, G_ema, D, opt_G, opt_D, gen):
    tensors = {**_module_tensors("G", G), **_module_tensors("G_ema", G_ema), **_module_tensors("D", D)}
    tg, groups_G = _opt_tensors("opt_G", opt_G)
    td, groups_D = _opt_tensors("opt_D", opt_D)
    tensors.update(tg)
    tensors.update(td)
    tensors["rng"] = gen.get_state()
    meta = {"format": "mtt-fast/gan-checkpoint", "step": step, "cur_nimg": cur_nimg, "opt_G": groups_G,
            "opt_D": groups_D, "config": asdict(cfg)}
    save_tensors(path, tensors, metadata={"mtt_fast": json.dumps(meta)})
    write_json(path.with_suffix(".json"), {k: v for k, v in meta.items() if k not in ("opt_G", "opt_D")})


def _meta(path):
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["mtt_fast"])


# ----------------------------------------------------------- the key mapping, on its own
def _stepped_adam():
    torch.manual_seed(0)
    a, b, c = (torch.randn(3, requires_grad=True), torch.randn(2, 2, requires_grad=True),
               torch.randn(4, requires_grad=True))
    # two param groups, and a parameter (b) that never gets a gradient: state_dict indices
    # then skip it, and the upgrade must still land every state on its own parameter
    opt = torch.optim.Adam([{"params": [a, b]}, {"params": [c], "lr": 0.1}], lr=0.01)
    for _ in range(3):
        opt.zero_grad()
        ((a ** 2).sum() + (c ** 3).sum()).backward()
        opt.step()
    return opt, (a, b, c)


def test_v1_optimizer_keys_load_onto_the_same_parameters():
    opt, (a, b, c) = _stepped_adam()
    v1, _ = _opt_tensors("opt_G", opt)
    assert "opt_G.2.exp_avg" in v1 and "opt_G.1.exp_avg" not in v1  # c is index 2, b has no state
    fresh = torch.optim.Adam([{"params": [a, b]}, {"params": [c], "lr": 0.1}], lr=0.01)
    t = upgrade_v1_optimizer_keys({**v1, "G.weight": torch.zeros(1)}, {"opt_G": fresh})
    assert "G.weight" in t and "exp_avg_opt_G.2" in t
    assert load_optimizer_state("opt_G", fresh, t) == 6
    for p in (a, c):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(fresh.state[p][key], opt.state[p][key]), key
    assert b not in fresh.state


# ----------------------------------------------------------- resuming a whole run
@pytest.fixture(scope="module")
def crc(crc_bundle_one_thread):
    return crc_bundle_one_thread


CFG = {"steps": 4, "batch_size": 4, "z_dim": 8, "w_dim": 16, "channel_base": 64, "channel_max": 8, "r1_interval": 2,
           "checkpoint_every": 2, "quality_every": 4, "sample_every": 4, "quality_samples": 2, "classifier_epochs": 1, "log_every": 2,
           "seed": 3}
#: the recipe version-1 checkpoints were written with (before ADA and style mixing by default)
OLD_RECIPE = {"augment": "diffaug", "mixing_prob": 0.0}


def _cfg(v1: bool) -> GANConfig:
    return GANConfig(**CFG, **(OLD_RECIPE if v1 else {}))


def _killed_at_step_2(crc, out, monkeypatch, *, v1: bool):
    real_save = GANTrainer.save_checkpoint

    def save_then_die(self):
        real_save(self)
        if self.cur_step == 2:
            if v1:
                _v1_save_checkpoint(self.ckpt, self.cfg, self.cur_step, self.cur_nimg, self.G, self.G_ema, self.D,
                                    self.opt_G, self.opt_D, self.gen)
            raise KeyboardInterrupt

    monkeypatch.setattr(GANTrainer, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_gan(crc, out, _cfg(v1), progress=False, log=lambda m: None)
    monkeypatch.setattr(GANTrainer, "save_checkpoint", real_save)


@pytest.fixture(scope="module")
def reference(crc, tmp_path_factory):
    """The uninterrupted run's generator and metrics, per recipe (v1: the old one; v2: ADA + style mixing)."""
    out = {}
    for v1 in (False, True):
        d = tmp_path_factory.mktemp("gan") / "full"
        res = train_gan(crc, d, _cfg(v1), progress=False, log=lambda m: None)
        assert res["step"] == 4
        out[v1] = (load_tensors(d / "generator.safetensors"), (d / "metrics.jsonl").read_text())
    return out


@pytest.mark.parametrize("v1", [False, True], ids=["v2", "v1"])
def test_killed_run_resumes_bit_exactly(crc, reference, tmp_path, monkeypatch, v1):
    out = tmp_path / "run"
    _killed_at_step_2(crc, out, monkeypatch, v1=v1)
    meta, keys = _meta(out / "checkpoint.safetensors"), load_tensors(out / "checkpoint.safetensors").keys()
    if v1:
        assert "version" not in meta and "opt_G" in meta and "opt_G.0.exp_avg" in keys
    else:
        assert meta["version"] == CHECKPOINT_VERSION and "exp_avg_opt_G.0" in keys
        assert not any(k.startswith("opt_G.") for k in keys)
    logs = []
    res = train_gan(crc, out, _cfg(v1), progress=False, log=logs.append)
    assert res["step"] == 4 and any("resuming from" in m and "at step 2" in m for m in logs)
    got = load_tensors(out / "generator.safetensors")
    ref, ref_metrics = reference[v1]
    assert got.keys() == ref.keys()
    for k in ref:
        assert torch.equal(got[k], ref[k]), k
    # the losses, ADA's p and the quality numbers are logged as by the uninterrupted run
    assert (out / "metrics.jsonl").read_text() == ref_metrics
    # the resumed run writes the current format
    assert _meta(out / "checkpoint.safetensors")["version"] == CHECKPOINT_VERSION


def test_a_checkpoint_without_optimizer_state_is_refused(crc, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _killed_at_step_2(crc, out, monkeypatch, v1=False)
    path = out / "checkpoint.safetensors"
    t = {k: v for k, v in load_tensors(path).items() if "opt_D" not in k}
    save_tensors(path, t, metadata={"mtt_fast": json.dumps(_meta(path))})
    trainer = GANTrainer.__new__(GANTrainer)  # only the objects a checkpoint restores
    cfg = _cfg(False)
    trainer.bundle, trainer.cfg, trainer.device, trainer.ckpt = crc, cfg, torch.device("cpu"), path
    trainer._build()
    with pytest.raises(UserError, match=r"cannot be resumed \(.*no state of optimizer opt_D"):
        trainer.load_checkpoint()
    with pytest.raises(UserError, match="cannot be resumed"):
        load_checkpoint(path, modules={"G": trainer.D}, optimizers={}, gen=torch.Generator())
