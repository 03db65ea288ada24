"""ADA: the p controller on a scripted discriminator, the per-op augmentation, and an exact resume with ADA on."""

from __future__ import annotations

import pytest
import torch

from mtt_fast.augment import apply, sample_params
from mtt_fast.generative import GANConfig, GANTrainer, train_gan
from mtt_fast.generative.ada import ADA_OPS, ADAController, ada_dsa_config, ada_params
from mtt_fast.generative.recipe import mix_styles
from mtt_fast.io import load_tensors, read_jsonl


# ----------------------------------------------------------- the p controller
def _drive(ctl: ADAController, logits: torch.Tensor, steps: int) -> list[float]:
    ps = []
    for step in range(1, steps + 1):
        ctl.accumulate(logits)       # what the trainer does with every D step's real logits
        ctl.after_step(step)
        ps.append(ctl.p)
    return ps


def test_p_rises_at_the_documented_rate_when_d_is_sure_of_every_real():
    ctl = ADAController(batch_size=32, target=0.6, interval=4, kimg=500)
    assert ctl.step_size == pytest.approx(32 * 4 / 500_000)
    ps = _drive(ctl, torch.full((32,), 3.0), 40)
    # adjusted only every 4 steps, by +step_size each time
    assert ps[:3] == [0.0, 0.0, 0.0]
    for k in range(1, 11):
        assert ps[4 * k - 1] == pytest.approx(k * ctl.step_size, rel=1e-12)
    assert ctl.rt == 1.0


def test_p_falls_when_d_calls_every_real_fake_and_is_clamped_to_0_1():
    ctl = ADAController(batch_size=8, target=0.6, interval=1, kimg=0.02, p=0.5)  # 0.4 per step
    assert _drive(ctl, -torch.ones(8), 3) == pytest.approx([0.1, 0.0, 0.0])
    assert ctl.rt == -1.0
    assert _drive(ctl, torch.ones(8), 4) == pytest.approx([0.4, 0.8, 1.0, 1.0])


def test_r_t_is_the_mean_sign_over_the_interval_and_steers_to_the_target():
    ctl = ADAController(batch_size=4, target=0.6, interval=2, kimg=0.008)  # 1.0 per adjustment
    ctl.p = 0.5
    ctl.accumulate(torch.tensor([1.0, 1.0, 1.0, -1.0]))   # 0.5
    assert not ctl.after_step(1) and ctl.p == 0.5
    ctl.accumulate(torch.tensor([1.0, 1.0, 1.0, 0.0]))    # 0.75: mean over the 8 logits 0.625 > 0.6
    assert ctl.after_step(2) and ctl.rt == pytest.approx(0.625) and ctl.p == 1.0
    ctl.accumulate(torch.tensor([1.0, 1.0, -1.0, -1.0]))
    ctl.accumulate(torch.tensor([1.0, 1.0, 1.0, -1.0]))   # 0.25 < 0.6: falls
    assert ctl.after_step(4) and ctl.p == 0.0
    # the state round-trips (the checkpoint stores it as JSON)
    again = ADAController(batch_size=4, target=0.6, interval=2, kimg=0.008)
    ctl.accumulate(torch.tensor([1.0, -1.0, 1.0, 1.0]))
    again.load_state(ctl.state())
    assert again.state() == ctl.state()


# ----------------------------------------------------------- the augmentation
SHAPE = (6, 1, 12, 12)


def test_p_0_is_the_identity_and_p_1_applies_every_op():
    x = torch.randn(*SHAPE)
    for impl in ("reference", "auto"):
        params0 = ada_params(0.0, SHAPE, torch.Generator().manual_seed(1))
        assert torch.allclose(apply(x, params0, impl=impl), x, atol=1e-5), impl
    # p = 1: exactly DSA's parameters (every op of every image), drawn first from the same stream
    p1 = ada_params(1.0, SHAPE, torch.Generator().manual_seed(1))
    full = sample_params(ada_dsa_config(), SHAPE, torch.Generator().manual_seed(1))
    assert p1.equal(full)
    assert set(p1.ops) == {"flip", "scale", "rotate", "crop", "color", "noise", "cutout"}
    assert not torch.allclose(apply(x, p1), x, atol=1e-2)


