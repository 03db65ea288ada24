"""GLaD distillation (the paper's Algorithm 1): MTT through a deep generative prior.

The loop, the matching engines, evaluation and checkpoints are MTT's
(:class:`mtt_fast.distill.mtt.MTTDistiller`); only the parameterization differs: the synthetic
images are ``G(latents)`` (:class:`mtt_fast.synth.latent.GeneratorParam`). The synset written
to disk holds the rendered images, so ``eval`` needs no generator; ``latents.safetensors`` and
``generator.json`` beside it say how they were made.
"""

from __future__ import annotations

import torch

from mtt_fast.distill.mtt import MTTDistiller
from mtt_fast.errors import UserError
from mtt_fast.generative.interface import check_generator
from mtt_fast.synth.latent import GeneratorParam
from mtt_fast.synth.params import Parameterization


class GLaDDistiller(MTTDistiller):
    """MTT in the latent space of a generator given by ``cfg.generator`` (see ``load_generator``)."""

    def __init__(self, store, bundle, cfg, out, **kwargs):
        super().__init__(store, bundle, cfg, out, **kwargs)
        from mtt_fast.generative import load_generator

        if not cfg.generator:
            raise UserError("--method glad needs --generator (a `mtt-fast gan train` directory, a TorchScript file, "
                            "or module:factory)")
        self.G, self.generator_ref = load_generator(cfg.generator, device=self.device)
        self.g_info = check_generator(self.G, cfg.generator, device=self.device)
        _check_fits(self.g_info, self.generator_ref, bundle, cfg.generator)

    def _make_param(self) -> Parameterization:
        cfg = self.cfg
        labels = torch.arange(self.bundle.num_classes, device=self.device).repeat_interleave(cfg.ipc)
        self.labels = labels
        return GeneratorParam(
            self.G, self.g_info, labels, self.bundle.mean, self.bundle.std, space=cfg.space, layer=cfg.layer,
            avg_w=cfg.avg_w, lr_img=cfg.lr_img, lr_w=cfg.lr_w, lr_g=cfg.lr_g, momentum=cfg.momentum,
            learn_g=cfg.learn_g, g_batch=cfg.g_batch, generator_ref=self.generator_ref, rng=self.gen)

    def _fresh_state(self) -> None:
        if self.cfg.learn_g:  # a resume or restart must start from the generator's original weights
            from mtt_fast.generative import load_generator

            self.G, _ = load_generator(self.cfg.generator, device=self.device)
        super()._fresh_state()

    def _checkpoint_extra(self) -> dict:
        return {"generator_sha256": self.generator_ref.get("sha256")}

    def _check_resume(self, info: dict) -> None:
        old, new = info.get("generator_sha256"), self.generator_ref.get("sha256")
        if old != new:
            raise UserError(f"--generator {self.cfg.generator} is not the generator this run started with "
                            f"(sha256 {str(new)[:12]} now, {str(old)[:12]} in {self.out / 'checkpoint.json'}); "
                            f"choose another --out or pass --overwrite")

    def _lr_hint(self) -> str:
        c = self.cfg
        learned = {"p": "--lr-img", "z": "--lr-w", "w": "--lr-w", "wp": "--lr-w"}[c.space]
        extra = (" / --lr-img" if c.layer >= 0 and c.space != "p" else "") + (" / --lr-g" if c.learn_g else "")
        return (f"lower {learned}{extra} (lr-img {c.lr_img:g}, lr-w {c.lr_w:g}, lr-g {c.lr_g:g}) "
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
