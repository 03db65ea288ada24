"""Packing :class:`AugParams` for the fused DSA op, and what the fused op computes.

The fused op (:mod:`mtt_fast.ops.dsa`, csrc/dsa) evaluates a whole DSA call in one pass:
for each output pixel, ONE sample of the input through a composed per-sample matrix, then
color, cutout and noise in registers. :func:`pack` turns sampled parameters into its
``[B, NUM_PARAMS]`` parameter tensor (layout: csrc/dsa/dsa.h, named in
:mod:`mtt_fast.ops.dsa_layout`) and ``flags``.

Geometry. Every geometric op is a map from output pixel coordinates to input pixel
coordinates: flip ``j -> W - 1 - j``; crop ``(i, j) -> (i + dy, j + dx)``; scale and
rotate ``U theta N``, with ``N`` the pixel-to-normalized map of ``align_corners=True`` and
``U`` its inverse (on a size-1 axis every pixel maps to 0, as in ``grid_sample``). The
reference applies the ops in strategy order, ``y = op_n(... op_1(x))``, so
``y(p) = x(P_1 P_2 ... P_n p)``: the composed matrix is ``A = P_1 ... P_n`` (as
stylegan2-ada composes its geometric augmentations). With flips and crops only, ``A p``
is an exact integer pixel and the op gathers it (zero outside the frame); with scale or
rotate it samples bilinearly with zero padding, as ``grid_sample`` does.

Mode "S" (one op group per call, the MTT default). Each group alone is reproduced exactly
(to float rounding): color, flip, crop (integer translation, zero fill), scale, rotate
(bilinear, align_corners=True), cutout and noise.

Mode "M" (all groups, in strategy order). The fused op is NOT the reference chain; it is:

1. Geometry is sampled ONCE through ``A``; the reference resamples at every scale and
   rotate op. So (a) with two bilinear ops the values differ by interpolation error (the
   fused result is the sharper one: one interpolation instead of two), and (b) the
   reference clips the image at every intermediate frame, the fused op only at the input's
   frame (zero padding): content that an op pushes out of the frame and a later op would
   bring back (a crop followed by a zoom-out, a zoom-in followed by a rotation) is zero in
   the reference and present in the fused output, and frame edges are blurred once, not
   twice. Compositions of flips and one integer crop are reproduced exactly.
2. Color is evaluated on the sampled image with its statistics placed where the strategy
   puts color. When color precedes every geometric op (the MTT default,
   ``color_crop_cutout_flip_scale_rotate``), the contrast mean is that of the INPUT image
   and the constant term ``(1 - c) mean + b`` is multiplied by the coverage of the
   sampling (the resampled all-ones image), which is exactly ``G(color(x))`` for the
   linear resampling ``G``: zero-filled regions stay zero. When color follows every
   geometric op, the mean is that of the sampled image and the constant is added
   everywhere, exactly as the reference. When color sits BETWEEN geometric ops it is
   treated as following all of them (statistics of the fully sampled image, constant
   everywhere), which differs from the reference.
3. Cutout's box lives in the frame where the strategy applies cutout: the fused op maps
   each output pixel through the geometric ops that FOLLOW cutout (matrix ``Q``), rounds
   to the nearest pixel and zeroes it if inside the box. With only flips and crops after
   cutout this is exact; with scale or rotate after it the box edge is hard where the
   reference's is bilinearly blurred (a one-pixel band). Cutout is always applied AFTER
   color: a strategy naming cutout before color differs (the reference colors the zeroed
   box, so it holds the brightness offset and counts toward the contrast mean).
4. Noise is always added last, unmasked, at the output pixel; a strategy naming noise
   before other ops differs (the reference would resample, color or mask the noise).

With the default strategy (noise is opt-in) only point 1 applies: the fused result equals
the reference chain up to interpolation error in the interior and differs near frame
edges and the (rotated/scaled) cutout box edge, as tests/augment/test_dsa_fused.py checks.
"""

from __future__ import annotations

import functools
import weakref

import torch
from torch import Tensor

