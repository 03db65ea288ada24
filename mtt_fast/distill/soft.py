"""The expert network that labels and selects real images: DATM's soft-label initialization and the
feature space of the coreset methods.

Which expert: expert 0 of the store at its LAST epoch (``LABEL_EXPERT``, ``store.epochs``), as the
DATM reference does for its soft labels (``buffer[0][-1]``). Its logits on an image are that image's
soft label; its penultimate-layer activations (the input of the final linear layer) are the
feature space of herding and k-center (:mod:`mtt_fast.distill.coreset`).

DATM's initialization (``pix_init samples_predicted_correctly``): for each class, real training
images the expert classifies correctly. We walk the class's images in an order drawn from the
run's generator and keep the first ``ipc`` the expert gets right; a class with fewer correctly
classified images is filled up with the rest in the same order (a warning says how many). DATM
averages the logits of every expert that classifies an image correctly; we use the one labelling
expert's logits (simpler, the same expert that chose the image).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mtt_fast.errors import UserError
from mtt_fast.models import forward_flat

#: the expert (index in the store) whose last epoch labels and selects real images
LABEL_EXPERT = 0
_BATCH = 256


class ExpertNetwork:
    """Expert ``LABEL_EXPERT`` of a store at its last epoch, as a fixed (eval-mode) classifier."""

    def __init__(self, store, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.module = store.build_network(block_impl="reference").to(self.device).eval()
        self.layout = store.layout
        (self.theta,) = store.snapshots(LABEL_EXPERT, [store.epochs])
        self.theta = self.theta.to(self.device)
        linears = [m for m in self.module.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise UserError(f"the store's architecture {store.arch} has no final linear layer to take features from")
        self._last = linears[-1]
        self.what = f"expert {LABEL_EXPERT} at epoch {store.epochs}"

    @torch.no_grad()
    def _run(self, images: torch.Tensor, features: bool) -> torch.Tensor:
        outs: list[torch.Tensor] = []
        grabbed: list[torch.Tensor] = []
        hook = self._last.register_forward_pre_hook(lambda m, args: grabbed.append(args[0].detach())) if features else None
        try:
            for b in images.split(_BATCH):
                logits = forward_flat(self.module, self.layout, self.theta, b.to(self.device))
                outs.append(grabbed.pop().flatten(1) if features else logits)
        finally:
            if hook is not None:
                hook.remove()
        return torch.cat(outs).float()

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """``[n, K]`` logits of the expert on normalized images ``[n, C, H, W]``."""
        return self._run(images, features=False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``[n, D]`` penultimate-layer activations (the final linear layer's input)."""
        return self._run(images, features=True)


def correctly_classified_real(train_split, ipc: int, gen: torch.Generator, classify: Callable[[torch.Tensor], torch.Tensor],
                              log: Callable[[str], None] = print) -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc`` real training images per class that ``classify`` (images -> logits) gets right.

    Returns:
        images ``[K * ipc, C, H, W]`` (normalized) and their class labels ``[K * ipc]``, class by class.

    Raises:
        UserError: when a class has fewer than ``ipc`` training images.
    """
    xs, ys = [], []
    for c, name in enumerate(train_split.classes):
        idx = train_split.class_indices(c)
        if len(idx) < ipc:
            raise UserError(f"--ipc {ipc}: class {name!r} has only {len(idx)} training images")
        order = idx[torch.randperm(len(idx), generator=gen)]
        right: list[int] = []
        wrong: list[int] = []
        for chunk in order.split(_BATCH):
            pred = classify(train_split.get(chunk)).argmax(1).cpu()
            for i, p in zip(chunk.tolist(), pred.tolist()):
                (right if p == c else wrong).append(i)
            if len(right) >= ipc:
                break
        if len(right) < ipc:
            log(f"warning: --soft-labels: the labelling expert classifies only {len(right)} of the training images "
                f"of class {name!r} correctly; the other {ipc - len(right)} initial images are misclassified ones")
        pick = (right + wrong)[:ipc]
        xs.append(train_split.get(torch.tensor(pick, dtype=torch.long)))
        ys.append(torch.full((ipc,), c, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)
