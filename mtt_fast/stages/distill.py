"""``mtt-fast distill``: a synthetic set from a trajectory store, by any method."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from mtt_fast.distill import DistillConfig, Distiller, method_class
from mtt_fast.distill.options import StartSchedule, parse_bytes
from mtt_fast.errors import UserError
from mtt_fast.experts import TrajectoryStore
from mtt_fast.rundir import finished, open_run
from mtt_fast.stages.common import at_least_one, bundle_from_meta, positive, quiet_unless_main, resolve_device


@dataclass
class DistillStage:
    """The distill command: the store to read, the run's settings, and where the data lives now."""

    buffer: str
    distill: DistillConfig = field(default_factory=DistillConfig)
    data_root: str | None = None


def generator_spec(spec: str) -> str:
    """A path becomes absolute (the run's config must not depend on the working directory);
    ``package.module:factory`` stays as it is."""
    p = Path(spec)
    if p.exists() or ":" not in spec:
        return str(p.resolve())
    return spec


def validate(cfg: DistillConfig) -> DistillConfig:
    """Checks that need no file; returns the config with the method's defaults filled in."""
    ev = cfg.evaluation
    at_least_one(ipc=cfg.ipc, syn_steps=cfg.syn_steps, iterations=cfg.iterations, eval_it=ev.eval_it,
                 checkpoint_it=cfg.checkpoint_it, eval_epochs=ev.eval_epochs, eval_repeats=ev.eval_repeats,
                 batch_syn=cfg.batch_syn, g_batch=cfg.glad.g_batch)
    cls = method_class(cfg.method)
    cls.validate(cfg)
    if cfg.method != "glad" and cfg.glad.generator:
        raise UserError(f"--generator is only used by --method glad (got --method {cfg.method})")
    if cfg.glad.generator:
        cfg = replace(cfg, glad=replace(cfg.glad, generator=generator_spec(cfg.glad.generator)))
    cfg = cfg.resolved()
    positive(lr_img=cfg.lr_img, lr_lr=cfg.lr_lr, lr_teacher=cfg.lr_teacher, lr_w=cfg.glad.lr_w, lr_g=cfg.glad.lr_g)
    if not (math.isfinite(cfg.syn_lr_min) and cfg.syn_lr_min >= 0):
        raise UserError(f"--syn-lr-min must be a finite number >= 0 (got {cfg.syn_lr_min})")
    if not 0 <= cfg.momentum < 1:
        raise UserError(f"momentum must be in [0, 1) (got {cfg.momentum})")
    positive(lr_y=cfg.lr_y, skip_loss_above=cfg.trajectory.skip_loss_above)
    if cfg.ema_images is not None and not 0 < cfg.ema_images < 1:
        raise UserError(f"--ema-images must be a decay in (0, 1), e.g. 0.9995 (got {cfg.ema_images})")
    t = cfg.trajectory
    if t.start_epoch_schedule is not None:
        t = replace(t, start_epoch_schedule=str(StartSchedule.parse(t.start_epoch_schedule)))
    t = replace(t, memory_budget=parse_bytes(t.memory_budget))
    if t.memory_budget is not None and t.engine != "auto":
        raise UserError(f"--memory-budget is for --engine auto (got --engine {t.engine})")
    return replace(cfg, trajectory=t)


def start_epoch_bound(cfg: DistillConfig) -> int:
    """The largest T+ the run will use: the schedule's HI, else ``--max-start-epoch``."""
    t = cfg.trajectory
    return StartSchedule.parse(t.start_epoch_schedule).hi if t.start_epoch_schedule else t.max_start_epoch


def run_distill(stage: DistillStage, out: str | Path, *, overwrite: bool = False, device="auto", progress: bool = True,
                log: Callable[[str], None] = print) -> dict:
    """Distill (or resume) into the run directory ``out``; returns its summary.

    Everything is validated (settings, every store shard, the dataset's splits, the method's
    inputs such as the generator) before ``out`` is touched.
    """
    out = Path(out)
    dev = resolve_device(device)
    log, progress = quiet_unless_main(log, progress)
    cfg = validate(stage.distill)
    store = TrajectoryStore.open(stage.buffer)
    if method_class(cfg.method).uses_trajectories:
        t = cfg.trajectory
        if t.start_epoch_schedule and start_epoch_bound(cfg) - 1 + t.expert_epochs > store.epochs:
            raise UserError(f"--start-epoch-schedule {t.start_epoch_schedule} with --expert-epochs {t.expert_epochs} "
                            f"needs {start_epoch_bound(cfg) - 1 + t.expert_epochs} epochs, but the store "
                            f"{store.path} has {store.epochs}")
        store.check_epochs(t.expert_epochs, start_epoch_bound(cfg))
    config = {"command": "distill", "buffer": str(Path(stage.buffer).resolve()), **cfg.flat()}
    defaults = DistillConfig().resolved().flat()
    if finished(out, config, overwrite=overwrite, defaults=defaults):
        log(f"{out} already holds this finished run; nothing to do (pass --overwrite to run again)")
        return {"state": "complete"}
    bundle = bundle_from_meta(store.dataset_meta, stage.data_root, progress)
    distiller = Distiller(store, bundle, cfg, out, device=dev, progress=progress, log=log)
    with open_run(out, config, overwrite=overwrite, defaults=defaults) as run:
        if run.state == "complete":
            log(f"{out} already holds this finished run; nothing to do")
            return {"state": "complete"}
        distiller.on_checkpoint = run.checkpointed
        summary = distiller.run()
        run.complete()
    if "images" in summary:
        log(f"{cfg.method} baseline: {summary['images']} images written to {out / 'synset'}")
    else:
        key = next(k for k in summary if k.startswith("best_val_"))
        log(f"done: best validation {key[len('best_val_'):]} {summary[key]:.2f} at iteration "
            f"{summary['best_iteration']}; synset in {out / 'synset'}")
    return summary
