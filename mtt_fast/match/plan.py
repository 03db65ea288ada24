"""What the N unrolled student steps of one distillation iteration will use, drawn up front.

Every engine replays the same plan: the minibatch indices of each step (the MTT reference's
chunks of a random permutation, refilled when used up) and each step's augmentation
parameters. Drawing them before the unroll from one explicit generator is what makes the
engines comparable to the last bit, and lets the adjoint engine recompute a step exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mtt_fast.augment import AugParams, DSAConfig, sample_params


@dataclass
class StepPlan:
    """One unrolled step: which synthetic images, and how they are augmented.

    Attributes:
        indices: ``[b]`` indices into the synthetic set.
        aug: augmentation parameters for a ``[b, C, H, W]`` batch, or None (no DSA).
    """

    indices: torch.Tensor
    aug: AugParams | None


def plan_steps(
    num_images: int,
    image_shape: tuple[int, int, int],
    syn_steps: int,
    batch_syn: int,
    dsa: DSAConfig | None,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    aug_device: torch.device | str | None = None,
) -> list[StepPlan]:
    """Draw the batches and augmentations of ``syn_steps`` student steps.

    Args:
        num_images: size of the synthetic set.
        image_shape: ``(C, H, W)``.
        syn_steps: N, the number of student updates.
        batch_syn: images per step (``<= num_images``; the whole set when equal).
        dsa: augmentation config, or None for no augmentation.
        generator: the only source of randomness (a CPU generator; parameters are moved to
            ``device`` so CPU and CUDA runs draw the same plan).
        aug_device: where the augmentation parameters live (default ``device``); the
            fused DSA op wants them on the CPU, where it packs them (see
            :func:`mtt_fast.augment.uses_fused`).
    """
    batch_syn = min(batch_syn, num_images)
    plan: list[StepPlan] = []
    chunks: list[torch.Tensor] = []
    for _ in range(syn_steps):
        if not chunks:
            chunks = list(torch.randperm(num_images, generator=generator).split(batch_syn))
        idx = chunks.pop()
        aug = None
        if dsa is not None and dsa.enabled:
            aug = sample_params(dsa, (len(idx), *image_shape), generator,
                                device=device if aug_device is None else aug_device, dtype=dtype)
        plan.append(StepPlan(idx.to(device), aug))
    return plan
