"""Expert training: train K networks on the real data and record their trajectories.

As the MTT reference's ``buffer.py``: SGD (lr 0.01, no momentum, no weight decay), batch 256,
DSA on every batch, a snapshot of all parameters at initialization and after every epoch.
``sam_rho > 0`` trains sharpness-aware experts as FTD does (Du et al. 2023: flatter expert
trajectories; FTD's script uses adaptive GSAM with rho 0.01 and alpha 0.3): see :mod:`mtt_fast.fit`.
Snapshots are copies (``FlatParams.flatten`` concatenates into a new tensor), never views of
the live parameters the optimizer updates in place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from mtt_fast.augment import DSAConfig
from mtt_fast.errors import UserError
from mtt_fast.evaluate.metrics import compute_metrics, predict_proba
from mtt_fast import distributed
from mtt_fast.experts.store import STORE_FORMAT, STORE_VERSION, list_finished, shard_record, write_shard
from mtt_fast.fit import fit_classifier
from mtt_fast.io import read_json
from mtt_fast.models import FlatParams, get_network, seeded_network
from mtt_fast.runtime import differences, runtime

__all__ = ["ExpertConfig", "limit_per_class", "seeded_network", "train_experts"]  # seeded_network: moved to models


@dataclass
class ExpertConfig:
    """Settings of expert training (the ``buffer`` command)."""

    arch: str = "convnet"
    width: int = 128
    depth: int = 3
    num_experts: int = 5
    epochs: int = 50
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 256
    dsa: dict = field(default_factory=lambda: asdict(DSAConfig()))
    dsa_impl: str = "auto"
    max_train_per_class: int | None = None
    seed: int = 0
    #: SAM ascent radius of every expert step (0: plain SGD, the MTT reference's experts).
    sam_rho: float = 0.0
    #: GSAM's surrogate-gap weight (0: plain SAM); needs ``sam_rho > 0``.
    gsam_alpha: float = 0.0
    #: ASAM's per-weight ascent rho * w^2 g / ||w g|| (FTD's buffer script's default); needs ``sam_rho > 0``.
    sam_adaptive: bool = False


def limit_per_class(split, n: int | None, generator: torch.Generator):
    """A class-stratified random subset of at most ``n`` images per class (None: all)."""
    if n is None:
        return split
    keep = []
    for c in range(len(split.classes)):
        idx = split.class_indices(c)
        keep.append(idx[torch.randperm(len(idx), generator=generator)[:n]])
    return split.subset(torch.sort(torch.cat(keep)).values)


def train_experts(
    bundle,
    out: str | Path,
    cfg: ExpertConfig,
    *,
    device: torch.device | str = "cpu",
    transform=None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Train ``cfg.num_experts`` experts into the store at ``out`` (resuming a partial one).

    Args:
        bundle: the dataset (``mtt_fast.data.DatasetBundle``).
        out: store directory (its ``config.yaml`` is written by the caller).
        cfg: training settings.
        device: where to train.
        transform: expert-training image augmentation applied to [0,1] batches before
            normalization (``ExpertTransform``), or None.
        progress: show progress bars.
        log: where one-line progress messages go.

    Returns:
        The store's ``meta.json`` content.
    """
    out = Path(out)
    dsa = DSAConfig.from_dict(cfg.dsa)
    train = limit_per_class(bundle.split("train"), cfg.max_train_per_class, torch.Generator().manual_seed(cfg.seed))
    val = bundle.split("val")
    probe = get_network(cfg.arch, bundle.channels, bundle.num_classes, bundle.res, width=cfg.width, depth=cfg.depth)
    layout = FlatParams.of(probe)
    meta_path = out / "meta.json"
    if meta_path.is_file():
        meta = read_json(meta_path, what="trajectory store metadata")
        if meta.get("params") != layout.to_json():
            raise UserError(f"--out {out}: existing store has another parameter layout; choose another --out")
    else:
        meta = {
            "format": STORE_FORMAT,
            "version": STORE_VERSION,
            "dataset": bundle.meta(),
            "arch": cfg.arch,
            "width": cfg.width,
            "depth": cfg.depth,
            "res": bundle.res,
            "channels": bundle.channels,
            "classes": list(bundle.classes),
            "normalization": {"mean": list(bundle.mean), "std": list(bundle.std)},
            "params": layout.to_json(),
            "num_params": layout.size,
            "training": {**asdict(cfg), "train_images": len(train)},
            "runtime": runtime(device),
            "experts": [],
        }
    records = {k: e for k, e in enumerate(meta["experts"])}
    for k in range(len(records), cfg.num_experts):  # shards a killed run finished but had not listed yet
        entry = shard_record(out, k, cfg.epochs, layout.size)
        if entry is not None:
            records[k] = entry
    if records:
        log(f"resuming: {len(records)} of {cfg.num_experts} experts already in {out}")
        changed = differences(meta.get("runtime"), device)
        if changed:
            log(f"warning: the experts in {out} were trained with another runtime ({changed}); the new ones "
                f"will not be bit-identical to an uninterrupted run's")
    todo = [k for k in range(cfg.num_experts) if k not in records]
    world, me = distributed.world_size(), distributed.rank()
    if world > 1:
        log(f"training {len(todo)} experts on {world} ranks (expert k on rank k mod {world})")
    # rounds: in round j rank r trains todo[j * world + r]; then rank 0 lists the round's experts
    for j in range(0, len(todo), world):
        mine = todo[j + me] if j + me < len(todo) else None
        entry = None
        if mine is not None:
            k = mine
            seed = cfg.seed * 100003 + k
            net, snaps, losses = _train_expert(k, seed, bundle, train, cfg, dsa, layout, device=device,
                                               transform=transform, progress=progress)
            m = compute_metrics(predict_proba(net, val, device), val.labels, bundle.num_classes)
            record = {"seed": seed, "train_loss": losses, "val_accuracy": m["accuracy"], "val_auc": m["auc"]}
            entry = write_shard(out, k, torch.stack(snaps), record)
        for k, e in distributed.all_gather_object((mine, entry)):
            if k is not None:
                records[k] = e
        list_finished(out, meta, records, write=distributed.is_main())
        for k in todo[j:j + world]:
            e = records[k]
            log(f"expert {k + 1}/{cfg.num_experts}: val accuracy {e['val_accuracy']:.2f}%  "
                f"(train loss {e['train_loss'][-1]:.3f})")
    if not todo:
        list_finished(out, meta, records, write=distributed.is_main())
    return meta


