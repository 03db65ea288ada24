"""``mtt-fast buffer``: train experts on the real data and store their trajectories."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mtt_fast.distributed import is_main
from mtt_fast.errors import UserError
from mtt_fast.experts import ExpertConfig, train_experts
from mtt_fast.models import get_network
from mtt_fast.rundir import finished, open_run
from mtt_fast.stages.common import DataOptions, at_least_one, load_bundle, positive, quiet_unless_main, resolve_device


@dataclass
class BufferStage:
    """The buffer command: a dataset, the expert settings, and the paper's jitter.

    ``jitter`` None means: on for the histology datasets (pg, crc), off otherwise.
    """

    data: DataOptions
    experts: ExpertConfig = field(default_factory=ExpertConfig)
    jitter: bool | None = None


def run_buffer(stage: BufferStage, out: str | Path, *, overwrite: bool = False, device="auto", progress: bool = True,
               log: Callable[[str], None] = print) -> dict:
    """Train (or resume) the experts into the store ``out``; returns the store's meta.

    Under torchrun the experts are sharded over the ranks (expert k on rank k mod world size);
    each expert's shard is the bits one process writes (every expert is seeded on its own).
    """
    from mtt_fast.data import ExpertTransform
    from mtt_fast.experts import TrajectoryStore

    cfg, out = stage.experts, Path(out)
    dev = resolve_device(device)
    log, progress = quiet_unless_main(log, progress)
    get_network(cfg.arch, 3, 2, 32)  # unknown --arch fails before any data is read
    at_least_one(num_experts=cfg.num_experts, epochs=cfg.epochs, batch_size=cfg.batch_size, width=cfg.width,
                 depth=cfg.depth, max_train_per_class=cfg.max_train_per_class)
    positive(lr=cfg.lr)
    if cfg.momentum < 0 or cfg.weight_decay < 0:
        raise UserError("--momentum and --weight-decay must be at least 0")
    if not (math.isfinite(cfg.sam_rho) and cfg.sam_rho >= 0):
        raise UserError(f"--sam-rho must be a finite number at least 0 (got {cfg.sam_rho})")
    if not (math.isfinite(cfg.gsam_alpha) and cfg.gsam_alpha >= 0):
        raise UserError(f"--gsam-alpha must be a finite number at least 0 (got {cfg.gsam_alpha})")
    if cfg.gsam_alpha > 0 and cfg.sam_rho == 0:
        raise UserError(f"--gsam-alpha {cfg.gsam_alpha:g} needs --sam-rho above 0 (GSAM is a SAM step)")
    if cfg.sam_adaptive and cfg.sam_rho == 0:
        raise UserError("--sam-adaptive needs --sam-rho above 0 (it scales the SAM ascent)")
    bundle = load_bundle(stage.data, seed=cfg.seed, progress=progress)
    jitter = stage.data.dataset in ("pg", "crc") if stage.jitter is None else stage.jitter
    config = {"command": "buffer", "dataset": bundle.meta(), "jitter": jitter, **asdict(cfg)}
    defaults = asdict(ExpertConfig())
    if finished(out, config, overwrite=overwrite, defaults=defaults):
        log(f"{out} already holds this finished store; nothing to do (pass --overwrite to train again)")
        return TrajectoryStore.open(out).meta
    with open_run(out, config, overwrite=overwrite, defaults=defaults) as run:
        if is_main():
            bundle.write_split(out / "split.json")
        meta = train_experts(bundle, out, cfg, device=dev, transform=ExpertTransform() if jitter else None,
                             progress=progress, log=log)
        run.complete()
    accs = [e["val_accuracy"] for e in meta["experts"]]
    log(f"store {out}: {len(accs)} experts x {cfg.epochs} epochs, {meta['num_params']} parameters; "
        f"val accuracy {sum(accs) / len(accs):.2f}% mean")
    return meta
