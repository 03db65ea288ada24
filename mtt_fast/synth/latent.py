"""GLaD: the synthetic set as ``G(latents)`` for a generator ``G`` (the paper's section 3.3).

Spaces (``--space``), as in the GLaD reference:

* ``p``: pixels, initialized by rendering ``G`` once (then plain MTT on those pixels);
* ``z``: one Gaussian latent per image, through ``G.mapping`` (with the image's class);
* ``w``: one style vector per image, shared by every synthesis block;
* ``wp``: W+, one style vector per block and image.

``layer = k >= 0`` (``--layer``) also learns the feature map after synthesis block ``k``
(``f``, learning rate ``lr_img``); the image is then ``G.render(f, ws, k)``, which reads only
the style vectors of the later blocks. ``layer = -1`` renders from the constant input.
Style latents (``z``, ``w``, ``wp``) learn with ``lr_w``; with ``learn_g`` the generator's own
weights learn with ``lr_g``. All optimizers are SGD with the same momentum (0.5 in GLaD).

Memory: images are rendered in chunks of ``g_batch`` without a graph; after the matching
engine returns ``d loss / d images``, each chunk is rendered again WITH a graph and
back-propagated with its slice of that gradient. The generator's activation memory is
therefore that of one chunk, whatever the ipc. ``GLaD``'s own ``gan_backward`` does the same.

Feature latents are cleaned once, at initialization, as GLaD does: ``nan_to_num`` (+-inf ->
+-5) and clipped to ``[-f_clip, f_clip]`` (GLaD: 10). They are not clipped during
distillation; a NaN/inf anywhere stops the run (the distill loop checks every step).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mtt_fast.errors import UserError
from mtt_fast.io import save_tensors, write_json
from mtt_fast.synth.generator import to_model_space
from mtt_fast.synth.params import Parameterization

SPACES = ("p", "z", "w", "wp")


class GeneratorParam(Parameterization):
    """Latents (and optionally the weights) of a generator, rendered to normalized images.

    Args:
        generator: a module following :mod:`mtt_fast.synth.generator`, on the target device.
        info: its ``check_generator`` / ``describe`` dict (``num_ws``, ``z_dim``, ...).
        labels: ``[n]`` class of each synthetic image (on the target device).
        mean, std: the dataset's per-channel normalization.
        space, layer, avg_w: see the module docstring.
        lr_img, lr_w, lr_g, momentum: SGD settings.
        learn_g: also learn the generator's weights.
        g_batch: images rendered per chunk.
        generator_ref: JSON-able description of where the generator came from.
        rng: CPU ``torch.Generator`` for the initial ``z``.
        f_clip: clip of the initial feature latents.
        avg_w_samples: ``z`` samples per class for the class-average ``w``.
    """

    def __init__(self, generator: torch.nn.Module, info: dict, labels: torch.Tensor, mean, std, *,
                 space: str = "wp", layer: int = -1, avg_w: bool = False, lr_img: float = 1000.0,
                 lr_w: float = 1.0, lr_g: float = 0.01, momentum: float = 0.5, learn_g: bool = False,
                 g_batch: int = 100, generator_ref: dict | None = None, rng: torch.Generator | None = None,
                 f_clip: float = 10.0, avg_w_samples: int = 1000):
        if space not in SPACES:
            raise UserError(f"--space {space}: choose one of {', '.join(SPACES)}")
        num_ws = int(info["num_ws"])
        if not -1 <= layer < num_ws:
            raise UserError(f"--layer {layer}: this generator has {num_ws} synthesis blocks, so the layer must be "
                            f"-1 (style vectors only) or 0..{num_ws - 1}")
        if avg_w and space not in ("w", "wp", "p"):
            raise UserError(f"--avg-w initializes w; it does not apply to --space {space}")
        if space == "p" and learn_g:
            raise UserError("--learn-g needs a latent space (--space z, w or wp); in space p the generator is not used after initialization")
        if g_batch < 1:
            raise UserError(f"--g-batch must be at least 1 (got {g_batch})")
        self.G, self.info, self.labels = generator, info, labels
        self.mean, self.std = list(mean), list(std)
        self.space, self.layer, self.avg_w, self.learn_g, self.g_batch = space, layer, avg_w, learn_g, g_batch
        self.generator_ref = generator_ref or {}
        self.settings = {"space": space, "layer": layer, "avg_w": avg_w, "learn_g": learn_g, "g_batch": g_batch,
                         "lr_img": lr_img, "lr_w": lr_w, "lr_g": lr_g, "momentum": momentum, "f_clip": f_clip}
        self._cache: torch.Tensor | None = None
        device = labels.device
        rng = rng or torch.Generator().manual_seed(0)
        self.G.requires_grad_(False)
        self.G.eval()

        with torch.no_grad():
            n = len(labels)
            z = torch.randn(n, int(info["z_dim"]), generator=rng).to(device, self._dtype())
            if avg_w:
                w = self._class_average_w(rng, avg_w_samples)
            else:
                w = self._chunked(lambda sl: self.G.mapping(z[sl], labels[sl]))
            ws = w.unsqueeze(1).repeat(1, num_ws, 1)
            if space == "z":
                self.latents = z.clone()
            elif space == "w":
                self.latents = w.clone()
            else:
                self.latents = ws.clone()
            self.f = None
            if layer >= 0:
                f = self._chunked(lambda sl: self.G.features(ws[sl], layer))
                self.f = torch.nan_to_num(f, nan=0.0, posinf=5.0, neginf=-5.0).clamp_(-f_clip, f_clip).clone()
            if space == "p":
                self.pixels = self._chunked(lambda sl: self._render(sl, latents=ws, f=self.f)).clone()

        if space == "p":
            self.pixels.requires_grad_(True)
            self.optimizers = {"img": torch.optim.SGD([self.pixels], lr=lr_img, momentum=momentum)}
            return
        self.latents.requires_grad_(True)
        self.optimizers = {"w": torch.optim.SGD([self.latents], lr=lr_w, momentum=momentum)}
        if self.f is not None:
            self.f.requires_grad_(True)
            self.optimizers["img"] = torch.optim.SGD([self.f], lr=lr_img, momentum=momentum)
        if learn_g:
            self.G.requires_grad_(True)
            self.optimizers["g"] = torch.optim.SGD([p for _, p in self._g_params()], lr=lr_g, momentum=momentum)

    # -- rendering -----------------------------------------------------------------------
    def _dtype(self) -> torch.dtype:
        p = next(iter(self.G.parameters()), None)
        return p.dtype if p is not None else torch.float32

    def _g_params(self) -> list[tuple[str, torch.Tensor]]:
        return [(name, p) for name, p in self.G.named_parameters()]

    def _chunked(self, fn) -> torch.Tensor:
        n = len(self.labels)
        return torch.cat([fn(slice(i, min(i + self.g_batch, n))) for i in range(0, n, self.g_batch)])

    def _class_average_w(self, rng: torch.Generator, samples: int) -> torch.Tensor:
        """GLaD's ``--avg_w``: each image starts at the mean of ``w`` over ``samples`` z's of its class."""
        device = self.labels.device
        per_class = {}
        for c in torch.unique(self.labels).tolist():
            zs = torch.randn(samples, int(self.info["z_dim"]), generator=rng).to(device, self._dtype())
            lab = torch.full((samples,), c, dtype=torch.long, device=device)
            ws = torch.cat([self.G.mapping(zs[i:i + self.g_batch], lab[i:i + self.g_batch])
                            for i in range(0, samples, self.g_batch)])
            per_class[c] = ws.mean(0)
        return torch.stack([per_class[c] for c in self.labels.tolist()])

    def _ws(self, sl: slice, latents: torch.Tensor) -> torch.Tensor:
        """Style vectors ``[b, num_ws, w_dim]`` of the images in ``sl``."""
        num_ws = int(self.info["num_ws"])
        lat = latents[sl]
        if self.space == "z":
            return self.G.mapping(lat, self.labels[sl]).unsqueeze(1).expand(-1, num_ws, -1)
        if self.space == "w":
            return lat.unsqueeze(1).expand(-1, num_ws, -1)
        return lat

    def _render(self, sl: slice, latents: torch.Tensor | None = None, f: torch.Tensor | None = None) -> torch.Tensor:
        """Normalized images of the chunk ``sl`` (graph as the caller's grad mode says)."""
        latents = self.latents if latents is None else latents
        f = self.f if f is None else f
        ws = self._ws(sl, latents) if not (self.space == "p" and latents.dim() == 3) else latents[sl]
        img = self.G.render(f[sl] if self.layer >= 0 else None, ws, self.layer)
        return to_model_space(img, self.mean, self.std)

    # -- Parameterization ------------------------------------------------------------------
    def learnables(self) -> dict[str, torch.Tensor]:
        if self.space == "p":
            return {"images": self.pixels}
        out = {"latents": self.latents}
        if self.f is not None:
            out["f_latents"] = self.f
        if self.learn_g:
            out.update({f"G.{name}": p for name, p in self._g_params()})
        return out

    def images(self) -> torch.Tensor:
        if self.space == "p":
            return self.pixels.detach()
        if self._cache is None:
            with torch.no_grad():
                self._cache = self._chunked(self._render)
        return self._cache

    def backward(self, grad_images: torch.Tensor) -> None:
        """Chunk by chunk: render with a graph, back-propagate that chunk's image gradient."""
        if self.space == "p":
            self.pixels.grad = grad_images.to(self.pixels.dtype)
            return
        for t in self.learnables().values():
            t.grad = None
        n = len(self.labels)
        with torch.enable_grad():
            for i in range(0, n, self.g_batch):
                sl = slice(i, min(i + self.g_batch, n))
                img = self._render(sl)
                img.backward(grad_images[sl].to(img.dtype))
        for t in self.learnables().values():
            if t.grad is None:  # e.g. a block the chosen layer never reaches
                t.grad = torch.zeros_like(t)

    def changed(self) -> None:
        self._cache = None

    def meta(self) -> dict:
        return {"glad": {**self.settings, "generator": self.generator_ref,
                         "num_ws": int(self.info["num_ws"]), "w_dim": int(self.info["w_dim"])}}

    def save_extra(self, out: Path) -> None:
        """``latents.safetensors`` (+ ``generator.safetensors`` when learned) and ``generator.json``."""
        out = Path(out)
        t = {"labels": self.labels.detach().cpu()}
        if self.space != "p":
            t["latents"] = self.latents.detach().cpu()
            if self.f is not None:
                t["f_latents"] = self.f.detach().cpu()
        else:
            t["pixels"] = self.pixels.detach().cpu()
        save_tensors(out / "latents.safetensors", t)
        ref = {"format": "mtt-fast/generator-ref", **self.generator_ref, **self.settings}
        if self.learn_g:
            save_tensors(out / "generator.safetensors",
                         {name: p.detach().cpu().contiguous() for name, p in self._g_params()})
            ref["learned_weights"] = "generator.safetensors"
        write_json(out / "generator.json", ref)