from mtt_fast.augment.sampling import AugParams
from mtt_fast.ops import dsa as dsa_op
from mtt_fast.ops import dsa_layout as layout
from mtt_fast.ops import reference, verify

__all__ = ["GEOMETRIC_OPS", "OP_CODES", "apply_fused", "pack", "pack_reference"]

#: The op groups that move pixels (composed into the sampling matrix).
GEOMETRIC_OPS = ("flip", "crop", "scale", "rotate")

#: The code of each op group in ``torch.ops.mtt_fast.dsa_pack``'s ``ops`` (csrc/dsa/dsa_pack.cpp).
OP_CODES = {"color": 0, "crop": 1, "cutout": 2, "flip": 3, "scale": 4, "rotate": 5, "noise": 6}


@functools.lru_cache(maxsize=64)
def _constants(h: int, w: int, device: torch.device) -> dict[str, Tensor]:
    """Per-size constant matrices (float64, ``[3, 3]``) used by :func:`pack`."""

    def mat(rows: list[list[float]]) -> Tensor:
        return torch.tensor(rows, dtype=torch.float64, device=device)

    # pixel -> normalized (align_corners=True): u = 2 j / (W - 1) - 1; 0 on a size-1 axis
    nw, ow = (2.0 / (w - 1), -1.0) if w > 1 else (0.0, 0.0)
    nh, oh = (2.0 / (h - 1), -1.0) if h > 1 else (0.0, 0.0)
    uw, uh = (w - 1) / 2.0, (h - 1) / 2.0
    return {
        "eye": torch.eye(3, dtype=torch.float64, device=device),
        "norm": mat([[nw, 0, ow], [0, nh, oh], [0, 0, 1]]),
        "unnorm": mat([[uw, 0, uw], [0, uh, uh], [0, 0, 1]]),
        "flip_delta": mat([[-2, 0, w - 1], [0, 0, 0], [0, 0, 0]]),  # flip matrix - I
        "row3": mat([[0, 0, 1]]),
        "e02": mat([[0, 0, 1], [0, 0, 0], [0, 0, 0]]),
        "e12": mat([[0, 0, 0], [0, 0, 1], [0, 0, 0]]),
    }


def _op_matrix(op: str, p: AugParams, k: dict[str, Tensor]) -> Tensor:
    """``[B, 3, 3]`` float64 map from output to input pixel coordinates of one op."""
    b = p.shape[0]
    dev = k["eye"].device
    if op == "flip":
        f = p.flip.to(dev).reshape(b, 1, 1).to(torch.float64)  # bool -> 0/1
        return k["eye"] + (f != 0).to(torch.float64) * k["flip_delta"]
    if op == "crop":
        shift = p.crop_shift.to(dev).to(torch.float64).reshape(b, 2, 1, 1)
        return k["eye"] + shift[:, 1] * k["e02"] + shift[:, 0] * k["e12"]
    theta = p.theta_scale if op == "scale" else p.theta_rot
    t = torch.cat([theta.to(dev, torch.float64).reshape(b, 2, 3), k["row3"].expand(b, 1, 3)], 1)
    return k["unnorm"] @ t @ k["norm"]


#: Packed inputs per AugParams object (weakly keyed: an entry dies with its parameters), so
#: a replayed augmentation (the adjoint engine's reverse pass, Siamese use) packs once.
_PACKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def clear_pack_cache() -> None:
    """Forget every cached :func:`pack` result (benchmarks use it to time packing too)."""
    _PACKED.clear()


def pack(
    p: AugParams, dtype: torch.dtype, device: torch.device | str
) -> tuple[Tensor, Tensor | None, int]:
    """The fused op's inputs for sampled parameters, cached per ``(p, dtype, device)``.

    Packing runs on the host (``torch.ops.mtt_fast.dsa_pack``, one call): keep ``p`` on the
    CPU (sample it there) so only the ``[B, NUM_PARAMS]`` result is copied to the device.
    See :func:`pack_reference` (its pure-PyTorch reference) for the arguments and the result.
    """
    key = (dtype, device)
    per_params = _PACKED.get(p)
    if per_params is None:
        per_params = _PACKED[p] = {}
    out = per_params.get(key)
    if out is None:
        out = per_params[key] = _pack_compiled(p, dtype, torch.device(device))
    return out


