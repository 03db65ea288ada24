"""How the synthetic set is parameterized while it is distilled.

A parameterization owns the learnable tensors (pixels; or generator latents, feature maps
and optionally the generator's weights), their SGD optimizers, and two operations the
distill loop needs:

* :meth:`Parameterization.images`: the current synthetic images ``[n, C, H, W]`` in the
  model's normalized input space, detached (the matching engine differentiates w.r.t.
  them itself);
* :meth:`Parameterization.backward`: given ``d loss / d images``, set the ``.grad`` of
  every learnable tensor.

The distill loop then steps the optimizers. Checkpoints save :meth:`learnables` and the
optimizers' momentum buffers by name, so a killed run resumes exactly.
"""

from __future__ import annotations

from pathlib import Path

import torch

# re-exported: the serializer lives below every user of it (distill, synth, generative)
from mtt_fast.optim_state import load_optimizer_state, optimizer_state

__all__ = ["Parameterization", "PixelParam", "load_optimizer_state", "optimizer_state"]


class Parameterization:
    """Base class: pixels are the simplest case (:class:`PixelParam`)."""

    #: name -> optimizer; each optimizer's parameters are leaves from :meth:`learnables`.
    optimizers: dict[str, torch.optim.Optimizer]

    def learnables(self) -> dict[str, torch.Tensor]:
        """Every learnable leaf tensor by a stable name (checkpoint keys)."""
        raise NotImplementedError

    def images(self) -> torch.Tensor:
        """The current synthetic images, ``[n, C, H, W]``, normalized, no graph."""
        raise NotImplementedError

    def backward(self, grad_images: torch.Tensor) -> None:
        """Set ``.grad`` of the learnables from ``d loss / d images`` (``[n, C, H, W]``)."""
        raise NotImplementedError

    def step(self) -> None:
        """One optimizer step of every learnable, then clear the gradients."""
        for opt in self.optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        self.changed()

    def changed(self) -> None:
        """The learnables changed (a step, a resume): forget cached renders."""

    def all_finite(self) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in self.learnables().values())

    def meta(self) -> dict:
        """What the synset's meta.json should say about the parameterization."""
        return {}

    def save_extra(self, out: Path) -> None:
        """Write files beside a saved synset (latents, generator reference)."""

    # -- checkpoints ---------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Learnables plus every optimizer's state (see :func:`mtt_fast.optim_state.optimizer_state`)."""
        t = {k: v.detach() for k, v in self.learnables().items()}
        for name, opt in self.optimizers.items():
            t.update(optimizer_state(name, opt))
        return t

    def load_state_tensors(self, t: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`state_tensors`."""
        with torch.no_grad():
            for k, v in self.learnables().items():
                v.copy_(t[k].to(v.device, v.dtype))
        for name, opt in self.optimizers.items():
            load_optimizer_state(name, opt, t)
        self.changed()


class PixelParam(Parameterization):
    """Plain MTT: the images themselves are learned (SGD with momentum, or Adam for DD)."""

    def __init__(self, images: torch.Tensor, lr_img: float, momentum: float = 0.5, optimizer: str = "sgd"):
        self.pixels = images.detach().clone().requires_grad_(True)
        opt = (torch.optim.SGD([self.pixels], lr=lr_img, momentum=momentum) if optimizer == "sgd"
               else torch.optim.Adam([self.pixels], lr=lr_img))
        self.optimizers = {"img": opt}

    def learnables(self) -> dict[str, torch.Tensor]:
        return {"images": self.pixels}

    def images(self) -> torch.Tensor:
        return self.pixels.detach()

    def backward(self, grad_images: torch.Tensor) -> None:
        self.pixels.grad = grad_images.to(self.pixels.dtype)
