"""Hyper-parameter sweeps over distill options: ``mtt-fast sweep GRID.yaml --out DIR``.

A grid file is YAML::

    base:                 # options every point shares (distill's option names, - or _)
      buffer: runs/crc-buffer
      method: glad
      generator: runs/crc-gan
    grid:                 # the cartesian product of these lists
      lr_img: [1000, 10000]
      syn_steps: [20, 50]
    points:               # and/or an explicit list of points
      - {ipc: 20, lr_w: 1}

Each point runs ``mtt-fast distill`` into ``DIR/<name>`` (name from the point's values), so a
killed sweep resumes: finished points are skipped, an unfinished one resumes. ``DIR/summary.json``
and ``summary.md`` list every point sorted by its best VALIDATION score.

Presets (``--preset crc|pg``) are the paper's best settings (Tables 4 and 5). The paper leaves
open, and we chose: the generator (GLaD used StyleGAN-XL on ImageNet; here a generator trained
by ``mtt-fast gan train`` on the same data), the latent space and layer (W+ from the style
vectors only: ``space wp``, ``layer -1``), whether ``lr_g`` means the generator is learned
(yes: ``learn_g``), the "batch size 256" (taken as ``batch_syn`` capped at the set's size),
``lr_lr`` and the initial syn_lr (MTT's: 1e-5 and the experts' lr), and the evaluation during
distillation (every 100 iterations, 3 networks, as the paper says; 300 epochs each to keep it
affordable; the final ``eval`` uses the paper's 1000).

Recipe presets (``--preset datm|ftd|pad``) are GRIDS: one point per published ipc (1 and 10), each
with that ipc's published CIFAR-10 ConvNet settings (the authors' config files):

* ``datm`` (Guo et al. 2024): soft labels (``lr_y`` 5 at ipc 1, 2 at ipc 10), skip above loss 1.1 /
  1.0, N 80, M 2, ``lr_img`` 100, ``lr_lr`` 1e-7 / 1e-5, ``batch_syn`` 100 at ipc 10 (all at ipc 1);
  start epochs: T+ 4 at ipc 1, the schedule 10:20:1000 at ipc 10; 10000 iterations.
* ``ftd`` (Du et al. 2023): MTT's settings (ipc 1: N 50, T+ 2, ``lr_img`` 1000, ``lr_lr`` 1e-7; ipc 10:
  N 30, T+ 20, ``lr_img`` 1000, ``lr_lr`` 1e-5; M 2; 5000 iterations) plus ``ema_images`` 0.9995.
  FTD's other half, experts trained with GSAM (rho 0.01), is a property of the store: build it with
  ``buffer --sam-rho 0.01``; the preset cannot change the store.
* ``pad`` (Li et al. 2024): DATM's settings plus ``match_layers``: all layers at ipc 1 (PAD's
  ``loss_ratio`` 0), the deepest half at ipc 10 (``loss_ratio`` 0.5: ``deep:0.5``); PAD drops more
  shallow layers as ipc grows. PAD's other half (an easy-to-hard selection of the real data the
  experts train on, ``depth_ratio``) is not implemented.

Not taken from the recipes: ``lr_teacher`` (they set 0.01, the learning rate of their experts; we
keep the default, this store's expert lr) and ZCA whitening. Scaling to the user's setting: a
``base:`` ``ipc`` keeps only the point of the largest published ipc <= it (ipc 1 below 10); a
``base:`` ``iterations`` scales the schedule's ITERS by ``iterations / 10000``; when the store
(``base: buffer``) has fewer epochs than the recipe needs, T+ and the schedule's LO/HI are scaled by
``epochs / 50`` (the published experts trained 50 epochs) and capped so that every start has its
target. Keys the ``base:`` sets win over the preset's; a ``grid:`` / ``points:`` is crossed with the
preset's points.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable
from pathlib import Path

from mtt_fast import distributed
from mtt_fast.distill import DistillConfig
from mtt_fast.errors import UserError
from mtt_fast.experts import TrajectoryStore
from mtt_fast.io import read_json, read_yaml, write_json, write_text
from mtt_fast.rundir import hold
from mtt_fast.stages.common import dsa_dict, resolve_device
from mtt_fast.stages.distill import DistillStage, run_distill

_COMMON = {"method": "glad", "max_start_epoch": 1, "syn_steps": 50, "expert_epochs": 2, "iterations": 3000,
           "eval_it": 100, "eval_repeats": 3, "eval_epochs": 300, "batch_syn": 256, "space": "wp", "layer": -1,
           "learn_g": True, "lr_w": 1.0, "ipc": 20}
PRESETS: dict[str, dict] = {
    # Table 4 (crc, AUC 74.0): ipc 20, T+ 1, N 50, M 2, lr_img 1e4, lr_w 1, lr_g 0.1
    "crc": {**_COMMON, "lr_img": 1e4, "lr_g": 0.1},
    # Table 5 (pg, ACC 49.6): ipc 20, T+ 1, N 50, M 2, lr_img 1e3, lr_w 1, lr_g 1e-2
    "pg": {**_COMMON, "lr_img": 1e3, "lr_g": 1e-2},
}

_DATM_BASE = {"method": "mtt", "syn_steps": 80, "expert_epochs": 2, "lr_img": 100.0, "iterations": 10000,
              "soft_labels": True, "pix_init": "real"}
_DATM_IPC = {
    1: {"ipc": 1, "lr_y": 5.0, "skip_loss_above": 1.1, "max_start_epoch": 4, "lr_lr": 1e-7},
    10: {"ipc": 10, "lr_y": 2.0, "skip_loss_above": 1.0, "start_epoch_schedule": "10:20:1000", "lr_lr": 1e-5,
         "batch_syn": 100},
}
#: recipe presets: a base and one point per published ipc (see the module docstring)
RECIPES: dict[str, dict] = {
    "datm": {"base": _DATM_BASE, "by_ipc": _DATM_IPC},
    "ftd": {"base": {"method": "mtt", "expert_epochs": 2, "lr_img": 1000.0, "iterations": 5000, "ema_images": 0.9995},
            "by_ipc": {1: {"ipc": 1, "syn_steps": 50, "max_start_epoch": 2, "lr_lr": 1e-7},
                       10: {"ipc": 10, "syn_steps": 30, "max_start_epoch": 20, "lr_lr": 1e-5}}},
    "pad": {"base": _DATM_BASE, "by_ipc": {1: {**_DATM_IPC[1], "match_layers": "all"},
                                           10: {**_DATM_IPC[10], "match_layers": "deep:0.5"}}},
}
#: the epochs the published experts trained for (the scale of their start epochs)
RECIPE_EXPERT_EPOCHS = 50
#: every preset name (``--preset``)
PRESET_NAMES = [*PRESETS, *RECIPES]


def recipe_points(name: str, user_base: dict, store_epochs: int | None) -> list[dict]:
    """The preset ``name``'s points, adapted to the user's ``base:`` and the store (module docstring)."""
    by_ipc = RECIPES[name]["by_ipc"]
    if "ipc" in user_base:
        ipc = int(user_base["ipc"])
        ipcs = [max([k for k in by_ipc if k <= ipc], default=min(by_ipc))]
    else:
        ipcs = sorted(by_ipc)
    base = {**RECIPES[name]["base"], **user_base}
    points = []
    for k in ipcs:
        p = {key: v for key, v in by_ipc[k].items() if key not in user_base}
        merged = {**base, **p}
        sched = p.get("start_epoch_schedule")
        epochs = store_epochs
        m = int(merged.get("expert_epochs", 2))
        if sched:
            lo, hi, iters = (int(v) for v in sched.split(":"))
            if "iterations" in user_base:
                iters = max(1, math.ceil(iters * int(user_base["iterations"]) / RECIPES[name]["base"]["iterations"]))
            if epochs is not None and hi - 1 + m > epochs:
                hi, lo = _scaled(hi, epochs, m), min(_scaled(lo, epochs, m), _scaled(hi, epochs, m))
            p["start_epoch_schedule"] = f"{lo}:{hi}:{iters}"
        if "max_start_epoch" in p and epochs is not None and p["max_start_epoch"] - 1 + m > epochs:
            p["max_start_epoch"] = _scaled(p["max_start_epoch"], epochs, m)
        points.append(p)
    return points


def _scaled(t: int, epochs: int, m: int) -> int:
    """A published start epoch bound ``t`` scaled to a store of ``epochs`` epochs, capped to fit ``m``."""
    return max(1, min(round(t * epochs / RECIPE_EXPERT_EPOCHS), epochs - m + 1))


def _key(k) -> str:
    return str(k).strip().replace("-", "_")


def grid_names() -> dict[str, str]:
    """Every accepted key of a grid file -> the name it stands for: distill's settings
    (``DistillConfig.flat``), ``buffer`` (``buffer_dir`` in older grid files), ``data_root``,
    and the CLI's ``dsa_strategy`` / ``dsa_mode``."""
    names = {k: k for k in DistillConfig.flat_names() if k != "dsa"}
    names.update({"buffer": "buffer", "buffer_dir": "buffer", "data_root": "data_root",
                  "dsa_strategy": "dsa_strategy", "dsa_mode": "dsa_mode"})
    return names


