"""Pure-PyTorch references of the compiled ops: the spec of every op family.

Each function here computes exactly what the op of the same name in
``torch.ops.mtt_fast`` computes (up to floating-point summation order), with plain
differentiable torch operations, so autograd gives its derivatives of any order. Tests
compare the compiled kernels against these, and the package falls back on them when the
extension is not built or has no kernel for a device.

This module is THE spec of each op family (traj_loss, dsa, convblock); other pure-PyTorch
code says what it computes relative to it. For DSA in particular:
:mod:`mtt_fast.augment.functional` is not a spec of the op but the DSA augmentation itself
(MTT's per-group ``rand_*`` functions), which ``impl="reference"`` runs group by group; the
fused path packs a whole call into :func:`dsa`'s parameters (equal to the group chain in
mode "S", see :mod:`mtt_fast.augment.fused` for mode "M"). The host-side packing op
``dsa_pack`` is held to :func:`mtt_fast.augment.fused.pack_reference`, which needs the
augmentation's parameter types and so lives beside them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtt_fast.ops.dsa_layout import (
    COLOR_BEFORE,
    COLOR_NONE,
    FLAG_CUTOUT,
    FLAG_NOISE,
    GEOM_IDENTITY,
    GEOM_INTEGER,
    IDX_A,
    IDX_BOX_COL0,
    IDX_BOX_COL1,
    IDX_BOX_ROW0,
    IDX_BOX_ROW1,
    IDX_BRIGHT,
    IDX_CONTRAST,
    IDX_NOISE,
    IDX_Q,
    IDX_SAT,
    color_of,
    geom_of,
)


def traj_loss(student: Tensor, target: Tensor, start: Tensor) -> Tensor:
    """Normalized-L2 trajectory-matching loss of MTT.

    ``L = ||student - target||^2 / ||start - target||^2``

    Args:
        student: ``[P]`` student parameters after N synthetic steps (theta_N).
        target: ``[P]`` expert parameters M epochs later (theta*_{t+M}).
        start: ``[P]`` expert parameters the student started from (theta*_t).

    Returns:
        A 0-dim tensor of the inputs' dtype. ``start == target`` gives inf or nan.
    """
    num = (student - target).pow(2).sum()
    den = (start - target).pow(2).sum()
    return num / den


def traj_loss_backward(
    grad: Tensor, student: Tensor, target: Tensor, start: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of :func:`traj_loss` for the upstream gradient ``grad`` (0-dim).

    With ``u = student - target``, ``v = start - target``, ``N = u.u``, ``D = v.v``:
    ``d/dstudent = 2 g u / D``, ``d/dstart = -2 g N v / D^2``,
    ``d/dtarget = -(d/dstudent + d/dstart)``.

    Returns:
        ``(grad_student, grad_target, grad_start)``, each ``[P]``.
    """
    u = student - target
    v = start - target
    num = u.pow(2).sum()
    den = v.pow(2).sum()
    ga = (2 * grad / den) * u
    gc = (-2 * grad * num / (den * den)) * v
    gb = -(ga + gc)
    return ga, gb, gc


# The name the rest of the package (match/, tests) uses for the reference loss.
trajectory_loss_ref = traj_loss


