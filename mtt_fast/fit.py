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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from mtt_fast.augment import DSAConfig, augment
from mtt_fast.errors import UserError


def _diverged_default(loss: float) -> str:
    return f"training loss became {loss} (lower the learning rate)"


def _step(net, x, y, opt, dsa, dsa_impl, generator, diverged, scheduler, ema) -> float:
    """One step after the lr is set: augment, forward, finite check, zero_grad, backward, step(s), EMA."""
    if dsa is not None and dsa.enabled:
        x, _ = augment(x, dsa, generator, impl=dsa_impl)
    loss = F.cross_entropy(net(x), y)
    if not torch.isfinite(loss):
        raise UserError(diverged(loss.item()))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if scheduler is not None:
        scheduler.step()
    if ema is not None:
        ema.update_parameters(net)
    return loss.item()


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
) -> list[float]:
    """Train ``net`` with cross-entropy for ``epochs`` epochs.

    Args:
        net: the classifier (set to train mode; left in it).
        batches: ``batches(epoch)`` -> the epoch's ``(x, y)`` batches, on the training device.
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

    Returns:
        The mean training loss of every epoch.
    """
    if dsa is not None and dsa.enabled and generator is None:
        raise ValueError("fit_classifier: DSA needs a generator")
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
                loss_sum += _step(net, x, y, opt, dsa, dsa_impl, generator, diverged, scheduler, ema) * len(y)
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
