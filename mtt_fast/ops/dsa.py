"""The fused DSA op (``torch.ops.mtt_fast.dsa_forward`` / ``dsa_backward``), registered.

``dsa_forward(x, params, noise, flags)`` applies one whole DSA call to images ``x`` of
shape ``[B, C, H, W]`` in one pass per direction (csrc/dsa): for every output pixel, one
sample of ``x`` through a per-sample 2x3 matrix (bilinear with zero padding, or an exact
integer map, or the identity), then color, cutout and noise in registers. The op is affine
in ``x``; ``dsa_backward(grad_y, params, flags)`` is the transpose of its linear part.

This module gives the ops their fake kernels (``torch.compile``). Their autograd is
registered in C++ (csrc/dsa/dsa_autograd.cpp, for speed): the backward of ``dsa_forward``
is ``dsa_backward``, and that of ``dsa_backward`` is ``dsa_forward`` of the linear part
(brightness and noise dropped), so gradients of any order work. It does not know about
:class:`mtt_fast.augment.AugParams`; :mod:`mtt_fast.augment.fused` packs those into the
layout below (with ``torch.ops.mtt_fast.dsa_pack``, on the host).

Packed per-sample parameters (``params[b, :]``, x's dtype; mirror of csrc/dsa/dsa.h):

==========  =======  ===================================================================
index       name     meaning
==========  =======  ===================================================================
0..5        A        output pixel (col j, row i) -> input pixel:
                     ``col = A0 j + A1 i + A2``, ``row = A3 j + A4 i + A5``
6           b        brightness offset
7           s        saturation factor (about the per-pixel channel mean)
8           c        contrast factor (about the per-sample mean)
9..14       Q        output pixel -> the frame the cutout box lives in (same form as A)
15..18      box      cutout box: row0, row1 (exclusive), col0, col1 (exclusive)
19          nu       noise multiplier (y += nu * noise)
==========  =======  ===================================================================

``flags`` (an int, the same for the whole batch): bits 0-1 the geometry (0 identity, 1
integer map: flips and integer crops, 2 bilinear), bits 2-3 the color placement (0 none,
1 after the sampling: the contrast mean is that of the sampled image; 2 before it: the
contrast mean is that of ``x`` and the constant term is weighted by the coverage), bit 4
cutout, bit 5 noise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtt_fast.ops import _load

__all__ = [
    "COMPILED_DEVICES",
    "FLAG_CUTOUT",
    "FLAG_NOISE",
    "NUM_PARAMS",
    "dsa_fused",
    "fused_available",
    "unavailable_reason",
]

# ---- layout (mirror of csrc/dsa/dsa.h) --------------------------------------------------
IDX_A = 0
IDX_BRIGHT = 6
IDX_SAT = 7
IDX_CONTRAST = 8
IDX_Q = 9
IDX_BOX = 15
IDX_NOISE = 19
NUM_PARAMS = 20

GEOM_IDENTITY = 0
GEOM_INTEGER = 1
GEOM_BILINEAR = 2
COLOR_SHIFT = 2
COLOR_NONE = 0
COLOR_AFTER = 1
COLOR_BEFORE = 2
FLAG_CUTOUT = 16
FLAG_NOISE = 32

_DTYPES = (torch.float32, torch.float64)


def make_flags(geom: int, color: int, cutout: bool, noise: bool) -> int:
    """The ``flags`` int of the op from its four switches."""
    return (
        int(geom)
        | (int(color) << COLOR_SHIFT)
        | (FLAG_CUTOUT if cutout else 0)
        | (FLAG_NOISE if noise else 0)
    )


# --------------------------------------------------------------------------------------
# fake kernels
# --------------------------------------------------------------------------------------
def _fake_check(name: str, x: Tensor, params: Tensor) -> None:
    torch._check(x.dim() == 4, lambda: f"{name}: images must be [B, C, H, W]")
    torch._check(x.dtype in _DTYPES, lambda: f"{name}: only float32 and float64 are supported")
    torch._check(
        params.dim() == 2 and params.shape[0] == x.shape[0] and params.shape[1] == NUM_PARAMS,
        lambda: f"{name}: params must be [B, {NUM_PARAMS}]",
    )
    torch._check(params.dtype == x.dtype, lambda: f"{name}: params dtype must match")


def _dsa_forward_fake(x: Tensor, params: Tensor, noise: Tensor | None, flags: int) -> Tensor:
    _fake_check("dsa_forward", x, params)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _dsa_backward_fake(grad_y: Tensor, params: Tensor, flags: int) -> Tensor:
    _fake_check("dsa_backward", grad_y, params)
    return torch.empty_like(grad_y, memory_format=torch.contiguous_format)


def _dsa_pack_fake(ops, shape, *tensors_and_dtype) -> Tensor:
    torch._check(len(shape) == 4, lambda: "dsa_pack: shape must be [B, C, H, W]")
    dtype = tensors_and_dtype[-1]
    torch._check(dtype in _DTYPES, lambda: "dsa_pack: dtype must be float32 or float64")
    return torch.empty((shape[0], NUM_PARAMS), dtype=dtype, device="cpu")


# autograd: in C++ (csrc/dsa/dsa_autograd.cpp), because the Python wrapper of
# torch.library.register_autograd cost more than the kernels on small batches.
# --------------------------------------------------------------------------------------
def _register() -> bool:
    """Registers the fake kernels of the DSA ops; False when ``_C`` is not loaded."""
    if not _load.loaded():
        return False
    torch.library.register_fake("mtt_fast::dsa_forward")(_dsa_forward_fake)
    torch.library.register_fake("mtt_fast::dsa_backward")(_dsa_backward_fake)
    torch.library.register_fake("mtt_fast::dsa_pack")(_dsa_pack_fake)
    return True


REGISTERED = _register()

#: Device types with a compiled kernel, fixed at import.
COMPILED_DEVICES = _load.compiled_devices("dsa_forward", REGISTERED)


def fused_available(device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether the fused op can run on images of this device and dtype."""
    return torch.device(device).type in COMPILED_DEVICES and dtype in _DTYPES


def unavailable_reason(device: torch.device | str, dtype: torch.dtype) -> str:
    """One line saying why :func:`fused_available` is False for this device and dtype."""
    return _load.unavailable_reason("DSA", device, dtype, devices=COMPILED_DEVICES, dtypes=_DTYPES,
                                    registered=REGISTERED)


def dsa_fused(x: Tensor, params: Tensor, noise: Tensor | None, flags: int) -> Tensor:
    """Run ``torch.ops.mtt_fast.dsa_forward`` (differentiable in ``x`` to any order).

    Args:
        x: images ``[B, C, H, W]``, float32 or float64.
        params: ``[B, NUM_PARAMS]`` packed parameters (see the module docstring).
        noise: ``[B, C, H, W]`` or None; required when ``flags`` has :data:`FLAG_NOISE`.
        flags: the batch-wide switches (see the module docstring and :func:`make_flags`).

    Returns:
        The augmented images, shaped like ``x``.
    """
    params = params.to(device=x.device, dtype=x.dtype).contiguous()
    if noise is not None:
        noise = noise.to(device=x.device, dtype=x.dtype).contiguous()
    return torch.ops.mtt_fast.dsa_forward.default(x.contiguous(), params, noise, int(flags))
