"""Sampling: replay, Siamese use, modes S and M, no global RNG, CPU/CUDA parity, impl."""

from __future__ import annotations

import pytest
import torch

from mtt_fast.augment import (
    OP_GROUPS,
    TENSOR_FIELDS,
    AugParams,
    DSAConfig,
    FusedDSAUnavailable,
    apply,
    apply_color,
    apply_crop,
    apply_cutout,
    apply_flip,
    apply_noise,
    apply_rotate,
    apply_scale,
    augment,
    sample_params,
)
from mtt_fast.errors import UserError

ALL = "color_crop_cutout_flip_scale_rotate_noise"
SHAPE = (6, 3, 10, 8)


def images(shape=SHAPE, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(2000 + seed)
    return torch.randn(shape, generator=g, dtype=dtype) + 0.1


def gen(seed):
    return torch.Generator().manual_seed(seed)


def single(x, op, p):
    """The per-op public function for one group, called directly."""
    return {
        "color": lambda: apply_color(x, p.brightness, p.saturation, p.contrast),
        "crop": lambda: apply_crop(x, p.crop_shift),
        "cutout": lambda: apply_cutout(x, p.cutout_center, p.cutout_size),
        "flip": lambda: apply_flip(x, p.flip),
        "scale": lambda: apply_scale(x, p.theta_scale),
        "rotate": lambda: apply_rotate(x, p.theta_rot),
        "noise": lambda: apply_noise(x, p.noise),
    }[op]()


# ---------------------------------------------------------------- replay


@pytest.mark.parametrize("mode", ["S", "M"])
def test_same_seed_same_params_and_same_params_same_output(mode):
    cfg = DSAConfig(strategy=ALL, mode=mode)
    x = images()
    for seed in range(20):
        p1 = sample_params(cfg, SHAPE, gen(seed))
        p2 = sample_params(cfg, SHAPE, gen(seed))
        assert p1.equal(p2)
        y1, y2 = apply(x, p1), apply(x, p1)
        assert torch.equal(y1, y2)
        assert torch.equal(apply(x, p2), y1)
        y3, p3 = augment(x, cfg, gen(seed))
        assert p3.equal(p1) and torch.equal(y3, y1)


def test_different_seeds_differ_and_generator_advances():
    cfg = DSAConfig(strategy=ALL, mode="M")
    g = gen(0)
    p1 = sample_params(cfg, SHAPE, g)
    p2 = sample_params(cfg, SHAPE, g)
    assert not p1.equal(p2)
    assert not p1.equal(sample_params(cfg, SHAPE, gen(1)))


def test_no_global_rng_is_touched():
    cfg = DSAConfig(strategy=ALL, mode="M")
    torch.manual_seed(123)
    state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    x = images()
    _, p = augment(x, cfg, gen(0))
    apply(x, p)
    sample_params(DSAConfig(strategy=ALL, mode="S"), SHAPE, gen(1))
    assert torch.equal(torch.get_rng_state(), state)
    if cuda_state is not None:
        after = torch.cuda.get_rng_state_all()
        assert all(torch.equal(a, b) for a, b in zip(after, cuda_state))


def test_generator_is_required():
    with pytest.raises(TypeError):
        sample_params(DSAConfig(), SHAPE, None)  # type: ignore[arg-type]


# ---------------------------------------------------------------- Siamese


@pytest.mark.parametrize("mode", ["S", "M"])
def test_siamese_same_params_on_two_batches(mode):
    cfg = DSAConfig(strategy=ALL, mode=mode)
    x1, x2 = images(seed=1), images(seed=2)
    for seed in range(10):
        p = sample_params(cfg, SHAPE, gen(seed))
        y1, y2 = apply(x1, p), apply(x2, p)
        # each equals applying separately, in either order: no hidden state
        assert torch.equal(apply(x2, p), y2) and torch.equal(apply(x1, p), y1)
        # identical content is transformed identically
        assert torch.equal(apply(x1.clone(), p), y1)


@pytest.mark.parametrize("op", ["crop", "cutout", "flip", "scale", "rotate"])
def test_siamese_geometric_ops_transform_both_batches_the_same_way(op):
    # Geometric ops are linear in x for fixed params: T(a x1 + b x2) = a T(x1) + b T(x2)
    # only holds if both batches get the very same geometric transform.
    cfg = DSAConfig(strategy=op, mode="M")
    x1, x2 = images(seed=3, dtype=torch.float64), images(seed=4, dtype=torch.float64)
    p = sample_params(cfg, SHAPE, gen(5), dtype=torch.float64)
    lhs = apply(2.0 * x1 - 3.0 * x2, p)
    rhs = 2.0 * apply(x1, p) - 3.0 * apply(x2, p)
    assert torch.allclose(lhs, rhs, atol=1e-12)


# ---------------------------------------------------------------- modes


def test_mode_s_applies_exactly_one_group_and_covers_all():
    cfg = DSAConfig(strategy=ALL, mode="S")
    x = images()
    seen = set()
    for seed in range(200):
        p = sample_params(cfg, SHAPE, gen(seed))
        assert len(p.ops) == 1
        (op,) = p.ops
        seen.add(op)
        present = {TENSOR_FIELDS[name] for name in p.tensors()}
        assert present == {op}
        assert torch.equal(apply(x, p), single(x, op, p))
    assert seen == set(OP_GROUPS)


def test_mode_s_choice_is_the_first_draw():
    cfg = DSAConfig(strategy="color_crop_cutout_flip_scale_rotate", mode="S")
    ops = cfg.ops
    for seed in range(30):
        pick = int(torch.randint(0, len(ops), (1,), generator=gen(seed)).item())
        assert sample_params(cfg, SHAPE, gen(seed)).ops == (ops[pick],)


@pytest.mark.parametrize("strategy", [ALL, "rotate_crop_color", "noise_flip", "scale_cutout"])
def test_mode_m_applies_all_groups_in_strategy_order(strategy):
    cfg = DSAConfig(strategy=strategy, mode="M")
    x = images()
    p = sample_params(cfg, SHAPE, gen(7))
    assert p.ops == cfg.ops
    assert {TENSOR_FIELDS[name] for name in p.tensors()} == set(cfg.ops)
    expected = x
    for op in cfg.ops:
        expected = single(expected, op, p)
    assert torch.equal(apply(x, p), expected)
    # order matters: the reverse composition is a different function
    reverse = x
    for op in reversed(cfg.ops):
        reverse = single(reverse, op, p)
    assert not torch.equal(reverse, expected)


def test_mode_m_draws_groups_in_strategy_order():
    # The crop group of "crop_flip" consumes the generator before flip does.
    cfg = DSAConfig(strategy="crop_flip", mode="M")
    p = sample_params(cfg, (50, 1, 16, 16), gen(3))
    g = gen(3)
    dy = torch.randint(-2, 3, (50,), generator=g)
    dx = torch.randint(-2, 3, (50,), generator=g)
    flip = torch.rand(50, generator=g) < 0.5
    assert torch.equal(p.crop_shift, torch.stack([dy, dx], 1))
    assert torch.equal(p.flip, flip)


def test_strategy_none_is_identity():
    x = images()
    for strategy in ["none", ""]:
        y, p = augment(x, DSAConfig(strategy=strategy), gen(0))
        assert p.ops == () and p.tensors() == {}
        assert torch.equal(y, x)


# ---------------------------------------------------------------- devices, dtypes


def test_dtype_and_to():
    cfg = DSAConfig(strategy=ALL, mode="M")
    p32 = sample_params(cfg, SHAPE, gen(0))
    p64 = sample_params(cfg, SHAPE, gen(0), dtype=torch.float64)
    assert p64.theta_scale.dtype == torch.float64 and p64.crop_shift.dtype == torch.long
    assert p64.flip.dtype == torch.bool
    # float64 params are the float32 draws, cast
    assert p64.to(dtype=torch.float32).equal(p32)
    assert p32.to("cpu").equal(p32) and p32.device == torch.device("cpu")
    # params of another dtype are cast to x's dtype when applied
    x = images()
    assert torch.equal(apply(x, p64.to(dtype=torch.float32)), apply(x, p32))
    assert apply(x, p64).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_generator_same_params_on_cpu_and_cuda():
    for mode in ["S", "M"]:
        cfg = DSAConfig(strategy=ALL, mode=mode)
        for seed in range(10):
            p_cpu = sample_params(cfg, SHAPE, gen(seed), device="cpu")
            p_cuda = sample_params(cfg, SHAPE, gen(seed), device="cuda")
            assert p_cuda.device.type == "cuda"
            assert p_cuda.equal(p_cpu)
            x = images()
            y_cuda = apply(x.cuda(), p_cuda)
            assert y_cuda.device.type == "cuda"
            assert torch.allclose(y_cuda.cpu(), apply(x, p_cpu), atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_generator_draws_on_cuda():
    cfg = DSAConfig(strategy=ALL, mode="M")
    g1 = torch.Generator(device="cuda").manual_seed(0)
    g2 = torch.Generator(device="cuda").manual_seed(0)
    p1 = sample_params(cfg, SHAPE, g1, device="cuda")
    p2 = sample_params(cfg, SHAPE, g2, device="cuda")
    assert p1.equal(p2)
    x = images().cuda()
    assert torch.equal(apply(x, p1), apply(x, p2))


# ---------------------------------------------------------------- impl and errors


def test_impl_auto_is_reference_and_fused_refused_without_the_op(monkeypatch):
    """Where the fused op cannot run (here: faked away), auto is the reference and fused
    is a one-line user error. With the op, see tests/augment/test_dsa_fused.py."""
    import mtt_fast.ops.dsa as dsa_op

    monkeypatch.setattr(dsa_op, "COMPILED_DEVICES", frozenset())
    cfg = DSAConfig(strategy=ALL, mode="M")
    x = images()
    p = sample_params(cfg, SHAPE, gen(0))
    assert torch.equal(apply(x, p, impl="auto"), apply(x, p, impl="reference"))
    with pytest.raises(FusedDSAUnavailable) as info:
        apply(x, p, impl="fused")
    assert isinstance(info.value, UserError) and isinstance(info.value, NotImplementedError)
    assert "fused" in str(info.value)
    with pytest.raises(UserError):
        apply(x, p, impl="cuda")
    with pytest.raises(FusedDSAUnavailable):
        augment(x, cfg, gen(0), impl="fused")


def test_shape_mismatch_is_an_error():
    p = sample_params(DSAConfig(strategy=ALL, mode="M"), SHAPE, gen(0))
    with pytest.raises(ValueError):
        apply(images((5, 3, 10, 8)), p)
    with pytest.raises(ValueError):
        apply(images((6, 3, 10, 8))[0], p)
    with pytest.raises(ValueError):
        sample_params(DSAConfig(), (6, 3, 10), gen(0))


def test_augparams_is_plain_tensors():
    p = sample_params(DSAConfig(strategy=ALL, mode="M"), SHAPE, gen(0))
    assert isinstance(p, AugParams)
    assert set(p.tensors()) == set(TENSOR_FIELDS)
    assert all(isinstance(v, torch.Tensor) for v in p.tensors().values())
    assert dict(p) == p.tensors()
    assert p.shape == SHAPE
