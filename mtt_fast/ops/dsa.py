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

Packed per-sample parameters (``params[b, :]``, x's dtype). The layout is defined once, in
csrc/dsa/dsa.h; :mod:`mtt_fast.ops.dsa_layout` holds its Python names (``IDX_BOX_ROW0`` is
the header's ``kBoxRow0``), which tests/ops/test_dsa_layout.py checks against the header:

================  ===================================================================
index             meaning
================  ===================================================================
IDX_A (6 values)  output pixel (col j, row i) -> input pixel:
                  ``col = A0 j + A1 i + A2``, ``row = A3 j + A4 i + A5``
IDX_BRIGHT        brightness offset b
IDX_SAT           saturation factor s (about the per-pixel channel mean)
IDX_CONTRAST      contrast factor c (about the per-sample mean)
IDX_Q (6 values)  output pixel -> the frame the cutout box lives in (same form as A)
IDX_BOX_ROW0 ..   cutout box: rows [ROW0, ROW1), columns [COL0, COL1) (exclusive ends)
IDX_BOX_COL1
IDX_NOISE         noise multiplier nu (y += nu * noise)
================  ===================================================================

``flags`` (an int, the same for the whole batch; ``dsa_layout.make_flags`` builds it): bits
0-1 the geometry (0 identity, 1 integer map: flips and integer crops, 2 bilinear), bits 2-3
the color placement (0 none, 1 after the sampling: the contrast mean is that of the sampled
image; 2 before it: the contrast mean is that of ``x`` and the constant term is weighted by
the coverage), bit 4 cutout, bit 5 noise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtt_fast.ops import _load
from mtt_fast.ops.dsa_layout import NUM_PARAMS

__all__ = ["COMPILED_DEVICES", "dsa_fused", "fused_available", "unavailable_reason"]

_DTYPES = (torch.float32, torch.float64)


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
        noise: ``[B, C, H, W]`` or None; required when ``flags`` has ``FLAG_NOISE``.
        flags: the batch-wide switches (see the module docstring and
            :func:`mtt_fast.ops.dsa_layout.make_flags`).

    Returns:
        The augmented images, shaped like ``x``.
    """
    params = params.to(device=x.device, dtype=x.dtype).contiguous()
    if noise is not None:
        noise = noise.to(device=x.device, dtype=x.dtype).contiguous()
    return torch.ops.mtt_fast.dsa_forward.default(x.contiguous(), params, noise, int(flags))
