"""Training the class-conditional generator (``mtt-fast gan train``).

StyleGAN2-style recipe, shrunk for small images and CPUs:

* non-saturating logistic loss; lazy R1 penalty on (augmented) reals every ``r1_interval``
  steps, with the Adam lr / betas corrected for the lazy interval as in StyleGAN2;
* Adam (lr 0.002, betas (0, 0.99)) for G and D;
* an EMA generator ``G_ema`` with a half-life of ``ema_kimg`` thousand images, ramped up
  over the first images (``ema_rampup``), as StyleGAN2-ADA;
* class-balanced real batches (a class uniformly, then an image of it: medical sets are
  imbalanced) and uniformly drawn fake labels;
* DiffAugment: the repo's differentiable augmentation (:mod:`mtt_fast.augment`, default
  translation + cutout + color, all applied) on real AND fake images before D, with
  independent draws for both, from one explicit ``torch.Generator``.

Outputs in ``out``: ``generator.safetensors`` + ``generator.json`` (the EMA generator; see
:func:`save_generator`), a resumable ``checkpoint.safetensors`` (+ ``checkpoint.json`` for
people; the truth is the safetensors metadata), ``samples_<step>.png``, ``metrics.jsonl``
and the quality classifier. Only safetensors and JSON: nothing is unpickled.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from mtt_fast.augment import DSAConfig, apply, sample_params
from mtt_fast.errors import UserError
from mtt_fast.generative.interface import from_model_space, to_model_space
from mtt_fast.generative.load import GENERATOR_FORMAT, sha256_file
from mtt_fast.generative.networks import Discriminator, Generator
from mtt_fast.generative.quality import class_consistency, load_or_train_classifier
from mtt_fast.io import append_jsonl, read_jsonl, save_tensors, write_json, write_text

CHECKPOINT_FORMAT = "mtt-fast/gan-checkpoint"
GENERATOR_VERSION = 1

#: DiffAugment's policy (translation, cutout, color) in the repo's DSA vocabulary.
DEFAULT_AUG = "color_crop_cutout"


@dataclass
class GANConfig:
    """Settings of ``gan train`` (defaults suit 16-64 px on a CPU or a small GPU)."""

    steps: int = 2500
    batch_size: int = 32
    z_dim: int = 64
    w_dim: int = 128
    channel_base: int = 512
    channel_max: int = 64
    mapping_layers: int = 2
    lr: float = 0.002
    beta1: float = 0.0
    beta2: float = 0.99
    r1_gamma: float = 0.1
    r1_interval: int = 16
    ema_kimg: float = 10.0
    ema_rampup: float | None = 0.05
    mixing_prob: float = 0.0
    aug: str = DEFAULT_AUG
    aug_mode: str = "M"
    dsa_impl: str = "auto"
    max_train_per_class: int | None = None
    sample_every: int = 500
    checkpoint_every: int = 500
    quality_every: int = 500
    quality_samples: int = 100
    log_every: int = 50
    classifier_store: str | None = None
    classifier_epochs: int = 2
    seed: int = 0

    def validate(self) -> None:
        for name in ("steps", "batch_size", "z_dim", "w_dim", "channel_base", "channel_max", "mapping_layers",
                     "r1_interval", "sample_every", "checkpoint_every", "quality_every", "quality_samples",
                     "log_every"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.batch_size < 2:
            raise UserError(f"--batch-size must be at least 2 (got {self.batch_size})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"--lr must be positive (got {self.lr})")
        if self.r1_gamma < 0 or self.ema_kimg < 0:
            raise UserError("--r1-gamma and --ema-kimg must be >= 0")
        if not 0 <= self.mixing_prob <= 1:
            raise UserError(f"--mixing-prob must be in [0, 1] (got {self.mixing_prob})")
        DSAConfig(strategy=self.aug, mode=self.aug_mode)

    def generator(self, bundle) -> Generator:
        return Generator(bundle.num_classes, bundle.channels, bundle.res, z_dim=self.z_dim, w_dim=self.w_dim,
                         channel_base=self.channel_base, channel_max=self.channel_max,
                         mapping_layers=self.mapping_layers)

    def discriminator(self, bundle) -> Discriminator:
        return Discriminator(bundle.num_classes, bundle.channels, bundle.res, channel_base=self.channel_base,
                             channel_max=self.channel_max)


# ------------------------------------------------------------------------------ EMA, R1
def ema_beta(batch_size: int, cur_nimg: int, ema_kimg: float, rampup: float | None) -> float:
    """Per-step EMA decay for a half-life of ``ema_kimg`` thousand images (StyleGAN2-ADA).

    With ``rampup``, the half-life is at most ``rampup * cur_nimg`` images, so early in
    training the average forgets the random initialization quickly.
    """
    ema_nimg = ema_kimg * 1000.0
    if rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


@torch.no_grad()
def update_ema(G_ema: nn.Module, G: nn.Module, beta: float) -> None:
    """``p_ema <- beta * p_ema + (1 - beta) * p`` for every parameter; buffers are copied."""
    for pe, p in zip(G_ema.parameters(), G.parameters()):
        pe.copy_(p.detach().lerp(pe, beta))
    for be, b in zip(G_ema.buffers(), G.buffers()):
        be.copy_(b)


def r1_penalty(D: nn.Module, real: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits [n], penalty [n])``: D's logits of ``real`` and ``||d D(real) / d real||^2`` per
    sample, with a graph so the penalty can be minimized w.r.t. D's parameters."""
    real = real.detach().requires_grad_(True)
    logits = D(real, labels)
    (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return logits, grad.square().sum(dim=[1, 2, 3])


# ------------------------------------------------------------------------------ state I/O
def _opt_tensors(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{prefix}.{idx}.{k}"] = v if isinstance(v, torch.Tensor) else torch.tensor(v)
    return tensors, json.loads(json.dumps(sd["param_groups"]))


def _opt_load(prefix: str, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list) -> None:
    state: dict[int, dict] = {}
    for name, v in tensors.items():
        if name.startswith(prefix + "."):
            _, idx, k = name.split(".", 2)
            state.setdefault(int(idx), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": groups})


def _module_tensors(prefix: str, m: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in m.state_dict().items()}


def _module_load(prefix: str, m: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    n = len(prefix) + 1
    m.load_state_dict({k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")})


def save_generator(out: str | Path, G: Generator, bundle, *, step: int, extra: dict | None = None) -> dict:
    """Write ``generator.safetensors`` (the weights) and ``generator.json``, atomically.

    ``generator.json``::

        {"format": "mtt-fast/generator", "version": 1,
         "config": G.to_config(),            # Generator.from_config rebuilds the module
         "dataset": bundle.meta(), "normalization": {"mean": [...], "std": [...]},
         "classes": [...], "step": step, "weights": "generator.safetensors",
         "weights_sha256": "...", ...extra}
    """
    out = Path(out)
    save_tensors(out / "generator.safetensors", dict(G.state_dict()))
    doc = {"format": GENERATOR_FORMAT, "version": GENERATOR_VERSION, "config": G.to_config(),
           "dataset": bundle.meta(), "normalization": {"mean": list(bundle.mean), "std": list(bundle.std)},
           "classes": list(bundle.classes), "step": int(step), "weights": "generator.safetensors",
           "weights_sha256": sha256_file(out / "generator.safetensors"), **(extra or {})}
    write_json(out / "generator.json", doc)
    return doc


# ------------------------------------------------------------------------------ sampling
class BalancedSampler:
    """Real batches: a class uniformly at random, then an image of that class uniformly."""

    def __init__(self, split) -> None:
        self.split = split
        order = torch.argsort(split.labels, stable=True)
        counts = torch.bincount(split.labels, minlength=split.num_classes)
        self.present = torch.nonzero(counts > 0).flatten()
        if len(self.present) == 0:
            raise UserError("the training split holds no images")
        self.order, self.counts = order, counts
        self.starts = torch.cumsum(counts, 0) - counts

    def sample(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(positions [n], labels [n])`` in the split."""
        cls = self.present[torch.randint(len(self.present), (n,), generator=gen)]
        off = (torch.rand(n, generator=gen) * self.counts[cls]).long().clamp_max(self.counts[cls] - 1)
        return self.order[self.starts[cls] + off], cls


def _fixed_latents(G: Generator, per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    K = max(G.num_classes, 1)
    z = torch.randn(K * per_class, G.z_dim, generator=gen)
    return z, torch.arange(K).repeat_interleave(per_class)


@torch.no_grad()
def render_labels(G: nn.Module, z: torch.Tensor, labels: torch.Tensor, device, batch_size: int = 250) -> torch.Tensor:
    """Images ``[n, C, R, R]`` (CPU, [-1, 1]) of ``G`` for latents ``z`` and ``labels``."""
    out = []
    for i in range(0, len(labels), batch_size):
        w = G.mapping(z[i:i + batch_size].to(device), labels[i:i + batch_size].to(device))
        out.append(G.render(None, w.unsqueeze(1).repeat(1, G.num_ws, 1), -1).cpu())
    return torch.cat(out)


# ------------------------------------------------------------------------------ training
def train_gan(bundle, out: str | Path, cfg: GANConfig, *, device: torch.device | str = "cpu", progress: bool = True,
              log: Callable[[str], None] = print) -> dict:
    """Train a class-conditional generator on ``bundle``'s training split into ``out``.

    Resumes from ``out/checkpoint.safetensors`` when present (the caller has checked that
    the run directory holds a run with the same settings).

    Args:
        bundle: the dataset (``mtt_fast.data.load_dataset``).
        out: the run directory.
        cfg: the settings.
        device: where to train.
        progress: show a progress bar.
        log: where one-line messages go.

    Returns:
        ``{"step", "quality": {...}, "classifier": {...}, "generator": path}``.

    Raises:
        UserError: a NaN / infinite loss (the last checkpoint is kept), bad settings.
    """
    from mtt_fast.experts.train import limit_per_class

    cfg.validate()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(device)
    dsa = DSAConfig(strategy=cfg.aug, mode=cfg.aug_mode)
    mean, std = bundle.mean, bundle.std
    train = limit_per_class(bundle.split("train"), cfg.max_train_per_class, torch.Generator().manual_seed(cfg.seed))
    sampler = BalancedSampler(train)
    K = bundle.num_classes

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        G = cfg.generator(bundle).to(device)
        D = cfg.discriminator(bundle).to(device)
    G_ema = cfg.generator(bundle).to(device).eval()
    G_ema.load_state_dict(G.state_dict())
    G_ema.requires_grad_(False)
    ratio = cfg.r1_interval / (cfg.r1_interval + 1) if cfg.r1_gamma > 0 else 1.0
    opt_G = torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8)
    opt_D = torch.optim.Adam(D.parameters(), lr=cfg.lr * ratio, betas=(cfg.beta1 ** ratio, cfg.beta2 ** ratio), eps=1e-8)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, cur_nimg = 0, 0

    ckpt = out / "checkpoint.safetensors"
    metrics_path = out / "metrics.jsonl"
    if ckpt.is_file():
        step, cur_nimg = _load_checkpoint(ckpt, G, G_ema, D, opt_G, opt_D, gen)
        # metrics written after the checkpoint belong to steps that will be redone
        kept = [r for r in read_jsonl(metrics_path) if int(r.get("step", 0)) <= step]
        write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        log(f"resuming from {ckpt} at step {step} of {cfg.steps}")
    elif metrics_path.exists():
        metrics_path.unlink()

    classifier, clf_info = load_or_train_classifier(out, bundle, store=cfg.classifier_store,
                                                    epochs=cfg.classifier_epochs,
                                                    max_train_per_class=cfg.max_train_per_class, seed=cfg.seed,
                                                    device=device, progress=progress, log=log)
    log(f"class-consistency classifier ({clf_info['source']}): real validation accuracy "
        f"{clf_info['val_accuracy']:.2f}%")
    sample_z, sample_labels = _fixed_latents(G, 10, cfg.seed + 12345)

    def evaluate_quality() -> dict:
        q = class_consistency(G_ema, classifier, mean=mean, std=std, samples_per_class=cfg.quality_samples,
                              seed=cfg.seed + 54321, device=device)
        q["real_val_accuracy"] = clf_info["val_accuracy"]
        return q

    def write_samples() -> None:
        from mtt_fast.synth import save_grid

        imgs = render_labels(G_ema, sample_z, sample_labels, device)
        save_grid(to_model_space(imgs, mean, std), sample_labels, {"mean": list(mean), "std": list(std)},
                  out / f"samples_{step:06d}.png", num_classes=max(K, 1))

    def write_checkpoint() -> None:
        _save_checkpoint(ckpt, cfg, step, cur_nimg, G, G_ema, D, opt_G, opt_D, gen)
        save_generator(out, G_ema, bundle, step=step, extra={"training": asdict(cfg), "classifier": clf_info,
                                                             "quality": last_quality})

    last_quality: dict | None = None
    for r in read_jsonl(metrics_path):
        if "class_consistency" in r:
            last_quality = {k: r[k] for k in ("class_consistency", "per_class", "real_val_accuracy") if k in r}

    G.train()
    D.train()
    sums = {"loss_G": 0.0, "loss_D": 0.0, "D_real": 0.0, "D_fake": 0.0}
    count, r1_last = 0, float("nan")
    bar = tqdm(total=cfg.steps, initial=step, desc="gan", disable=not progress, dynamic_ncols=True)
    while step < cfg.steps:
        B = cfg.batch_size
        # ---- data and latents (all randomness from `gen`, on the CPU)
        pos, real_labels = sampler.sample(B, gen)
        real = from_model_space(train.get(pos, device=device), mean, std)
        real_labels = real_labels.to(device)
        z = torch.randn(B, G.z_dim, generator=gen).to(device)
        fake_labels = torch.randint(max(K, 1), (B,), generator=gen).to(device)
        mix = torch.rand(B, generator=gen) < cfg.mixing_prob if cfg.mixing_prob > 0 else None
        z2 = torch.randn(B, G.z_dim, generator=gen).to(device) if mix is not None else None
        cut = torch.randint(1, max(G.num_ws, 2), (B,), generator=gen) if mix is not None else None
        p_real = sample_params(dsa, tuple(real.shape), gen) if dsa.enabled else None
        p_fake = sample_params(dsa, tuple(real.shape), gen) if dsa.enabled else None
        do_r1 = cfg.r1_gamma > 0 and step % cfg.r1_interval == 0

        # ---- generator forward (kept for the G step)
        ws = G.mapping(z, fake_labels).unsqueeze(1).repeat(1, G.num_ws, 1)
        if mix is not None:
            ws2 = G.mapping(z2, fake_labels).unsqueeze(1).repeat(1, G.num_ws, 1)
            use2 = (torch.arange(G.num_ws).unsqueeze(0) >= cut.unsqueeze(1)) & mix.unsqueeze(1)
            ws = torch.where(use2.to(device).unsqueeze(-1), ws2, ws)
        fake = G.render(None, ws, -1)
        fake_aug = apply(fake, p_fake, impl=cfg.dsa_impl) if p_fake is not None else fake
        real_aug = apply(real, p_real, impl=cfg.dsa_impl) if p_real is not None else real

        # ---- D step: softplus(D(fake)) + softplus(-D(real)) [+ lazy R1]
        D.requires_grad_(True)
        d_fake = D(fake_aug.detach(), fake_labels)
        if do_r1:
            d_real, pen = r1_penalty(D, real_aug, real_labels)
            r1_last = float(pen.detach().mean())
            r1_term = pen.mean() * (cfg.r1_gamma / 2) * cfg.r1_interval
        else:
            d_real = D(real_aug.detach(), real_labels)
            r1_term = torch.zeros((), device=device)
        loss_D = F.softplus(d_fake).mean() + F.softplus(-d_real).mean()
        opt_D.zero_grad(set_to_none=True)
        (loss_D + r1_term).backward()
        opt_D.step()

        # ---- G step: softplus(-D(G(z)))
        D.requires_grad_(False)
        loss_G = F.softplus(-D(fake_aug, fake_labels)).mean()
        opt_G.zero_grad(set_to_none=True)
        loss_G.backward()
        opt_G.step()

        lg, ld = float(loss_G.detach()), float((loss_D + r1_term).detach())
        if not (math.isfinite(lg) and math.isfinite(ld)):
            kept = f"the last checkpoint ({ckpt}) is kept" if ckpt.is_file() else "no checkpoint was written yet"
            raise UserError(f"GAN training diverged at step {step + 1} (loss_G {lg}, loss_D {ld}); lower --lr "
                            f"(now {cfg.lr}) or raise --r1-gamma (now {cfg.r1_gamma}); {kept}")

        step += 1
        cur_nimg += B
        update_ema(G_ema, G, ema_beta(B, cur_nimg, cfg.ema_kimg, cfg.ema_rampup))
        sums["loss_G"] += lg
        sums["loss_D"] += float(loss_D.detach())
        sums["D_real"] += float(d_real.detach().mean())
        sums["D_fake"] += float(d_fake.detach().mean())
        count += 1
        bar.update(1)

        last = step == cfg.steps
        record = None
        if step % cfg.log_every == 0 or last:
            record = {"step": step, "kimg": cur_nimg / 1000, **{k: v / max(count, 1) for k, v in sums.items()},
                      "r1": r1_last}
            bar.set_postfix(G=f"{record['loss_G']:.3f}", D=f"{record['loss_D']:.3f}", refresh=False)
            sums = dict.fromkeys(sums, 0.0)
            count = 0
        if step % cfg.quality_every == 0 or last:
            last_quality = evaluate_quality()
            record = {**(record or {"step": step, "kimg": cur_nimg / 1000}), **last_quality}
            msg = (f"step {step}: class consistency {last_quality['class_consistency']:.2f}% "
                   f"(classifier on real val: {clf_info['val_accuracy']:.2f}%)")
            if progress:
                bar.write(msg)
            else:
                log(msg)
        if record is not None:
            append_jsonl(metrics_path, record)
        if step % cfg.sample_every == 0 or last:
            write_samples()
        if step % cfg.checkpoint_every == 0 or last:
            write_checkpoint()
    bar.close()

    if last_quality is None or not (out / "generator.safetensors").is_file():
        # a rerun of a run that had already reached its last step before being killed
        last_quality = evaluate_quality()
        write_samples()
        write_checkpoint()
    return {"step": step, "quality": last_quality, "classifier": clf_info, "generator": str(out / "generator.json")}


def _save_checkpoint(path: Path, cfg: GANConfig, step: int, cur_nimg: int, G, G_ema, D, opt_G, opt_D,
                     gen: torch.Generator) -> None:
    tensors = {**_module_tensors("G", G), **_module_tensors("G_ema", G_ema), **_module_tensors("D", D)}
    tg, groups_G = _opt_tensors("opt_G", opt_G)
    td, groups_D = _opt_tensors("opt_D", opt_D)
    tensors.update(tg)
    tensors.update(td)
    tensors["rng"] = gen.get_state()
    meta = {"format": CHECKPOINT_FORMAT, "step": step, "cur_nimg": cur_nimg, "opt_G": groups_G, "opt_D": groups_D,
            "config": asdict(cfg)}
    save_tensors(path, tensors, metadata={"mtt_fast": json.dumps(meta)})
    write_json(path.with_suffix(".json"), {k: v for k, v in meta.items() if k not in ("opt_G", "opt_D")})


def _load_checkpoint(path: Path, G, G_ema, D, opt_G, opt_D, gen: torch.Generator) -> tuple[int, int]:
    from mtt_fast.io import load_tensors

    tensors = load_tensors(path, what="GAN checkpoint")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("mtt_fast", "{}"))
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not an mtt-fast GAN checkpoint")
        _module_load("G", G, tensors)
        _module_load("G_ema", G_ema, tensors)
        _module_load("D", D, tensors)
        _opt_load("opt_G", opt_G, tensors, meta["opt_G"])
        _opt_load("opt_D", opt_D, tensors, meta["opt_D"])
        gen.set_state(tensors["rng"])
        return int(meta["step"]), int(meta["cur_nimg"])
    except (ValueError, KeyError, RuntimeError, json.JSONDecodeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"--out {path.parent}: the checkpoint {path.name} cannot be resumed ({msg}); "
                        "pass --overwrite to start again") from None
