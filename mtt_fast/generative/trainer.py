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

Under ``torchrun`` (:mod:`mtt_fast.distributed`, more than one rank) the step is data parallel
with the usual :class:`~torch.nn.parallel.DistributedDataParallel`: every rank draws the whole
global batch (``batch_size``) from the shared training generator, exactly as one process does,
and keeps its contiguous slice of it (:func:`mtt_fast.distributed.owner_ranges`), so the random
stream, and with it the checkpoint, does not depend on the number of ranks. G's part of the step
(:class:`FakeBatch`) and D's real-image pass (with R1 when due) go through DDP; the fake-image
pass of the D step and D in the G step use the inner D (one DDP forward per backward; D's
gradients from both passes meet in the one backward that DDP all-reduces). Each rank's losses
are its rows' sum times ``world / batch_size``, so DDP's average is the gradient of the global
batch mean. What is not a per-row quantity is summed over ranks: ADA's sign statistic, the
per-class style sums of ``w_avg`` and the logged losses, so p, ``w_avg``, ``G_ema`` and the
metrics are the same on every rank. The minibatch-std groups of D are formed within a rank's
rows, so K ranks do not reproduce one process bit for bit (a fixed K and seed do reproduce
themselves). Rank 0 alone trains or loads the quality classifier, writes metrics, samples,
generators and checkpoints, computes quality, and reads a checkpoint back for every rank
(broadcast), so a run resumes on any number of ranks.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from mtt_fast import distributed
from mtt_fast.augment import AugParams, DSAConfig, apply, sample_params
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