def dsa(x: Tensor, params: Tensor, noise: Tensor | None, flags: int) -> Tensor:
    """What ``torch.ops.mtt_fast.dsa_forward`` computes, in plain differentiable torch ops.

    The packed layout of ``params`` (defined in csrc/dsa/dsa.h, named in
    :mod:`mtt_fast.ops.dsa_layout`) and the meaning of ``flags`` are documented in
    :mod:`mtt_fast.ops.dsa`; csrc/dsa/dsa.h has the per-pixel formulas.

    Args:
        x: images ``[B, C, H, W]``.
        params: ``[B, NUM_PARAMS]`` packed per-sample parameters.
        noise: ``[B, C, H, W]`` or None (required when ``flags`` has ``FLAG_NOISE``).
        flags: geometry, color placement, cutout and noise bits (``dsa_layout.make_flags``).

    Returns:
        The augmented images, shaped like ``x``.
    """
    b, c, h, w = x.shape
    p = params.to(dtype=x.dtype, device=x.device)
    geom, color = geom_of(flags), color_of(flags)
    rows = torch.arange(h, dtype=x.dtype, device=x.device).view(1, h, 1)
    cols = torch.arange(w, dtype=x.dtype, device=x.device).view(1, 1, w)

    def col(k: int) -> Tensor:
        return p[:, k].view(b, 1, 1)

    def affine(k: int) -> tuple[Tensor, Tensor]:  # (column, row) of every output pixel
        # the 2x3 matrix at k (IDX_A or IDX_Q), row-major: col = m0 j + m1 i + m2, row = m3 j + ...
        return (
            col(k) * cols + col(k + 1) * rows + col(k + 2),
            col(k + 3) * cols + col(k + 4) * rows + col(k + 5),
        )

    flat = x.reshape(b, c, h * w)

    def tap(xi: Tensor, yi: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
        valid = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        idx = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).reshape(b, 1, h * w)
        vals = flat.gather(2, idx.expand(b, c, h * w)).reshape(b, c, h, w)
        wv = torch.where(valid, weight, torch.zeros_like(weight)).unsqueeze(1)
        return vals * wv, wv

    if geom == GEOM_IDENTITY:
        v, kappa = x, torch.ones(b, 1, h, w, dtype=x.dtype, device=x.device)
    elif geom == GEOM_INTEGER:
        cx, cy = affine(IDX_A)
        xi = torch.floor(cx + 0.5).long()
        yi = torch.floor(cy + 0.5).long()
        v, kappa = tap(xi, yi, torch.ones_like(cx))
    else:  # GEOM_BILINEAR
        cx, cy = affine(IDX_A)
        x0, y0 = torch.floor(cx), torch.floor(cy)
        fx, fy = cx - x0, cy - y0
        x0l, y0l = x0.long(), y0.long()
        v = torch.zeros_like(x)
        kappa = torch.zeros(b, 1, h, w, dtype=x.dtype, device=x.device)
        for dy, wy in ((0, 1 - fy), (1, fy)):
            for dx, wx in ((0, 1 - fx), (1, fx)):
                val, wv = tap(x0l + dx, y0l + dy, wy * wx)
                v = v + val
                kappa = kappa + wv
    y = v
    if color != COLOR_NONE:
        bright, sat, con = (p[:, k].view(b, 1, 1, 1) for k in (IDX_BRIGHT, IDX_SAT, IDX_CONTRAST))
        cm = v.mean(dim=1, keepdim=True)
        before = color == COLOR_BEFORE
        mu = (x if before else v).mean(dim=(1, 2, 3), keepdim=True)
        const = (1 - con) * mu + bright
        y = con * sat * v + con * (1 - sat) * cm + (const * kappa if before else const)
    if flags & FLAG_CUTOUT:
        qc, qr = affine(IDX_Q)
        qc, qr = torch.floor(qc + 0.5), torch.floor(qr + 0.5)
        inside = ((qr >= col(IDX_BOX_ROW0)) & (qr < col(IDX_BOX_ROW1))
                  & (qc >= col(IDX_BOX_COL0)) & (qc < col(IDX_BOX_COL1)))
        y = y * (~inside).to(x.dtype).unsqueeze(1)
    if flags & FLAG_NOISE:
        assert noise is not None, "flags ask for noise but none was given"
        y = y + p[:, IDX_NOISE].view(b, 1, 1, 1) * noise.to(dtype=x.dtype, device=x.device)
    return y


def convblock(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """The ConvNet block after its conv: instance norm (affine), ReLU, 2x2 average pool.

    ``avg_pool2d(relu(group_norm(x, C, weight, bias, eps)), 2)``: ``GroupNorm(C, C)`` with
    the biased per-(sample, channel) variance, then the pool of ``nn.AvgPool2d(2, 2)``
    (floor: an odd last row/column is dropped). What ``torch.ops.mtt_fast.convblock_forward``
    returns as ``y``.

    Args:
        x: the conv output ``[B, C, H, W]``, H and W at least 2.
        weight, bias: ``[C]`` the norm's affine parameters.
        eps: added to the variance (``nn.GroupNorm``'s default 1e-5).

    Returns:
        ``[B, C, H // 2, W // 2]``.
    """
    c = x.shape[1]
    z = torch.nn.functional.group_norm(x, c, weight, bias, eps)
    return torch.nn.functional.avg_pool2d(torch.relu(z), 2)


def convblock_stats(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``[B, C, 2]``: the per-(sample, channel) mean and ``1 / sqrt(var + eps)`` of ``x``."""
    mu = x.mean(dim=(2, 3))
    var = x.var(dim=(2, 3), unbiased=False)
    return torch.stack((mu, torch.rsqrt(var + eps)), dim=-1)