@functools.lru_cache(maxsize=256)
def _flags_of(ops: tuple[str, ...]) -> int:
    """The fused op's ``flags`` for a tuple of op groups: geometry identity (no geometric
    op), integer (flips and crops only) or bilinear (scale or rotate); color "before" when it
    precedes every geometric op, else "after"; the cutout and noise bits. Both packers use it."""
    geo = [op for op in ops if op in GEOMETRIC_OPS]
    if not geo:
        geom = layout.GEOM_IDENTITY
    elif "scale" in geo or "rotate" in geo:
        geom = layout.GEOM_BILINEAR
    else:
        geom = layout.GEOM_INTEGER
    color = layout.COLOR_NONE
    if "color" in ops:
        pos = ops.index("color")
        before = bool(geo) and all(ops.index(op) > pos for op in geo)
        color = layout.COLOR_BEFORE if before else layout.COLOR_AFTER
    return layout.make_flags(geom, color, "cutout" in ops, "noise" in ops)


@functools.lru_cache(maxsize=256)
def _op_codes(ops: tuple[str, ...]) -> tuple[int, ...]:
    return tuple(OP_CODES[op] for op in ops)


def _pack_compiled(
    p: AugParams, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor | None, int]:
    """:func:`pack_reference`'s result, computed by ``torch.ops.mtt_fast.dsa_pack`` (one
    host call; the parameters must be CPU tensors: :func:`pack` moves them if not)."""
    where = p.device
    if where is not None and where.type != "cpu":
        p = p.to("cpu")
    packed = torch.ops.mtt_fast.dsa_pack.default(
        _op_codes(p.ops), p.shape, p.theta_scale, p.theta_rot, p.flip,
        p.brightness, p.saturation, p.contrast, p.crop_shift, p.cutout_center, p.cutout_size,
        dtype,
    )
    if device.type == "cuda":
        packed = packed.pin_memory().to(device, non_blocking=True)
    elif device.type != "cpu":
        packed = packed.to(device)
    noise = None
    if "noise" in p.ops:
        noise = p.noise.to(device=device, dtype=dtype)
    return packed, noise, _flags_of(p.ops)


def pack_reference(
    p: AugParams, dtype: torch.dtype, device: torch.device | str
) -> tuple[Tensor, Tensor | None, int]:
    """The fused op's inputs for sampled parameters, in float64 torch ops: the reference
    ``torch.ops.mtt_fast.dsa_pack`` (which :func:`pack` uses) is tested against.

    Args:
        p: parameters from :func:`mtt_fast.augment.sample_params` (any device).
        dtype: the images' dtype (float32 or float64); the packed tensor takes it.
        device: the images' device.

    Returns:
        ``(params, noise, flags)``: ``params`` ``[B, NUM_PARAMS]`` (layout in
        :mod:`mtt_fast.ops.dsa`), ``noise`` ``[B, C, H, W]`` or None, and the int flags.
    """
    device = torch.device(device)
    b, _, h, w = p.shape
    ops = p.ops
    work = p.device if p.device is not None else device
    k = _constants(h, w, work)
    # float64, every slot 0 unless an op group fills it (the layout: mtt_fast.ops.dsa_layout)
    rows = torch.zeros(b, layout.NUM_PARAMS, dtype=torch.float64, device=work)

    geo = [op for op in ops if op in GEOMETRIC_OPS]
    mats = {op: _op_matrix(op, p, k) for op in geo}
    a = None
    for op in geo:
        a = mats[op] if a is None else a @ mats[op]
    rows[:, layout.IDX_A:layout.IDX_A + 6] = k["eye"][:2].reshape(1, 6) if a is None else a[:, :2, :].reshape(b, 6)

    if "color" in ops:
        for idx, t in ((layout.IDX_BRIGHT, p.brightness), (layout.IDX_SAT, p.saturation),
                       (layout.IDX_CONTRAST, p.contrast)):
            rows[:, idx] = t.to(work, torch.float64).reshape(b)

    if "cutout" in ops:
        pos = ops.index("cutout")
        q = None
        for op in geo:
            if ops.index(op) > pos:
                q = mats[op] if q is None else q @ mats[op]
        rows[:, layout.IDX_Q:layout.IDX_Q + 6] = (k["eye"] if q is None else q)[..., :2, :].reshape(-1, 6)
        center = p.cutout_center.to(work).reshape(b, 2)
        size = torch.as_tensor(p.cutout_size, device=work).reshape(1, 2)
        start = (center - torch.div(size, 2, rounding_mode="floor")).to(torch.float64)
        end = start + size.to(torch.float64)
        rows[:, layout.IDX_BOX_ROW0], rows[:, layout.IDX_BOX_ROW1] = start[:, 0], end[:, 0]
        rows[:, layout.IDX_BOX_COL0], rows[:, layout.IDX_BOX_COL1] = start[:, 1], end[:, 1]

    noise = None
    if "noise" in ops:
        rows[:, layout.IDX_NOISE] = 1.0
        noise = p.noise.to(device=device, dtype=dtype)

    packed = rows.to(dtype)
    if packed.device != device:
        if device.type == "cuda" and packed.device.type == "cpu":
            packed = packed.pin_memory().to(device, non_blocking=True)
        else:
            packed = packed.to(device)
    return packed, noise, _flags_of(ops)