def load_grid(path: str | Path, preset: str | None = None) -> tuple[dict, list[dict]]:
    """Read a grid file; returns ``(base, points)`` keyed by :func:`grid_names`' names.

    Raises:
        UserError: unreadable file, unknown option, empty or malformed grid.
    """
    spec = read_yaml(path, what="sweep grid")
    if not isinstance(spec, dict) or not set(spec) <= {"base", "grid", "points"}:
        raise UserError(f"{path}: a sweep grid is a mapping with base:, grid: and/or points:")
    if preset is not None and preset not in PRESET_NAMES:
        raise UserError(f"--preset {preset}: choose one of {', '.join(PRESET_NAMES)}")
    known = grid_names()

    def name(k) -> str:
        k = _key(k)
        if k in ("out", "overwrite", "config"):
            raise UserError(f"{path}: {k} is set by the sweep itself")
        if k not in known:
            raise UserError(f"{path}: unknown distill option {k!r}")
        return known[k]

    user_base = {name(k): v for k, v in (spec.get("base") or {}).items()}
    recipe = RECIPES.get(preset or "")
    base = {**(PRESETS.get(preset, {}) if preset else {}), **(recipe["base"] if recipe else {}), **user_base}
    grid = {name(k): v for k, v in (spec.get("grid") or {}).items()}
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise UserError(f"{path}: grid: {k} must be a non-empty list of values")
    points = [dict(zip(grid, combo)) for combo in itertools.product(*grid.values())] if grid else []
    for p in spec.get("points") or []:
        if not isinstance(p, dict):
            raise UserError(f"{path}: every entry of points: must be a mapping of option: value")
        points.append({name(k): v for k, v in p.items()})
    if recipe:
        rp = recipe_points(preset, user_base, _store_epochs(base.get("buffer")))
        points = [{**r, **p} for r in rp for p in (points or [{}])]
    return base, points or [{}]


