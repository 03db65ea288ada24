"""The GAN trainer: one object holding G, G_ema, D, both optimizers and the training generator.

    trainer = GANTrainer(bundle, out, cfg, device="cpu", progress=False, log=print)
    trainer.step()              # one D step + one G step + EMA; returns the step's losses
    trainer.quality()           # class consistency, kernel distance and diversity of G_ema
    trainer.write_samples()     # samples_<step>.png
    trainer.save_checkpoint()   # checkpoint.safetensors + generator.safetensors/json
    result = trainer.run()      # train to cfg.steps (what ``train_gan`` returns)

The recipe is described in :mod:`mtt_fast.generative.train`. Constructing the trainer
builds the networks, resumes from ``out/checkpoint.safetensors`` when present and loads or
trains the class-consistency classifier, in that order (the order of the random draws is
part of what makes a run reproducible bit for bit).

Beside the networks the trainer keeps ADA's controller (``augment="ada"``: the probability p
and its sign statistic, saved in the checkpoint so a resume is exact), the per-class average
style ``w_avg`` (for the truncation trick; an average of the training G's ``w`` per class,
exact for the first ``1 / (1 - W_AVG_BETA)`` styles of a class, then an EMA with
``W_AVG_BETA``) and the best generator so far (:data:`~mtt_fast.generative.config.BEST_RULE`,
written as ``generator_best.*``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm import tqdm

from mtt_fast.augment import DSAConfig, apply, sample_params
from mtt_fast.errors import UserError
from mtt_fast.experts.train import limit_per_class
from mtt_fast.generative.ada import ADAController, ada_dsa_config, ada_params
from mtt_fast.generative.checkpoint import load_checkpoint, save_checkpoint, save_generator
from mtt_fast.generative.config import BEST_RULE, GANConfig
from mtt_fast.generative.quality import (
    feature_quality,
    judge_generated,
    load_or_train_classifier,
    real_features,
)
from mtt_fast.generative.recipe import (
    BalancedSampler,
    ema_beta,
    fixed_latents,
    mix_styles,
    r1_penalty,
    render_labels,
    update_ema,
)
from mtt_fast.io import append_jsonl, read_jsonl, write_text
from mtt_fast.synth import save_grid
from mtt_fast.synth.generator import from_model_space, to_model_space

#: the running sums logged every ``log_every`` steps (means over the steps since the last log)
LOGGED = ("loss_G", "loss_D", "D_real", "D_fake")
#: the keys of a quality record (restored from metrics.jsonl on resume)
QUALITY_KEYS = ("class_consistency", "per_class", "real_val_accuracy", "kid", "kid_per_class", "diversity_gen",
                "diversity_real", "diversity_ratio", "truncation")
#: decay per step of the per-class average style (StyleGAN2's w_avg_beta)
W_AVG_BETA = 0.995


class GANTrainer:
    """Train a class-conditional generator on ``bundle``'s training split into the run directory ``out``.

    Args:
        bundle: the dataset (``mtt_fast.data.load_dataset``).
        out: the run directory; resumed from its checkpoint when there is one (the caller
            has checked that it holds a run with the same settings).
        cfg: the settings (validated here).
        device: where to train.
        progress: show a progress bar.
        log: where one-line messages go.
    """

    def __init__(self, bundle, out: str | Path, cfg: GANConfig, *, device: torch.device | str = "cpu",
                 progress: bool = True, log: Callable[[str], None] = print) -> None:
        cfg.validate()
        self.bundle, self.cfg, self.progress, self.log = bundle, cfg, progress, log
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(device)
        self.dsa = DSAConfig(strategy=cfg.aug if cfg.augment == "diffaug" else "none", mode=cfg.aug_mode)
        self.ada = (ADAController(cfg.batch_size, cfg.ada_target, cfg.ada_interval, cfg.ada_kimg)
                    if cfg.augment == "ada" else None)
        self.ada_dsa = ada_dsa_config()
        self.mean, self.std = bundle.mean, bundle.std
        self.train = limit_per_class(bundle.split("train"), cfg.max_train_per_class,
                                     torch.Generator().manual_seed(cfg.seed))
        self.sampler = BalancedSampler(self.train)
        self._build()
        self.cur_step, self.cur_nimg = 0, 0
        self.r1_last = float("nan")
        #: the running sums of the next metrics record, saved with every checkpoint so that a resume
        #: between two records logs the same averages as an uninterrupted run
        self.log_sums, self.log_count = dict.fromkeys(LOGGED, 0.0), 0
        self.ckpt = self.out / "checkpoint.safetensors"
        self.metrics_path = self.out / "metrics.jsonl"
        if self.ckpt.is_file():
            self._resume()
        elif self.metrics_path.exists():
            self.metrics_path.unlink()
        self.classifier, self.clf_info = load_or_train_classifier(
            self.out, bundle, store=cfg.classifier_store, epochs=cfg.classifier_epochs,
            max_train_per_class=cfg.max_train_per_class, seed=cfg.seed, device=self.device, progress=progress, log=log)
        log(f"class-consistency classifier ({self.clf_info['source']}): real validation accuracy "
            f"{self.clf_info['val_accuracy']:.2f}%")
        self.sample_z, self.sample_labels = fixed_latents(self.G, 10, cfg.seed + 12345)
        self.last_quality: dict | None = None
        #: the best quality step so far: {"step", "kid"} (BEST_RULE)
        self.best: dict | None = None
        for r in read_jsonl(self.metrics_path):
            if "class_consistency" in r:
                self.last_quality = {k: r[k] for k in QUALITY_KEYS if k in r}
                self._consider_best(r, write=False)
        self._real_feats: tuple[torch.Tensor, torch.Tensor] | None = None

    def _build(self) -> None:
        """G and D from ``cfg.seed`` alone; G_ema a copy of G; Adam for both (D's lazily-regularized)."""
        cfg, device = self.cfg, self.device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.G = cfg.generator(self.bundle).to(device)
            self.D = cfg.discriminator(self.bundle).to(device)
        self.G_ema = cfg.generator(self.bundle).to(device).eval()
        self.G_ema.load_state_dict(self.G.state_dict())
        self.G_ema.requires_grad_(False)
        ratio = cfg.r1_interval / (cfg.r1_interval + 1) if cfg.r1_gamma > 0 else 1.0
        self.opt_G = torch.optim.Adam(self.G.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8)
        self.opt_D = torch.optim.Adam(self.D.parameters(), lr=cfg.lr * ratio,
                                      betas=(cfg.beta1 ** ratio, cfg.beta2 ** ratio), eps=1e-8)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        K = max(self.G.num_classes, 1)
        self.w_avg = torch.zeros(K, self.G.w_dim, device=device)
        self.w_count = torch.zeros(K, device=device)

    # ------------------------------------------------------------------ checkpoint
    def _state(self) -> dict:
        return {"modules": {"G": self.G, "G_ema": self.G_ema, "D": self.D},
                "optimizers": {"opt_G": self.opt_G, "opt_D": self.opt_D}, "gen": self.gen}

    def _extra_tensors(self) -> dict[str, torch.Tensor]:
        return {"w_avg": self.w_avg, "w_count": self.w_count}

    def load_checkpoint(self) -> None:
        """Restore the networks, optimizers, training generator, counters, ADA's p and the average
        style from ``out``'s checkpoint."""
        self.cur_step, self.cur_nimg, logging = load_checkpoint(self.ckpt, **self._state(),
                                                                extra_tensors=self._extra_tensors())
        if logging:  # checkpoints written before the running sums were saved have none
            self.log_sums, self.log_count = dict(logging["sums"]), int(logging["count"])
            self.r1_last = float(logging["r1_last"])
        if self.ada is not None:
            if not logging or "ada" not in logging:
                raise UserError(f"--out {self.out}: the checkpoint has no ADA state (it was written with another "
                                "--augment); pass --overwrite to start again")
            self.ada.load_state(logging["ada"])

    def save_checkpoint(self) -> None:
        """Write the EMA generator (``generator.safetensors`` + ``generator.json``), then the checkpoint:
        a checkpoint at step k always has the step-k generator beside it (a kill in between redoes
        the steps since the previous checkpoint and writes both again)."""
        self._save_generator("generator")
        logging = {"sums": self.log_sums, "count": self.log_count, "r1_last": self.r1_last}
        if self.ada is not None:
            logging["ada"] = self.ada.state()
        save_checkpoint(self.ckpt, self.cfg, step=self.cur_step, cur_nimg=self.cur_nimg, **self._state(),
                        logging=logging, extra_tensors=self._extra_tensors())

    def _save_generator(self, name: str) -> None:
        extra = {"training": asdict(self.cfg), "classifier": self.clf_info, "quality": self.last_quality}
        if name == "generator_best":
            extra["best_rule"] = BEST_RULE
        save_generator(self.out, self.G_ema, self.bundle, step=self.cur_step, extra=extra, name=name,
                       w_avg=self.w_avg)

    def _consider_best(self, q: dict, *, write: bool) -> None:
        """Keep ``q`` as the best so far by :data:`BEST_RULE` (writing ``generator_best.*`` when ``write``)."""
        kid = q.get("kid")
        if kid is None or (self.best is not None and not kid < self.best["kid"]):
            return
        self.best = {"step": int(q.get("step", self.cur_step)), "kid": float(kid)}
        if write:
            self._save_generator("generator_best")

    def _resume(self) -> None:
        self.load_checkpoint()
        # metrics written after the checkpoint belong to steps that will be redone
        kept = [r for r in read_jsonl(self.metrics_path) if int(r.get("step", 0)) <= self.cur_step]
        write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        self.log(f"resuming from {self.ckpt} at step {self.cur_step} of {self.cfg.steps}")

    # ------------------------------------------------------------------ quality, samples
    def quality(self) -> dict:
        """Class consistency of ``G_ema`` (fixed latents), with the classifier's real validation accuracy,
        and the feature-space numbers of :func:`~mtt_fast.generative.quality.feature_quality` against
        real validation images (``quality_truncation`` draws through the truncation trick)."""
        cfg = self.cfg
        q, feats, labels = judge_generated(self.G_ema, self.classifier, mean=self.mean, std=self.std,
                                           samples_per_class=cfg.quality_samples, seed=cfg.seed + 54321,
                                           device=self.device, truncation=cfg.quality_truncation, w_avg=self.w_avg)
        q["real_val_accuracy"] = self.clf_info["val_accuracy"]
        if self._real_feats is None:
            self._real_feats = real_features(self.classifier, self.bundle.split("val"), cfg.quality_samples,
                                             cfg.seed + 777, self.device)
        q.update(feature_quality(feats, labels, *self._real_feats, max(self.G.num_classes, 1)))
        q["truncation"] = cfg.quality_truncation
        return q

    def write_samples(self) -> None:
        """``samples_<step>.png``: ten images of every class from fixed latents, rendered by ``G_ema``."""
        imgs = render_labels(self.G_ema, self.sample_z, self.sample_labels, self.device)
        save_grid(to_model_space(imgs, self.mean, self.std), self.sample_labels,
                  {"mean": list(self.mean), "std": list(self.std)}, self.out / f"samples_{self.cur_step:06d}.png",
                  num_classes=max(self.bundle.num_classes, 1))

    # ------------------------------------------------------------------ one step
    def _draw(self) -> dict:
        """Every random draw of one step, from ``self.gen`` on the CPU, in a fixed order."""
        cfg, G, gen, dev, B = self.cfg, self.G, self.gen, self.device, self.cfg.batch_size
        pos, real_labels = self.sampler.sample(B, gen)
        d = {"real": from_model_space(self.train.get(pos, device=dev), self.mean, self.std),
             "real_labels": real_labels.to(dev)}
        d["z"] = torch.randn(B, G.z_dim, generator=gen).to(dev)
        d["fake_labels"] = torch.randint(max(self.bundle.num_classes, 1), (B,), generator=gen).to(dev)
        mix = torch.rand(B, generator=gen) < cfg.mixing_prob if cfg.mixing_prob > 0 else None
        d["mix"] = mix
        d["z2"] = torch.randn(B, G.z_dim, generator=gen).to(dev) if mix is not None else None
        d["cut"] = torch.randint(1, max(G.num_ws, 2), (B,), generator=gen) if mix is not None else None
        shape = tuple(d["real"].shape)
        if self.ada is not None:  # both batches with the p of this step
            d["p_real"] = ada_params(self.ada.p, shape, gen, self.ada_dsa)
            d["p_fake"] = ada_params(self.ada.p, shape, gen, self.ada_dsa)
        else:
            d["p_real"] = sample_params(self.dsa, shape, gen) if self.dsa.enabled else None
            d["p_fake"] = sample_params(self.dsa, shape, gen) if self.dsa.enabled else None
        return d

    def _styles(self, d: dict) -> torch.Tensor:
        """W+ styles of the fake batch (style mixing: blocks from the crossover ``cut`` on from ``z2``
        where drawn); the styles of ``z`` also update the per-class average style."""
        G = self.G
        w = G.mapping(d["z"], d["fake_labels"])
        self._track_w(w.detach(), d["fake_labels"])
        ws = w.unsqueeze(1).repeat(1, G.num_ws, 1)
        if d["mix"] is not None:
            ws2 = G.mapping(d["z2"], d["fake_labels"]).unsqueeze(1).repeat(1, G.num_ws, 1)
            ws = mix_styles(ws, ws2, d["cut"], d["mix"])
        return ws

    @torch.no_grad()
    def _track_w(self, w: torch.Tensor, labels: torch.Tensor) -> None:
        """Move each present class's average style toward the mean of its styles in this batch."""
        K = self.w_avg.shape[0]
        onehot = F.one_hot(labels.clamp_max(K - 1), K).to(w.dtype)         # [B, K]
        n = onehot.sum(0)                                                   # [K]
        self.w_count += n
        rate = torch.maximum(torch.full_like(n, 1.0 - W_AVG_BETA), n / self.w_count.clamp_min(1.0))
        mean = (onehot.t() @ w) / n.clamp_min(1.0).unsqueeze(1)
        upd = self.w_avg + rate.unsqueeze(1) * (mean - self.w_avg)
        self.w_avg.copy_(torch.where((n > 0).unsqueeze(1), upd, self.w_avg))

    def _d_step(self, fake_aug: torch.Tensor, real_aug: torch.Tensor, d: dict, do_r1: bool):
        """D step: ``softplus(D(fake)) + softplus(-D(real))`` [+ lazy R1]; returns the tensors logged."""
        cfg, D = self.cfg, self.D
        D.requires_grad_(True)
        d_fake = D(fake_aug.detach(), d["fake_labels"])
        if do_r1:
            d_real, pen = r1_penalty(D, real_aug, d["real_labels"])
            self.r1_last = float(pen.detach().mean())
            r1_term = pen.mean() * (cfg.r1_gamma / 2) * cfg.r1_interval
        else:
            d_real = D(real_aug.detach(), d["real_labels"])
            r1_term = torch.zeros((), device=self.device)
        loss_D = F.softplus(d_fake).mean() + F.softplus(-d_real).mean()
        self.opt_D.zero_grad(set_to_none=True)
        (loss_D + r1_term).backward()
        self.opt_D.step()
        return loss_D, r1_term, d_real, d_fake

    def _g_step(self, fake_aug: torch.Tensor, d: dict) -> torch.Tensor:
        """G step: ``softplus(-D(G(z)))``."""
        self.D.requires_grad_(False)
        loss_G = F.softplus(-self.D(fake_aug, d["fake_labels"])).mean()
        self.opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        self.opt_G.step()
        return loss_G

    def step(self) -> dict[str, float]:
        """One training step (D, then G, then the EMA); returns its ``loss_G, loss_D, D_real, D_fake``.

        Raises:
            UserError: a NaN / infinite loss (the last checkpoint is kept).
        """
        cfg = self.cfg
        d = self._draw()
        do_r1 = cfg.r1_gamma > 0 and self.cur_step % cfg.r1_interval == 0
        p_used = self.ada.p if self.ada is not None else None
        fake = self.G.render(None, self._styles(d), -1)
        fake_aug = apply(fake, d["p_fake"], impl=cfg.dsa_impl) if d["p_fake"] is not None else fake
        real_aug = apply(d["real"], d["p_real"], impl=cfg.dsa_impl) if d["p_real"] is not None else d["real"]
        loss_D, r1_term, d_real, d_fake = self._d_step(fake_aug, real_aug, d, do_r1)
        if self.ada is not None:
            self.ada.accumulate(d_real)
        loss_G = self._g_step(fake_aug, d)
        lg, ld = float(loss_G.detach()), float((loss_D + r1_term).detach())
        if not (math.isfinite(lg) and math.isfinite(ld)):
            kept = (f"the last checkpoint ({self.ckpt}) is kept" if self.ckpt.is_file()
                    else "no checkpoint was written yet")
            raise UserError(f"GAN training diverged at step {self.cur_step + 1} (loss_G {lg}, loss_D {ld}); lower --lr "
                            f"(now {cfg.lr}) or raise --r1-gamma (now {cfg.r1_gamma}); {kept}")
        self.cur_step += 1
        self.cur_nimg += cfg.batch_size
        update_ema(self.G_ema, self.G, ema_beta(cfg.batch_size, self.cur_nimg, cfg.ema_kimg, cfg.ema_rampup))
        if self.ada is not None:
            self.ada.after_step(self.cur_step)
        out = {"loss_G": lg, "loss_D": float(loss_D.detach()), "D_real": float(d_real.detach().mean()),
               "D_fake": float(d_fake.detach().mean())}
        if p_used is not None:
            out["augment_p"] = p_used
        return out

    # ------------------------------------------------------------------ the run
    def run(self) -> dict:
        """Train to ``cfg.steps``, logging, sampling and checkpointing on the way.

        Returns:
            ``{"step", "quality": {...}, "classifier": {...}, "generator": path}``.
        """
        self.G.train()
        self.D.train()
        bar = tqdm(total=self.cfg.steps, initial=self.cur_step, desc="gan", disable=not self.progress,
                   dynamic_ncols=True)
        while self.cur_step < self.cfg.steps:
            for k, v in self.step().items():
                if k in self.log_sums:
                    self.log_sums[k] += v
            self.log_count += 1
            bar.update(1)
            self._after_step(bar)
        bar.close()
        if self.last_quality is None or not (self.out / "generator.safetensors").is_file():
            # a rerun of a run that had already reached its last step before being killed
            self.last_quality = self.quality()
            self._consider_best({**self.last_quality, "step": self.cur_step}, write=True)
            self.write_samples()
            self.save_checkpoint()
        return {"step": self.cur_step, "quality": self.last_quality, "classifier": self.clf_info,
                "generator": str(self.out / "generator.json"), "best": self.best,
                "augment_p": self.ada.p if self.ada is not None else None}

    def _after_step(self, bar) -> None:
        """Log / quality / samples / checkpoint as due after a step (the running sums restart after a log)."""
        cfg, step = self.cfg, self.cur_step
        last = step == cfg.steps
        record = None
        if step % cfg.log_every == 0 or last:
            count = max(self.log_count, 1)
            record = {"step": step, "kimg": self.cur_nimg / 1000, **{k: v / count for k, v in self.log_sums.items()},
                      "r1": self.r1_last}
            post = {"G": f"{record['loss_G']:.3f}", "D": f"{record['loss_D']:.3f}"}
            if self.ada is not None:
                record["augment_p"], record["ada_rt"] = self.ada.p, self.ada.rt
                post["p"] = f"{self.ada.p:.3f}"
            bar.set_postfix(**post, refresh=False)
            self.log_sums, self.log_count = dict.fromkeys(LOGGED, 0.0), 0
        if step % cfg.quality_every == 0 or last:
            self.last_quality = self.quality()
            record = {**(record or {"step": step, "kimg": self.cur_nimg / 1000}), **self.last_quality}
            self._consider_best(record, write=True)
            q = self.last_quality
            kid = "n/a" if q["kid"] is None else f"{q['kid']:.4f}"
            div = "n/a" if q["diversity_ratio"] is None else f"{q['diversity_ratio']:.2f}"
            msg = (f"step {step}: class consistency {q['class_consistency']:.2f}% "
                   f"(classifier on real val: {self.clf_info['val_accuracy']:.2f}%), kid {kid}, "
                   f"diversity gen/real {div}")
            if self.progress:
                bar.write(msg)
            else:
                self.log(msg)
        if record is not None:
            append_jsonl(self.metrics_path, record)
        if step % cfg.sample_every == 0 or last:
            self.write_samples()
        if step % cfg.checkpoint_every == 0 or last:
            self.save_checkpoint()