def _train_expert(k: int, seed: int, bundle, train, cfg: ExpertConfig, dsa: DSAConfig, layout: FlatParams, *, device,
                  transform, progress: bool) -> tuple[torch.nn.Module, list[torch.Tensor], list[float]]:
    """Expert ``k``: ``(network, [flat parameters at init and after every epoch], epoch losses)``."""
    gen = torch.Generator().manual_seed(seed)
    net = seeded_network(cfg.arch, bundle.channels, bundle.num_classes, bundle.res,
                         width=cfg.width, depth=cfg.depth, seed=seed).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    snaps = [layout.flatten(net).cpu()]
    losses = fit_classifier(
        net,
        lambda epoch: train.batches(cfg.batch_size, generator=gen, shuffle=True, device=device, transform=transform),
        opt, epochs=cfg.epochs, dsa=dsa, dsa_impl=cfg.dsa_impl, generator=gen,
        on_epoch=lambda epoch, loss: snaps.append(layout.flatten(net).cpu()),
        diverged=lambda loss: f"expert {k} training loss became {loss} (lower --lr, now {cfg.lr})",
        progress=progress, desc=f"expert {k + 1}/{cfg.num_experts}", sam_rho=cfg.sam_rho, gsam_alpha=cfg.gsam_alpha,
        sam_adaptive=cfg.sam_adaptive)
    return net, snaps, losses
