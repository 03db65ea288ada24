"""Train networks from scratch on a synthetic set and test them on real data.

The paper's protocol (section 4): SGD with momentum 0.9 and weight decay 5e-4, a linear
learning-rate warm-up over the first half of the epochs then a cosine decay over the second
half (paper: 500 + 500 epochs), DSA on every batch, and the test done with an exponential
moving average (EMA) of the weights. The starting learning rate is the synset's learned
``syn_lr`` when it has one (as MTT and GLaD evaluate), else ``default_lr``.

A synset with soft labels (``[n, K]`` logits, DATM's learned labels or an expert's logits) is
trained on with soft cross-entropy against ``softmax(soft_labels)`` (computed once, float32);
without them (``soft_labels=None``) the networks train on the hard classes exactly as before.

Each trained network is independent (seeded on its own), so an evaluation killed part-way can
resume from the networks it finished: :class:`SavedNetworks` keeps each one's metrics as it
finishes and :func:`run_cells` takes them back instead of training again (the same numbers).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mtt_fast.augment import DSAConfig
from mtt_fast.errors import UserError
from mtt_fast.evaluate.metrics import compute_metrics, predict_proba
from mtt_fast.fit import fit_classifier
from mtt_fast.io import read_json, write_json
from mtt_fast.models import seeded_network


@dataclass
class EvalConfig:
    """Settings of the train-from-scratch evaluation."""

    epochs: int = 1000
    warmup_fraction: float = 0.5
    lr: float | None = None
    default_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    ema_decay: float | None = None
    dsa: dict = field(default_factory=lambda: asdict(DSAConfig()))
    dsa_impl: str = "auto"
    width: int = 128
    depth: int = 3


def lr_at(step: int, total: int, base: float, warmup_fraction: float) -> float:
    """Linear warm-up to ``base`` over ``warmup_fraction`` of the steps, then cosine to 0."""
    warm = round(total * warmup_fraction)
    if step < warm:
        return base * (step + 1) / warm
    rest = max(1, total - warm)
    return base * 0.5 * (1.0 + math.cos(math.pi * (step - warm) / rest))


def auto_ema_decay(total_steps: int) -> float:
    """An EMA that averages roughly the last 10% of training (0.9 ... 0.999)."""
    return min(0.999, max(0.9, 1.0 - 10.0 / max(total_steps, 1)))


def train_on_synset(
    arch: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    channels: int,
    num_classes: int,
    res: int,
    lr: float,
    cfg: EvalConfig,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
    soft_labels: torch.Tensor | None = None,
) -> torch.nn.Module:
    """Train a fresh ``arch`` on ``(images, labels)``; return its EMA model.

    Args:
        images: ``[n, C, H, W]`` normalized synthetic images.
        labels: ``[n]`` class indices.
        lr: the starting learning rate.
        seed: seeds the initialization, the batch order and the augmentation.
        soft_labels: ``[n, num_classes]`` label logits: train with soft cross-entropy against
            ``softmax(soft_labels)`` instead of ``labels`` (None: the hard labels).
    """
    net = seeded_network(arch, channels, num_classes, res, width=cfg.width, depth=cfg.depth, seed=seed).to(device)
    gen = torch.Generator().manual_seed(seed)
    dsa = DSAConfig.from_dict(cfg.dsa)
    x_all, y_all = images.to(device), labels.to(device)
    if soft_labels is not None:
        y_all = soft_targets(soft_labels, len(y_all), num_classes).to(device)
    n = len(y_all)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    decay = cfg.ema_decay if cfg.ema_decay is not None else auto_ema_decay(total)
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)

    def batches(epoch: int):
        perm = torch.randperm(n, generator=gen).to(device)
        return ((x_all[b], y_all[b]) for b in perm.split(cfg.batch_size))

    fit_classifier(net, batches, opt, epochs=cfg.epochs, dsa=dsa, dsa_impl=cfg.dsa_impl, generator=gen,
                   lr_schedule=lambda step: lr_at(step, total, lr, cfg.warmup_fraction), ema=ema,
                   diverged=lambda loss: (f"evaluation training of {arch} diverged (loss {loss}); "
                                          f"lower --lr (now {lr:g})"),
                   progress=progress, desc=f"train {arch}")
    return ema.module


def soft_targets(soft_labels: torch.Tensor, n: int, num_classes: int) -> torch.Tensor:
    """``softmax(soft_labels)`` over classes, float32 ``[n, num_classes]``: the targets of soft cross-entropy.

    Raises:
        UserError: the logits are not ``[n, num_classes]`` or not finite.
    """
    if soft_labels.dim() != 2 or tuple(soft_labels.shape) != (n, num_classes):
        raise UserError(f"soft labels of shape {tuple(soft_labels.shape)} do not fit {n} images of {num_classes} classes")
    if not torch.isfinite(soft_labels).all():
        raise UserError("soft labels hold NaN or infinite logits")
    return torch.softmax(soft_labels.detach().float(), dim=1)


def evaluate_arch(
    arch: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    split,
    *,
    lr: float,
    cfg: EvalConfig,
    repeats: int,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
    extra: dict | None = None,
    soft_labels: torch.Tensor | None = None,
) -> dict:
    """Train ``repeats`` networks of one architecture and test each on ``split``.

    ``extra`` (``{name: split}``) scores the same networks on more splits too. ``soft_labels``
    (``[n, K]`` logits) makes every network train with soft cross-entropy against
    ``softmax(soft_labels)`` (see :func:`train_on_synset`); None trains on ``labels``, with the
    same bits as before the argument existed. Under torchrun the repeats are spread over the
    ranks (:func:`evaluate_cells`) and every rank returns the whole result.

    Returns:
        ``{"runs": [metrics...], "mean": {...}, "std": {...}}`` (see ``compute_metrics``), plus
        ``"extra": {name: {"mean": ..., "std": ...}}`` when ``extra`` is given.
    """
    cells = [(arch, lr, r) for r in range(repeats)]
    return evaluate_cells(cells, images, labels, split, cfg=cfg, seed=seed, device=device, progress=progress,
                          extra=extra, soft_labels=soft_labels)[arch]


def evaluate_cell(arch: str, lr: float, repeat: int, images: torch.Tensor, labels: torch.Tensor, split, *,
                  cfg: EvalConfig, seed: int, device: torch.device | str = "cpu", progress: bool = False,
                  extra: dict | None = None, soft_labels: torch.Tensor | None = None) -> tuple[dict, dict]:
    """One trained network (``repeat`` of ``arch``, seeded ``seed + 7919 * repeat``): its metrics on
    ``split`` and on each ``extra`` split."""
    model = train_on_synset(
        arch, images, labels, channels=images.shape[1], num_classes=len(split.classes),
        res=images.shape[-1], lr=lr, cfg=cfg, seed=seed + 7919 * repeat, device=device, progress=progress,
        soft_labels=soft_labels,
    )
    probs = predict_proba(model, split, device)
    if not torch.isfinite(probs).all():
        raise UserError(f"evaluation training of {arch} diverged (its predictions are NaN or infinite); "
                        f"lower --lr (now {lr:g})")
    more = {name: compute_metrics(predict_proba(model, other, device), other.labels, len(other.classes))
            for name, other in (extra or {}).items()}
    return compute_metrics(probs, split.labels, len(split.classes)), more


class SavedNetworks:
    """The finished networks of one evaluation run: each one's metrics in ``folder`` as a small
    JSON file (written atomically) named by its purpose, architecture, rate and repeat.

    Valid only inside one run directory, whose settings :func:`mtt_fast.rundir.open_run` has
    checked: the file name does not repeat them. ``on_save`` is called after each write (the
    run has something to resume from).
    """

    def __init__(self, folder: str | Path, on_save: Callable[[], None] | None = None):
        self.folder, self.on_save = Path(folder), on_save

    def _file(self, tag: str, arch: str, lr: float, repeat: int) -> Path:
        return self.folder / f"{tag}-{arch}-lr{float(lr)!r}-r{repeat}.json"

    def get(self, tag: str, arch: str, lr: float, repeat: int) -> tuple[dict, dict] | None:
        """The saved ``(metrics, extra metrics)`` of that network, or None."""
        f = self._file(tag, arch, lr, repeat)
        if not f.is_file():
            return None
        saved = read_json(f, what="saved evaluation network")
        if not (isinstance(saved, dict) and isinstance(saved.get("metrics"), dict)
                and isinstance(saved.get("extra"), dict)):
            raise UserError(f"saved evaluation network {f} is damaged (no metrics): delete it to train that network again")
        return saved["metrics"], saved["extra"]

    def put(self, tag: str, arch: str, lr: float, repeat: int, result: tuple[dict, dict]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json(self._file(tag, arch, lr, repeat), {"arch": arch, "lr": float(lr), "repeat": repeat,
                                                       "metrics": result[0], "extra": result[1]})
        if self.on_save is not None:
            self.on_save()


def run_cells(cells: list[tuple[str, float, int]], images: torch.Tensor, labels: torch.Tensor, split, *,
              cfg: EvalConfig, seed: int, device: torch.device | str = "cpu", progress: bool = False,
              extra: dict | None = None, soft_labels: torch.Tensor | None = None,
              saved: SavedNetworks | None = None, tag: str = "report") -> list[tuple[dict, dict]]:
    """:func:`evaluate_cell` of every ``(arch, lr, repeat)`` cell, in order: ``(metrics on split,
    {name: metrics on extra[name]})`` per cell.

    Cells are independent (each seeded on its own), so the result is the same numbers whoever
    trains them. ``saved``: cells already saved under ``tag`` are taken from it, each new one is
    saved as it finishes. Under torchrun only the main rank has ``saved`` (it owns the run
    directory; the ranks need not share a disk): it tells the others which cells are done, and
    the rest are trained in rounds of one cell per rank, each round gathered on every rank and
    saved by the main rank, so a killed run keeps every round it finished.
    """
    from mtt_fast import distributed

    def train(i: int) -> tuple[dict, dict]:
        a, lr, r = cells[i]
        return evaluate_cell(a, lr, r, images, labels, split, cfg=cfg, seed=seed, device=device,
                             progress=progress, extra=extra, soft_labels=soft_labels)

    have = {}
    if saved is not None:
        for i, (a, lr, r) in enumerate(cells):
            got = saved.get(tag, a, lr, r)
            if got is not None:
                have[i] = got
    done: dict[int, tuple[dict, dict]] = distributed.broadcast_object(have)  # the main rank's
    todo = [i for i in range(len(cells)) if i not in done]
    world, rank = distributed.world_size(), distributed.rank()
    for start in range(0, len(todo), world):
        batch = todo[start:start + world]
        mine = {batch[rank]: train(batch[rank])} if rank < len(batch) else {}
        for part in distributed.all_gather_object(mine):
            for i, res in part.items():
                done[i] = res
                if saved is not None:
                    saved.put(tag, *cells[i], res)
    return [done[i] for i in range(len(cells))]


def evaluate_cells(cells: list[tuple[str, float, int]], images: torch.Tensor, labels: torch.Tensor, split, *,
                   cfg: EvalConfig, seed: int, device: torch.device | str = "cpu", progress: bool = False,
                   extra: dict | None = None, soft_labels: torch.Tensor | None = None) -> dict[str, dict]:
    """Evaluate ``(arch, lr, repeat)`` cells (:func:`run_cells`); returns :func:`evaluate_arch`'s
    result per architecture."""
    done = run_cells(cells, images, labels, split, cfg=cfg, seed=seed, device=device, progress=progress,
                     extra=extra, soft_labels=soft_labels)
    out: dict[str, dict] = {}
    for arch in dict.fromkeys(a for a, _, _ in cells):
        idx = [i for i, c in enumerate(cells) if c[0] == arch]
        runs = [done[i][0] for i in idx]
        res = {"runs": runs, **summarize(runs)}
        if extra:
            res["extra"] = {name: summarize([done[i][1][name] for i in idx]) for name in extra}
        out[arch] = res
    return out


def summarize(runs: list[dict]) -> dict:
    """Mean and (sample) standard deviation of the scalar metrics over runs."""
    keys = [k for k, v in runs[0].items() if isinstance(v, float)]
    mean = {k: statistics.fmean(r[k] for r in runs) for k in keys}
    std = {k: (statistics.stdev([r[k] for r in runs]) if len(runs) > 1 else 0.0) for k in keys}
    k = len(runs[0]["per_class_recall"])
    mean["per_class_recall"] = [statistics.fmean(r["per_class_recall"][c] for r in runs) for c in range(k)]
    return {"mean": mean, "std": std}