def apply_fused(x: Tensor, p: AugParams) -> Tensor:
    """Apply ``p`` to ``x`` with the fused op (see the module docstring for mode "M").

    Args:
        x: images ``[B, C, H, W]``, float32 or float64, on a device the op has a kernel for.
        p: parameters drawn for ``x.shape``.

    Returns:
        The augmented images, shaped like ``x``, differentiable in ``x`` to any order.
    """
    params, noise, flags = pack(p, x.dtype, x.device)
    return dsa_op.dsa_fused(x, params, noise, flags)


#: DSA strategies checked: every geometry (bilinear, integer, identity), color after and
#: before the geometry, cutout and noise.
_DSA_STRATEGIES = ("color_crop_cutout_flip_scale_rotate_noise", "color_flip_crop_cutout", "color_noise")


def dsa_parity_check(device, dtype, gen) -> list[tuple[str, Tensor, Tensor]]:
    """The DSA family's parity check for :mod:`mtt_fast.ops.verify`: ``dsa_pack`` against
    :func:`pack_reference`, and the fused forward and its input gradient against the spec
    (``ops/reference.py``), for strategies covering every geometry, colour, cutout and noise."""
    from mtt_fast.augment.config import DSAConfig
    from mtt_fast.augment.sampling import sample_params

    shape = (3, 3, 9, 8)
    triples = []
    for k, strategy in enumerate(_DSA_STRATEGIES):
        p = sample_params(DSAConfig(strategy=strategy, mode="M"), shape, gen, dtype=torch.float64)
        got, got_noise, got_flags = pack(p, dtype, "cpu")
        want, noise, flags = pack_reference(p, dtype, "cpu")
        if got_flags != flags:
            raise RuntimeError(f"dsa_pack: flags {got_flags} != reference flags {flags} for {strategy!r}")
        triples.append((f"{strategy}: dsa_pack", got, want))
        if noise is not None:
            triples.append((f"{strategy}: dsa_pack noise", got_noise, noise))
        params = want.to(device)
        noise = None if noise is None else noise.to(device)
        x, gy = verify._rand(gen, *shape) + 0.1, verify._rand(gen, *shape)
        out = {}
        for which, fn in (("fused", torch.ops.mtt_fast.dsa_forward.default), ("ref", reference.dsa)):
            (xl,) = verify._leaves((x,), device, dtype)
            y = fn(xl, params, noise, flags)
            (gx,) = torch.autograd.grad(y, xl, gy.to(device=device, dtype=dtype))
            out[which] = [y.detach(), gx]
        triples += [(f"{strategy}: y", out["fused"][0], out["ref"][0]),
                    (f"{strategy}: d/dx", out["fused"][1], out["ref"][1])]
    return triples


verify.register_check("dsa", dsa_parity_check)
