"""The one train-a-classifier loop of the package: cross-entropy, SGD-style steps, optional DSA.

Every network the package trains on labelled images goes through :func:`fit_classifier`:
the experts (:mod:`mtt_fast.experts.train`: real batches, DSA, a snapshot per epoch), the
evaluation networks (:mod:`mtt_fast.evaluate.protocol`: a synset, a per-step lr schedule,
DSA, an EMA of the weights) and the GAN's class-consistency classifier
(:mod:`mtt_fast.generative.quality`: real batches, a torch lr scheduler).

One step, always in this order (so a caller's random draws and float operations are the
same as when it had its own loop)::

    lr set (lr_schedule) -> augment (DSA) -> forward + cross-entropy -> finite check
    -> zero_grad -> backward -> optimizer step -> scheduler step -> EMA update

The loop draws no random numbers of its own: batches come from the caller's ``batches``
(which owns the shuffling) and DSA draws from the caller's ``generator``.

Targets are class indices (``[B]`` int64: cross-entropy) or class probabilities (``[B, K]``
float: soft cross-entropy ``-sum_k t_k log softmax(z)_k``, averaged over the batch, as
``F.cross_entropy`` computes it for probability targets); the evaluation of a synset with soft
labels passes ``softmax(soft_labels)``.

With ``sam_rho > 0`` every step is sharpness-aware (SAM, Foret et al. 2021): the gradient
``g`` at ``w`` gives the ascent ``e = rho * g / ||g||`` (one norm over all parameters), the
gradient ``g_p`` is taken at ``w + e`` on the same augmented batch, ``w`` is restored exactly
(copied back, not ``w + e - e``) and the optimizer steps from ``w`` with ``g_p``. With
``gsam_alpha > 0`` it is GSAM's (Zhuang et al. 2022) surrogate-gap step: the optimizer gets
``g_p - alpha * g_perp``, ``g_perp`` the part of ``g`` orthogonal to ``g_p``. With
``sam_adaptive`` the ascent is ASAM's (Kwon et al. 2021), scaled per weight:
``e = rho * w^2 * g / ||w * g||`` (elementwise products; what the GSAM reference does with
``adaptive=True``, FTD's buffer script's default). Batch-norm running
statistics are not updated by the pass at ``w + e``. Nothing random is drawn for it, so a
SAM run is as reproducible as a plain one; ``sam_rho = 0`` runs the plain step unchanged.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from mtt_fast.augment import DSAConfig, augment
from mtt_fast.errors import UserError


def _diverged_default(loss: float) -> str:
    return f"training loss became {loss} (lower the learning rate)"


#: Added to ||g|| (and to ||g_p||, ||g|| ||g_p|| in GSAM's decomposition) so a zero gradient
#: gives a zero ascent instead of NaN (the GSAM reference's ``perturb_eps``).
SAM_EPS = 1e-12


def _loss(net, x, y, diverged) -> torch.Tensor:
    """Cross-entropy of ``net(x)`` against ``y`` (class indices or class probabilities); raises
    :class:`UserError` with ``diverged(loss)`` when it is NaN or infinite."""
    loss = F.cross_entropy(net(x), y)
    if not torch.isfinite(loss):
        raise UserError(diverged(loss.item()))
    return loss


def _step(net, x, y, opt, dsa, dsa_impl, generator, diverged, scheduler, ema, sam_rho=0.0, gsam_alpha=0.0,
          sam_adaptive=False) -> float:
    """One step after the lr is set: augment, forward, finite check, zero_grad, backward, step(s), EMA."""
    if dsa is not None and dsa.enabled:
        x, _ = augment(x, dsa, generator, impl=dsa_impl)
    loss = _loss(net, x, y, diverged)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if sam_rho > 0:
        _sharpness_aware_gradient(net, x, y, opt, sam_rho, gsam_alpha, sam_adaptive, diverged)
    opt.step()
    if scheduler is not None:
        scheduler.step()
    if ema is not None:
        ema.update_parameters(net)
    return loss.item()


@contextlib.contextmanager
def _running_stats_frozen(net: nn.Module) -> Iterator[None]:
    """Batch-norm layers keep their running statistics (momentum 0) inside the block."""
    saved = []
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            saved.append((m, m.momentum))
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in saved:
            m.momentum = momentum


def _sharpness_aware_gradient(net, x, y, opt, rho: float, alpha: float, adaptive: bool, diverged) -> None:
    """Replace the gradients ``g`` at ``w`` (already in ``.grad``) by SAM's ``g_p`` (or GSAM's
    ``g_p - alpha * g_perp``), taken at ``w + rho * g / ||g||`` (adaptive: ``w + rho * w^2 g /
    ||w g||``) on the same batch ``(x, y)``; the parameters are ``w`` again on return."""
    params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
    if not params:
        return
    with torch.no_grad():
        g = [p.grad.detach().clone() for p in params]
        w = [p.detach().clone() for p in params]
        g_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in g]))
        if adaptive:
            wg_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(v.abs() * t) for v, t in zip(w, g)]))
            scale = rho / (wg_norm + SAM_EPS)
            for p, t, v in zip(params, g, w):
                p.add_(t * scale * v * v)
        else:
            scale = rho / (g_norm + SAM_EPS)
            for p, t in zip(params, g):
                p.add_(t * scale)
    with _running_stats_frozen(net):
        loss_p = _loss(net, x, y, diverged)
        opt.zero_grad(set_to_none=True)
        loss_p.backward()
    with torch.no_grad():
        for p, t in zip(params, w):
            p.copy_(t)
        if alpha > 0:
            gp = [p.grad for p in params]
            gp_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in gp]))
            inner = sum((a * b).sum() for a, b in zip(g, gp))
            # the component of g along g_p: (g . g_p / ||g_p||^2) g_p, written as the GSAM reference
            # does (cosine * ||g|| * g_p / ||g_p||, eps in both denominators)
            along = inner / (g_norm * gp_norm + SAM_EPS) * g_norm / (gp_norm + SAM_EPS)
            for a, b in zip(gp, g):
                a.sub_(b - along * a, alpha=alpha)


def fit_classifier(
    net: nn.Module,
    batches: Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]],
    opt: torch.optim.Optimizer,
    *,
    epochs: int,
    dsa: DSAConfig | None = None,
    dsa_impl: str = "auto",
    generator: torch.Generator | None = None,
    lr_schedule: Callable[[int], float] | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    ema: torch.optim.swa_utils.AveragedModel | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    diverged: Callable[[float], str] = _diverged_default,
    progress: bool = False,
    desc: str = "train",
    progress_per: str = "epoch",
    steps_per_epoch: int | None = None,
    sam_rho: float = 0.0,
    gsam_alpha: float = 0.0,
    sam_adaptive: bool = False,
) -> list[float]:
    """Train ``net`` with cross-entropy for ``epochs`` epochs.

    Args:
        net: the classifier (set to train mode; left in it).
        batches: ``batches(epoch)`` -> the epoch's ``(x, y)`` batches, on the training device;
            ``y`` is ``[B]`` class indices or ``[B, K]`` class probabilities (soft labels).
        opt: the optimizer over ``net``'s parameters.
        epochs: number of passes.
        dsa: differentiable augmentation applied to every batch (None or disabled: none).
        dsa_impl: the DSA implementation (``auto``, ``fused``, ``reference``).
        generator: the source of DSA's random draws (required with an enabled ``dsa``).
        lr_schedule: ``lr_schedule(step)`` -> the learning rate of global step ``step``
            (counted from 0 over all epochs), set on every param group before the step.
        scheduler: a torch lr scheduler stepped after every optimizer step.
        ema: an ``AveragedModel`` updated from ``net`` after every step.
        on_epoch: ``on_epoch(epoch, mean_loss)`` after every epoch (the sample-weighted
            mean training loss of the epoch).
        diverged: ``diverged(loss)`` -> the message of the :class:`UserError` raised when
            a batch's loss is NaN or infinite (before that batch's step).
        progress: show a progress bar (``desc``; one tick per epoch, or per step with
            ``progress_per="step"``, whose total is ``epochs * steps_per_epoch``).
        sam_rho: SAM's ascent radius (0: plain steps; see the module docstring).
        gsam_alpha: GSAM's surrogate-gap weight (0: plain SAM; needs ``sam_rho > 0``).
        sam_adaptive: ASAM's per-weight ascent (needs ``sam_rho > 0``).

    Returns:
        The mean training loss of every epoch.
    """
    if dsa is not None and dsa.enabled and generator is None:
        raise ValueError("fit_classifier: DSA needs a generator")
    if not (math.isfinite(sam_rho) and sam_rho >= 0 and math.isfinite(gsam_alpha) and gsam_alpha >= 0):
        raise ValueError(f"fit_classifier: sam_rho {sam_rho} and gsam_alpha {gsam_alpha} must be finite and >= 0")
    if (gsam_alpha > 0 or sam_adaptive) and sam_rho == 0:
        raise ValueError("fit_classifier: gsam_alpha and sam_adaptive need sam_rho > 0")
    per_step = progress_per == "step"
    total = epochs * steps_per_epoch if per_step and steps_per_epoch is not None else (None if per_step else epochs)
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False)
    net.train()
    losses: list[float] = []
    step = 0
    try:
        for epoch in range(epochs):
            loss_sum, count = 0.0, 0
            for x, y in batches(epoch):
                if lr_schedule is not None:
                    lr = lr_schedule(step)
                    for g in opt.param_groups:
                        g["lr"] = lr
                loss_sum += _step(net, x, y, opt, dsa, dsa_impl, generator, diverged, scheduler, ema,
                                  sam_rho, gsam_alpha, sam_adaptive) * len(y)
                step += 1
                count += len(y)
                if per_step:
                    bar.update(1)
            losses.append(loss_sum / max(count, 1))
            if not per_step:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
            if on_epoch is not None:
                on_epoch(epoch, losses[-1])
    finally:
        bar.close()
    return losses