def _store_epochs(buffer) -> int | None:
    """The epochs of the store at ``buffer`` (None when there is none to read: the run reports it)."""
    if not buffer:
        return None
    try:
        return TrajectoryStore.open(str(buffer)).epochs
    except UserError:
        return None


def point_name(point: dict) -> str:
    """A directory name from the point's values, e.g. ``ipc-10_lr_img-1000``."""
    if not point:
        return "base"
    parts = [f"{k}-{v:g}" if isinstance(v, float) else f"{k}-{v}" for k, v in point.items()]
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", "_".join(parts))[:200]


def summarize(out: Path, base: dict, points: list[dict], statuses: dict[str, str]) -> dict:
    """Collect each point's best validation score; write ``summary.json`` and ``summary.md``."""
    rows, metric = [], None
    for p in points:
        run = out / point_name(p)
        row = {"point": p, "run": str(run), "best_val": None, "best_iteration": None,
               "status": statuses.get(point_name(p), "not run")}
        if (run / "summary.json").is_file():
            s = read_json(run / "summary.json", what="run summary")
            key = next((k for k in s if k.startswith("best_val_")), None)
            if key:
                metric = key[len("best_val_"):]
                row["best_val"], row["best_iteration"] = s[key], s.get("best_iteration")
        rows.append(row)
    rows.sort(key=lambda r: -r["best_val"] if isinstance(r["best_val"], (int, float)) and math.isfinite(r["best_val"]) else math.inf)
    keys = list(dict.fromkeys(k for p in points for k in p))
    summary = {"metric": metric or "accuracy", "keys": keys, "base": base, "rows": rows}
    write_json(out / "summary.json", summary)
    lines = [f"| {' | '.join(keys)} | best val {summary['metric']} | at iteration | status |",
             "|---" * (len(keys) + 3) + "|"]
    for r in rows:
        v = "-" if r["best_val"] is None else f"{r['best_val']:.2f}"
        it = "-" if r["best_iteration"] is None else str(r["best_iteration"])
        lines.append(f"| {' | '.join(str(r['point'].get(k, '')) for k in keys)} | {v} | {it} | {r['status']} |")
    write_text(out / "summary.md", "\n".join(lines) + "\n")
    return summary