class FakeBatch(nn.Module):
    """G's part of one step as one ``forward`` (what DDP wraps): the fake images of ``z`` (W+
    styles; style mixing: blocks from the crossover ``cut`` on from ``z2`` where ``mix``) and the
    styles of ``z`` (detached; they update the per-class average style)."""

    def __init__(self, G: nn.Module) -> None:
        super().__init__()
        self.G = G

    def forward(self, z: torch.Tensor, labels: torch.Tensor, z2: torch.Tensor | None, cut: torch.Tensor | None,
                mix: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        G = self.G
        w = G.mapping(z, labels)
        ws = w.unsqueeze(1).repeat(1, G.num_ws, 1)
        if mix is not None:
            ws2 = G.mapping(z2, labels).unsqueeze(1).repeat(1, G.num_ws, 1)
            ws = mix_styles(ws, ws2, cut, mix)
        return G.render(None, ws, -1), w.detach()


def slice_params(p: AugParams, lo: int, hi: int) -> AugParams:
    """Rows ``lo:hi`` of a batch's augmentation parameters (the cutout size is shared by all rows)."""
    rows = {k: (v if k == "cutout_size" else v[lo:hi]) for k, v in p.tensors().items()}
    return AugParams(ops=p.ops, shape=(hi - lo, *p.shape[1:]), **rows)


def _cpu(obj):
    """``obj`` with every tensor moved to the CPU (what is broadcast between ranks)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


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
        self.main = distributed.is_main()
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(device)
        self.world = distributed.world_size()
        if cfg.batch_size < self.world:
            raise UserError(f"--batch-size {cfg.batch_size} is smaller than the {self.world} ranks it is split over")
        #: this rank's rows ``[lo, hi)`` of every global batch (all of it in one process)
        self.rows = distributed.owner_ranges(cfg.batch_size)[distributed.rank()]
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
        payload = None
        if self.main:
            if self.ckpt.is_file():
                self._resume()
                payload = self._payload() if self.world > 1 else None
            elif self.metrics_path.exists():
                self.metrics_path.unlink()
        if self.world > 1:  # rank 0 read the checkpoint; every rank resumes from what it read
            payload = distributed.broadcast_object(payload)
            if payload is not None and not self.main:
                self._load_payload(payload)
        self.classifier, self.clf_info = None, None
        if self.main:  # only rank 0 judges quality
            self.classifier, self.clf_info = load_or_train_classifier(
                self.out, bundle, store=cfg.classifier_store, epochs=cfg.classifier_epochs,
                max_train_per_class=cfg.max_train_per_class, seed=cfg.seed, device=self.device, progress=progress,
                log=log)
            log(f"class-consistency classifier ({self.clf_info['source']}): real validation accuracy "
                f"{self.clf_info['val_accuracy']:.2f}%")
        self.sample_z, self.sample_labels = fixed_latents(self.G, 10, cfg.seed + 12345)
        self.last_quality: dict | None = None
        #: the best quality step so far: {"step", "kid"} (BEST_RULE)
        self.best: dict | None = None
        for r in (read_jsonl(self.metrics_path) if self.main else []):
            if "class_consistency" in r:
                self.last_quality = {k: r[k] for k in QUALITY_KEYS if k in r}
                self._consider_best(r, write=False)
        self._real_feats: tuple[torch.Tensor, torch.Tensor] | None = None
        self._wrap()

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

    def _wrap(self) -> None:
        """The modules the step calls: G's part of the step and D's real-image pass, under DDP when
        the step is split over ranks (one process: the plain modules, bit for bit as before)."""
        self.fakes: nn.Module = FakeBatch(self.G)
        self.D_real: nn.Module = self.D
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # G and D hold no buffers; every parameter gets a gradient in every backward. A [1, n]
            # weight's gradient has other (equivalent) strides than its bucket view: harmless
            warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
            self.fakes = DistributedDataParallel(self.fakes, device_ids=ids)
            self.D_real = DistributedDataParallel(self.D, device_ids=ids)

    # ------------------------------------------------------------------ checkpoint
    def _payload(self) -> dict:
        """Everything a resume restores, on the CPU (rank 0 broadcasts it to the other ranks)."""
        return _cpu({"modules": {k: m.state_dict() for k, m in self._state()["modules"].items()},
                     "optimizers": {k: o.state_dict() for k, o in self._state()["optimizers"].items()},
                     "rng": self.gen.get_state(), "w_avg": self.w_avg, "w_count": self.w_count,
                     "cur_step": self.cur_step, "cur_nimg": self.cur_nimg, "log_sums": dict(self.log_sums),
                     "log_count": self.log_count, "r1_last": self.r1_last,
                     "ada": self.ada.state() if self.ada is not None else None})

    def _load_payload(self, d: dict) -> None:
        """Restore what rank 0 read from the checkpoint (:meth:`_payload`)."""
        for k, m in self._state()["modules"].items():
            m.load_state_dict(d["modules"][k])
        for k, o in self._state()["optimizers"].items():
            o.load_state_dict(d["optimizers"][k])
        self.gen.set_state(d["rng"])
        self.w_avg.copy_(d["w_avg"])
        self.w_count.copy_(d["w_count"])
        self.cur_step, self.cur_nimg, self.r1_last = d["cur_step"], d["cur_nimg"], d["r1_last"]
        self.log_sums, self.log_count = dict(d["log_sums"]), d["log_count"]
        if self.ada is not None:
            self.ada.load_state(d["ada"])

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
        """Every random draw of one step, from ``self.gen`` on the CPU, in a fixed order: always those
        of the whole global batch; under torchrun this rank then keeps its rows (:attr:`rows`)."""
        cfg, G, gen, dev, B = self.cfg, self.G, self.gen, self.device, self.cfg.batch_size
        lo, hi = self.rows
        split = self.world > 1
        pos, real_labels = self.sampler.sample(B, gen)
        if split:
            pos, real_labels = pos[lo:hi], real_labels[lo:hi]
        d = {"real": from_model_space(self.train.get(pos, device=dev), self.mean, self.std),
             "real_labels": real_labels.to(dev)}
        d["z"] = torch.randn(B, G.z_dim, generator=gen)
        d["fake_labels"] = torch.randint(max(self.bundle.num_classes, 1), (B,), generator=gen)
        mix = torch.rand(B, generator=gen) < cfg.mixing_prob if cfg.mixing_prob > 0 else None
        d["mix"] = mix
        d["z2"] = torch.randn(B, G.z_dim, generator=gen) if mix is not None else None
        d["cut"] = torch.randint(1, max(G.num_ws, 2), (B,), generator=gen) if mix is not None else None
        shape = (B, *d["real"].shape[1:])
        if self.ada is not None:  # both batches with the p of this step
            d["p_real"] = ada_params(self.ada.p, shape, gen, self.ada_dsa)
            d["p_fake"] = ada_params(self.ada.p, shape, gen, self.ada_dsa)
        else:
            d["p_real"] = sample_params(self.dsa, shape, gen) if self.dsa.enabled else None
            d["p_fake"] = sample_params(self.dsa, shape, gen) if self.dsa.enabled else None
        for k in ("z", "fake_labels", "mix", "z2", "cut"):
            if d[k] is not None:
                d[k] = d[k][lo:hi] if split else d[k]
        for k in ("z", "fake_labels", "z2"):
            if d[k] is not None:
                d[k] = d[k].to(dev)
        for k in ("p_real", "p_fake"):
            if split and d[k] is not None:
                d[k] = slice_params(d[k], lo, hi)
        return d

    def _mean(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's share of the global batch mean of the per-row ``x``: its mean in one process;
        under torchrun its rows' sum times ``world / batch_size`` (DDP averages the gradients over
        the ranks, which makes the gradient that of the global mean)."""
        if self.world == 1:
            return x.mean()
        return x.sum() * (self.world / self.cfg.batch_size)

    @torch.no_grad()
    def _track_w(self, w: torch.Tensor, labels: torch.Tensor) -> None:
        """Move each present class's average style toward the mean of its styles in this (global) batch."""
        K = self.w_avg.shape[0]
        onehot = F.one_hot(labels.clamp_max(K - 1), K).to(w.dtype)         # [B, K]
        n = onehot.sum(0)                                                   # [K]
        sums = onehot.t() @ w                                               # [K, w_dim]
        if self.world > 1:  # the whole batch's per-class sums and counts
            packed = distributed.all_reduce_(torch.cat([sums.flatten(), n]))
            sums, n = packed[:-K].view_as(sums), packed[-K:]
        self.w_count += n
        rate = torch.maximum(torch.full_like(n, 1.0 - W_AVG_BETA), n / self.w_count.clamp_min(1.0))
        mean = sums / n.clamp_min(1.0).unsqueeze(1)
        upd = self.w_avg + rate.unsqueeze(1) * (mean - self.w_avg)
        self.w_avg.copy_(torch.where((n > 0).unsqueeze(1), upd, self.w_avg))

    def _d_step(self, fake_aug: torch.Tensor, real_aug: torch.Tensor, d: dict, do_r1: bool):
        """D step: ``softplus(D(fake)) + softplus(-D(real))`` [+ lazy R1]; returns the tensors logged.

        The real pass (with R1's gradient penalty, whose graph the backward goes through) is the
        DDP forward under torchrun; the fake pass uses the inner D. Both passes' gradients meet in
        the one backward, which DDP all-reduces."""
        cfg, D = self.cfg, self.D
        D.requires_grad_(True)
        d_fake = D(fake_aug.detach(), d["fake_labels"])
        pen = None
        if do_r1:
            d_real, pen = r1_penalty(self.D_real, real_aug, d["real_labels"])
            if self.world == 1:
                self.r1_last = float(pen.detach().mean())
            r1_term = self._mean(pen) * (cfg.r1_gamma / 2) * cfg.r1_interval
        else:
            d_real = self.D_real(real_aug.detach(), d["real_labels"])
            r1_term = torch.zeros((), device=self.device)
        loss_D = self._mean(F.softplus(d_fake)) + self._mean(F.softplus(-d_real))
        self.opt_D.zero_grad(set_to_none=True)
        (loss_D + r1_term).backward()
        self.opt_D.step()
        return loss_D, r1_term, d_real, d_fake, pen

    def _g_step(self, fake_aug: torch.Tensor, d: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """G step: ``softplus(-D(G(z)))`` (the inner D, frozen); returns the loss and D's logits."""
        self.D.requires_grad_(False)
        logits = self.D(fake_aug, d["fake_labels"])
        loss_G = self._mean(F.softplus(-logits))
        self.opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        self.opt_G.step()
        return loss_G, logits

    def _global_numbers(self, d_real, d_fake, g_logits, pen) -> dict[str, float]:
        """Under torchrun: the logged numbers of the whole batch (sums over ranks / batch size), and
        ADA's sign statistic summed over every rank's real logits (so p is the same everywhere)."""
        with torch.no_grad():
            parts = [F.softplus(-g_logits).sum(), F.softplus(d_fake).sum(), F.softplus(-d_real).sum(),
                     pen.sum() if pen is not None else torch.zeros((), device=self.device), d_real.sum(),
                     d_fake.sum(), torch.sign(d_real).sum(), torch.tensor(float(d_real.numel()), device=self.device)]
            s = distributed.all_reduce_(torch.stack([p.detach().double() for p in parts])).tolist()
        B = self.cfg.batch_size
        return {"loss_G": s[0] / B, "loss_D": (s[1] + s[2]) / B, "r1": s[3] / B, "D_real": s[4] / B,
                "D_fake": s[5] / B, "sign_sum": s[6], "sign_count": int(s[7])}

    def step(self) -> dict[str, float]:
        """One training step (D, then G, then the EMA); returns its ``loss_G, loss_D, D_real, D_fake``
        (of the whole global batch under torchrun).

        Raises:
            UserError: a NaN / infinite loss (the last checkpoint is kept).
        """
        cfg = self.cfg
        d = self._draw()
        do_r1 = cfg.r1_gamma > 0 and self.cur_step % cfg.r1_interval == 0
        p_used = self.ada.p if self.ada is not None else None
        fake, w = self.fakes(d["z"], d["fake_labels"], d["z2"], d["cut"], d["mix"])
        self._track_w(w, d["fake_labels"])
        fake_aug = apply(fake, d["p_fake"], impl=cfg.dsa_impl) if d["p_fake"] is not None else fake
        real_aug = apply(d["real"], d["p_real"], impl=cfg.dsa_impl) if d["p_real"] is not None else d["real"]
        loss_D, r1_term, d_real, d_fake, pen = self._d_step(fake_aug, real_aug, d, do_r1)
        if self.world == 1:
            if self.ada is not None:
                self.ada.accumulate(d_real)
            loss_G, _ = self._g_step(fake_aug, d)
            lg, ld = float(loss_G.detach()), float((loss_D + r1_term).detach())
            out = {"loss_G": lg, "loss_D": float(loss_D.detach()), "D_real": float(d_real.detach().mean()),
                   "D_fake": float(d_fake.detach().mean())}
        else:
            _, g_logits = self._g_step(fake_aug, d)
            g = self._global_numbers(d_real, d_fake, g_logits, pen)
            if self.ada is not None:
                self.ada.add_signs(g["sign_sum"], g["sign_count"])
            if do_r1:
                self.r1_last = g["r1"]
            lg = g["loss_G"]
            ld = g["loss_D"] + (g["r1"] * (cfg.r1_gamma / 2) * cfg.r1_interval if do_r1 else 0.0)
            out = {k: g[k] for k in ("loss_G", "loss_D", "D_real", "D_fake")}
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
        result = None
        if self.main:
            if self.last_quality is None or not (self.out / "generator.safetensors").is_file():
                # a rerun of a run that had already reached its last step before being killed
                self.last_quality = self.quality()
                self._consider_best({**self.last_quality, "step": self.cur_step}, write=True)
                self.write_samples()
                self.save_checkpoint()
            result = {"step": self.cur_step, "quality": self.last_quality, "classifier": self.clf_info,
                      "generator": str(self.out / "generator.json"), "best": self.best,
                      "augment_p": self.ada.p if self.ada is not None else None}
        # rank 0's files and numbers are the run's; every rank returns them
        return distributed.broadcast_object(result) if self.world > 1 else result

    def _after_step(self, bar) -> None:
        """Log / quality / samples / checkpoint as due after a step (the running sums restart after a log).

        Rank 0's alone under torchrun (no collective in here: the other ranks go on to the next step
        and wait for rank 0 in its first all-reduce)."""
        cfg, step = self.cfg, self.cur_step
        if not self.main:
            if step % cfg.log_every == 0 or step == cfg.steps:
                self.log_sums, self.log_count = dict.fromkeys(LOGGED, 0.0), 0
            return
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
