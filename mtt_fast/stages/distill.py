"""``mtt-fast distill``: a synthetic set from a trajectory store, by any method."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from mtt_fast.distill import DistillConfig, Distiller, method_class
from mtt_fast.errors import UserError
from mtt_fast.experts import TrajectoryStore
from mtt_fast.rundir import mark_complete, prepare_out
from mtt_fast.stages.common import at_least_one, bundle_from_meta, resolve_device


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
                 checkpoint_it=cfg.checkpoint_it, eval_epochs=ev.eval_epochs, eval_repeats=ev.eval_repeats)
    cls = method_class(cfg.method)
    cls.validate(cfg)
    if cfg.method != "glad" and cfg.glad.generator:
        raise UserError(f"--generator is only used by --method glad (got --method {cfg.method})")
    if cfg.glad.generator:
        cfg = replace(cfg, glad=replace(cfg.glad, generator=generator_spec(cfg.glad.generator)))
    return cfg.resolved()


def run_distill(stage: DistillStage, out: str | Path, *, overwrite: bool = False, device="auto", progress: bool = True,
                log: Callable[[str], None] = print) -> dict:
    """Distill (or resume) into the run directory ``out``; returns its summary."""
    out = Path(out)
    dev = resolve_device(device)
    cfg = validate(stage.distill)
    store = TrajectoryStore.open(stage.buffer)
    if method_class(cfg.method).uses_trajectories:
        store.check_epochs(cfg.trajectory.expert_epochs, cfg.trajectory.max_start_epoch)
    config = {"command": "distill", "buffer": str(Path(stage.buffer).resolve()), **cfg.flat()}
    state = prepare_out(out, config, overwrite=overwrite, defaults=DistillConfig().resolved().flat())
    if state == "complete":
        log(f"{out} already holds this finished run; nothing to do (pass --overwrite to run again)")
        return {"state": "complete"}
    bundle = bundle_from_meta(store.dataset_meta, stage.data_root, progress)
    summary = Distiller(store, bundle, cfg, out, device=dev, progress=progress, log=log).run()
    mark_complete(out)
    if "images" in summary:
        log(f"{cfg.method} baseline: {summary['images']} images written to {out / 'synset'}")
    else:
        key = next(k for k in summary if k.startswith("best_val_"))
        log(f"done: best validation {key[len('best_val_'):]} {summary[key]:.2f} at iteration "
            f"{summary['best_iteration']}; synset in {out / 'synset'}")
    return summary