def point_stage(values: dict) -> DistillStage:
    """A grid point's merged values (``base`` then the point) -> the distill stage to run."""
    v = dict(values)
    buffer, data_root = v.pop("buffer", None), v.pop("data_root", None)
    strategy, mode = v.pop("dsa_strategy", None), v.pop("dsa_mode", None)
    if strategy is not None or mode is not None:
        v["dsa"] = dsa_dict(strategy, mode)
    return DistillStage(buffer=str(buffer), distill=DistillConfig.from_flat(v), data_root=data_root)


def run_sweep(grid: str | Path, out: str | Path, *, preset: str | None = None, device="auto", progress: bool = True,
              log: Callable[[str], None] = print) -> dict:
    """Run ``distill`` once per point of ``grid`` into ``out/<point name>`` (resumable); rank the
    points by validation score in ``summary.json`` / ``summary.md``.

    Raises:
        UserError: when some point did not finish (after every point was tried).
    """
    base, points = load_grid(grid, preset)
    out = Path(out)
    if "buffer" not in base and not all("buffer" in p for p in points):
        raise UserError(f"{grid}: set buffer (the trajectory store) under base:")
    stages = {point_name(p): point_stage({**base, **p}) for p in points}  # every point parses before any runs
    device = resolve_device(device)  # under torchrun: joins the process group
    world, me = distributed.world_size(), distributed.rank()
    owned = hold(out) if distributed.is_main() else None  # rank 0 owns the sweep folder
    distributed.barrier()
    try:
        statuses = {}
        # under torchrun the points are spread over the ranks; each runs its points as one process
        for i, (name, stage) in enumerate(stages.items()):
            if i % world != me:
                continue
            log(f"[{i + 1}/{len(points)}] {name}" + (f" (rank {me})" if world > 1 else ""))
            try:
                with distributed.solo():
                    run_distill(stage, out / name, device=device, progress=progress and me == 0,
                                log=log if me == 0 else (lambda m: None))
                statuses[name] = "complete" if (out / name / "COMPLETE").exists() else "incomplete"
            except UserError as e:  # one diverging point must not end the sweep
                statuses[name] = f"failed: {e}"
                log(f"  failed: {e}")
        for part in distributed.all_gather_object(statuses):
            statuses.update(part)
        if owned is None:
            return distributed.broadcast_object(None)
        summary = summarize(out, base, points, statuses)
        log((out / "summary.md").read_text())
        distributed.broadcast_object(summary)
        if all(r["status"] == "complete" for r in summary["rows"]):
            owned.complete()
        else:
            raise UserError(f"{sum(r['status'] != 'complete' for r in summary['rows'])} of {len(points)} points did "
                            f"not finish; see {out / 'summary.md'} (rerun to resume)")
    finally:
        if owned is not None:
            owned.close(failed=False)
    return summary