def test_each_op_is_applied_per_image_with_probability_p():
    b = 4000
    params = ada_params(0.3, (b, 1, 8, 8), torch.Generator().manual_seed(0))
    eye = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    applied = {
        "scale": ~torch.isclose(params.theta_scale, eye).all(dim=(1, 2)),
        "rotate": ~torch.isclose(params.theta_rot, eye).all(dim=(1, 2)),
        "brightness": params.brightness.flatten() != 0,
        "contrast": params.contrast.flatten() != 1,
        "noise": params.noise.flatten(1).abs().sum(1) > 0,
        "cutout": params.cutout_center[:, 0] >= 0,
    }
    for name, on in applied.items():
        assert abs(float(on.float().mean()) - 0.3) < 0.035, name
    # the mask columns are independent: two ops together about p^2 of the time
    both = (applied["scale"] & applied["noise"]).float().mean()
    assert abs(float(both) - 0.09) < 0.02
    # a translate / flip that is drawn can still be a no-op (shift 0, flip with prob 1/2): at most p
    assert float((params.crop_shift != 0).any(1).float().mean()) <= 0.3 + 0.035
    assert float(params.flip.float().mean()) == pytest.approx(0.15, abs=0.03)
    assert len(ADA_OPS) == 9


def test_the_augmentation_is_differentiable():
    x = torch.randn(*SHAPE, requires_grad=True)
    y = apply(x, ada_params(0.7, SHAPE, torch.Generator().manual_seed(2)))
    (g,) = torch.autograd.grad(y.square().sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


# ----------------------------------------------------------- style mixing
def test_style_mixing_changes_the_styles_after_the_crossover_only():
    n, num_ws, d = 5, 4, 3
    ws, ws2 = torch.zeros(n, num_ws, d), torch.ones(n, num_ws, d)
    cut = torch.tensor([1, 2, 3, 1, 2])
    mix = torch.tensor([True, True, True, False, True])
    out = mix_styles(ws, ws2, cut, mix)
    for i in range(n):
        for k in range(num_ws):
            want = 1.0 if mix[i] and k >= cut[i] else 0.0
            assert torch.all(out[i, k] == want), (i, k)


# ----------------------------------------------------------- the trainer with ADA on
@pytest.fixture(scope="module")
def crc(crc_bundle_one_thread):
    return crc_bundle_one_thread


# p moves by 4 / 20 = 0.2 per step, so the resumed run must carry it and the sign statistic
CFG = {"steps": 6, "batch_size": 4, "z_dim": 8, "w_dim": 16, "channel_base": 64, "channel_max": 8, "r1_interval": 2,
       "checkpoint_every": 3, "quality_every": 2, "sample_every": 6, "quality_samples": 3, "classifier_epochs": 1,
       "log_every": 1, "seed": 5, "augment": "ada", "ada_interval": 2, "ada_kimg": 0.04}


def test_ada_run_logs_p_and_quality_and_resumes_bit_exactly(crc, tmp_path, monkeypatch):
    full = tmp_path / "full"
    res = train_gan(crc, full, GANConfig(**CFG), progress=False, log=lambda m: None)
    recs = read_jsonl(full / "metrics.jsonl")
    ps = [r["augment_p"] for r in recs if "augment_p" in r]
    assert len(ps) == 6 and len(set(ps)) > 1 and all(0 <= p <= 1 for p in ps)   # p moved
    q = [r for r in recs if "kid" in r]
    assert [r["step"] for r in q] == [2, 4, 6]
    assert all(len(r["kid_per_class"]) == crc.num_classes and r["diversity_ratio"] > 0 for r in q)
    best = min(q, key=lambda r: r["kid"])
    assert res["best"] == {"step": best["step"], "kid": best["kid"]}
    assert (full / "generator_best.json").is_file() and (full / "generator_best.w_avg.safetensors").is_file()

    real_save = GANTrainer.save_checkpoint

    def save_then_die(self):
        real_save(self)
        if self.cur_step == 3:
            raise KeyboardInterrupt

    part = tmp_path / "part"
    monkeypatch.setattr(GANTrainer, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_gan(crc, part, GANConfig(**CFG), progress=False, log=lambda m: None)
    monkeypatch.setattr(GANTrainer, "save_checkpoint", real_save)
    res2 = train_gan(crc, part, GANConfig(**CFG), progress=False, log=lambda m: None)
    for name in ("generator.safetensors", "generator_best.safetensors", "generator.w_avg.safetensors"):
        a, b = load_tensors(full / name), load_tensors(part / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert (part / "metrics.jsonl").read_text() == (full / "metrics.jsonl").read_text()
    assert res2["augment_p"] == res["augment_p"] and res2["best"] == res["best"]
