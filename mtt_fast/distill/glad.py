"""GLaD (the paper's Algorithm 1): MTT through a deep generative prior.

The objective is MTT's trajectory matching; only the parameterization differs: the synthetic
images are ``G(latents)`` (:class:`mtt_fast.synth.latent.GeneratorParam`). The synset written
to disk holds the rendered images, so ``eval`` needs no generator; ``latents.safetensors`` and
``generator.json`` beside it say how they were made.
"""

from __future__ import annotations

import torch

from mtt_fast.distill.methods import Method
from mtt_fast.errors import UserError
from mtt_fast.generative import load_generator
from mtt_fast.synth.generator import check_generator
from mtt_fast.synth.latent import GeneratorParam


class GLaD(Method):
    """MTT in the latent space of the generator ``cfg.glad.generator`` (see ``load_generator``)."""

    name = "glad"

    @classmethod
    def validate(cls, cfg) -> None:
        super().validate(cfg)
        if not cfg.glad.generator:
            raise UserError("--method glad needs --generator (a `mtt-fast gan train` directory, a TorchScript file, "
                            "or package.module:factory)")

    def __init__(self, loop) -> None:
        super().__init__(loop)
        spec = loop.cfg.glad.generator
        self.validate(loop.cfg)
        self.G, self.generator_ref = load_generator(spec, device=loop.device)
        self.g_info = check_generator(self.G, spec, device=loop.device)
        _check_fits(self.g_info, self.generator_ref, loop.bundle, spec)

    def reset(self) -> None:
        if self.loop.cfg.glad.learn_g:  # a resume or restart must start from the generator's original weights
            self.G, _ = load_generator(self.loop.cfg.glad.generator, device=self.loop.device)

    def make_param(self, gen: torch.Generator):
        lp, g = self.loop, self.loop.cfg.glad
        labels = torch.arange(lp.bundle.num_classes, device=lp.device).repeat_interleave(lp.cfg.ipc)
        param = GeneratorParam(
            self.G, self.g_info, labels, lp.bundle.mean, lp.bundle.std, space=g.space, layer=g.layer,
            avg_w=g.avg_w, lr_img=lp.cfg.lr_img, lr_w=g.lr_w, lr_g=g.lr_g, momentum=lp.cfg.momentum,
            learn_g=g.learn_g, g_batch=g.g_batch, generator_ref=self.generator_ref, rng=gen)
        return param, labels

    def checkpoint_extra(self) -> dict:
        return {"generator_sha256": self.generator_ref.get("sha256")}

    def check_resume(self, info: dict) -> None:
        old, new = info.get("generator_sha256"), self.generator_ref.get("sha256")
        if old != new:
            raise UserError(f"--generator {self.loop.cfg.glad.generator} is not the generator this run started with "
                            f"(sha256 {str(new)[:12]} now, {str(old)[:12]} in {self.loop.out / 'checkpoint.json'}); "
                            f"choose another --out or pass --overwrite")

    def lr_hint(self) -> str:
        c, g = self.loop.cfg, self.loop.cfg.glad
        learned = {"p": "--lr-img", "z": "--lr-w", "w": "--lr-w", "wp": "--lr-w"}[g.space]
        extra = (" / --lr-img" if g.layer >= 0 and g.space != "p" else "") + (" / --lr-g" if g.learn_g else "")
        return (f"lower {learned}{extra} (lr-img {c.lr_img:g}, lr-w {g.lr_w:g}, lr-g {g.lr_g:g}) "
                f"or --lr-lr (now {c.lr_lr:g})")


def _check_fits(info: dict, ref: dict, bundle, spec: str) -> None:
    """The generator must draw this dataset's images: resolution, channels, classes."""
    if info["img_resolution"] != bundle.res or info["img_channels"] != bundle.channels:
        raise UserError(f"--generator {spec} draws {info['img_channels']}x{info['img_resolution']}x"
                        f"{info['img_resolution']} images, but the store's dataset is {bundle.channels}x{bundle.res}x"
                        f"{bundle.res}; train a generator at --res {bundle.res}")
    if info["num_classes"] not in (0, bundle.num_classes):
        raise UserError(f"--generator {spec} has {info['num_classes']} classes, the dataset {bundle.num_classes}")
    classes = ref.get("classes")
    if classes is not None and list(classes) != list(bundle.classes):
        raise UserError(f"--generator {spec} was trained on classes {list(classes)}, the store's dataset has "
                        f"{list(bundle.classes)}")
