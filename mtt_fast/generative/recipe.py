"""The parts of the GAN recipe that are plain functions: EMA, lazy R1, balanced real batches, rendering.

Used by :class:`mtt_fast.generative.trainer.GANTrainer`; each is small and tested on its own.
"""

from __future__ import annotations

import torch
from torch import nn

from mtt_fast.errors import UserError
from mtt_fast.generative.networks import Generator


# ------------------------------------------------------------------------------ EMA, R1
def ema_beta(batch_size: int, cur_nimg: int, ema_kimg: float, rampup: float | None) -> float:
    """Per-step EMA decay for a half-life of ``ema_kimg`` thousand images (StyleGAN2-ADA).

    With ``rampup``, the half-life is at most ``rampup * cur_nimg`` images, so early in
    training the average forgets the random initialization quickly.
    """
    ema_nimg = ema_kimg * 1000.0
    if rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


@torch.no_grad()
def update_ema(G_ema: nn.Module, G: nn.Module, beta: float) -> None:
    """``p_ema <- beta * p_ema + (1 - beta) * p`` for every parameter; buffers are copied."""
    for pe, p in zip(G_ema.parameters(), G.parameters()):
        pe.copy_(p.detach().lerp(pe, beta))
    for be, b in zip(G_ema.buffers(), G.buffers()):
        be.copy_(b)


def r1_penalty(D: nn.Module, real: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits [n], penalty [n])``: D's logits of ``real`` and ``||d D(real) / d real||^2`` per
    sample, with a graph so the penalty can be minimized w.r.t. D's parameters."""
    real = real.detach().requires_grad_(True)
    logits = D(real, labels)
    (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return logits, grad.square().sum(dim=[1, 2, 3])


# ------------------------------------------------------------------------------ sampling
class BalancedSampler:
    """Real batches: a class uniformly at random, then an image of that class uniformly."""

    def __init__(self, split) -> None:
        self.split = split
        order = torch.argsort(split.labels, stable=True)
        counts = torch.bincount(split.labels, minlength=split.num_classes)
        self.present = torch.nonzero(counts > 0).flatten()
        if len(self.present) == 0:
            raise UserError("the training split holds no images")
        self.order, self.counts = order, counts
        self.starts = torch.cumsum(counts, 0) - counts

    def sample(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(positions [n], labels [n])`` in the split."""
        cls = self.present[torch.randint(len(self.present), (n,), generator=gen)]
        off = (torch.rand(n, generator=gen) * self.counts[cls]).long().clamp_max(self.counts[cls] - 1)
        return self.order[self.starts[cls] + off], cls


def fixed_latents(G: Generator, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_class`` latents ``z`` of every class and their labels, from ``seed`` alone (the sample grids)."""
    gen = torch.Generator().manual_seed(seed)
    K = max(G.num_classes, 1)
    z = torch.randn(K * per_class, G.z_dim, generator=gen)
    return z, torch.arange(K).repeat_interleave(per_class)


@torch.no_grad()
def render_labels(G: nn.Module, z: torch.Tensor, labels: torch.Tensor, device, batch_size: int = 250) -> torch.Tensor:
    """Images ``[n, C, R, R]`` (CPU, [-1, 1]) of ``G`` for latents ``z`` and ``labels``."""
    out = []
    for i in range(0, len(labels), batch_size):
        w = G.mapping(z[i:i + batch_size].to(device), labels[i:i + batch_size].to(device))
        out.append(G.render(None, w.unsqueeze(1).repeat(1, G.num_ws, 1), -1).cpu())
    return torch.cat(out)


# ------------------------------------------------------------------------------ style mixing
def mix_styles(ws: torch.Tensor, ws2: torch.Tensor, cut: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """Style mixing: where ``mix[i]``, blocks ``cut[i]..num_ws - 1`` of sample ``i`` take ``ws2``'s styles.

    Args:
        ws, ws2: W+ styles ``[n, num_ws, w_dim]``.
        cut: the crossover block of each sample ``[n]`` (``1 <= cut < num_ws``).
        mix: which samples mix ``[n]`` bool.
    """
    num_ws = ws.shape[1]
    use2 = (torch.arange(num_ws).unsqueeze(0) >= cut.cpu().unsqueeze(1)) & mix.cpu().unsqueeze(1)
    return torch.where(use2.to(ws.device).unsqueeze(-1), ws2, ws)
