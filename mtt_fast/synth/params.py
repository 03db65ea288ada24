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
        """Learnables plus every optimizer's state (see :func:`optimizer_state`)."""
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


def _state_key(key: str, name: str, i: int, count: int) -> str:
    prefix = "momentum" if key == "momentum_buffer" else key
    return f"{prefix}_{name}" if count == 1 else f"{prefix}_{name}.{i}"


def optimizer_state(name: str, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """An optimizer's per-parameter tensors as flat named tensors.

    SGD's momentum of optimizer ``img`` is ``momentum_img`` (``momentum_img.<i>`` when the
    optimizer has several parameters); Adam's are ``exp_avg_img``, ``exp_avg_sq_img``, ``step_img``.
    Hyper-parameters are not saved: they come from the run's config.
    """
    params = [p for g in opt.param_groups for p in g["params"]]
    out = {}
    for i, p in enumerate(params):
        for key, v in opt.state.get(p, {}).items():
            if isinstance(v, torch.Tensor):
                out[_state_key(key, name, i, len(params))] = v.detach()
            elif isinstance(v, (int, float)):
                out[_state_key(key, name, i, len(params))] = torch.tensor(float(v))
    return out


def load_optimizer_state(name: str, opt: torch.optim.Optimizer, t: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`optimizer_state` for an optimizer of the same kind over the same parameters."""
    params = [p for g in opt.param_groups for p in g["params"]]
    keys = {"momentum_buffer"} if isinstance(opt, torch.optim.SGD) else {"exp_avg", "exp_avg_sq", "step", "max_exp_avg_sq"}
    for i, p in enumerate(params):
        for key in keys:
            k = _state_key(key, name, i, len(params))
            if k in t:
                v = t[k]
                # Adam keeps ``step`` on the CPU unless it runs capturable/fused.
                opt.state[p][key] = v.clone() if key == "step" else v.to(p.device, p.dtype).clone()


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
