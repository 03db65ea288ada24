"""``mtt-fast eval``: networks trained from scratch on a synset, tested on real data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from mtt_fast.distributed import is_main
from mtt_fast.errors import UserError
from mtt_fast.evaluate.protocol import EvalConfig, SavedNetworks
from mtt_fast.evaluate.run import check_lr_grid, evaluate_synset, write_results
from mtt_fast.models import get_network
from mtt_fast.rundir import finished, open_run
from mtt_fast.stages.common import at_least_one, bundle_from_meta, positive, quiet_unless_main, resolve_device
from mtt_fast.synth import Synset


@dataclass
class EvalStage:
    """The eval command. ``evaluation.width`` / ``depth`` are taken from the synset's backbone.

    ``hard_labels``: train on the hard classes even when the synset has soft labels.
    ``lr_grid``: choose each architecture's starting rate among these on the validation split
    (None entries: the default rate; see ``evaluate.run.select_lrs``); None: no selection.
    """

    synset: str
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    archs: list[str] = field(default_factory=lambda: ["convnet"])
    repeats: int = 3
    split: str = "test"
    seed: int = 0
    data_root: str | None = None
    hard_labels: bool = False
    lr_grid: list[float | None] | None = None


def run_eval(stage: EvalStage, out: str | Path, *, overwrite: bool = False, device="auto", progress: bool = True,
             log: Callable[[str], None] = print, label: str | None = None) -> dict:
    """Evaluate (or find already evaluated) the synset; returns the ``results.json`` content."""
    from mtt_fast.io import read_json

    out = Path(out)
    dev = resolve_device(device)
    log, progress = quiet_unless_main(log, progress)
    if not stage.archs:
        raise UserError("--archs: name at least one architecture")
    for a in stage.archs:
        get_network(a, 3, 2, 32)
    at_least_one(repeats=stage.repeats, epochs=stage.evaluation.epochs, batch_size=stage.evaluation.batch_size)
    positive(lr=stage.evaluation.lr)
    if stage.split not in ("test", "val"):
        raise UserError(f"--split {stage.split}: choose test or val")
    check_lr_grid(stage.lr_grid, lr=stage.evaluation.lr, split=stage.split)
    synset = Synset.load(stage.synset)
    m = synset.meta
    cfg = replace(stage.evaluation, width=m.get("width", 128), depth=m.get("depth", 3))
    config = {"command": "eval", "synset": str(Path(stage.synset).resolve()), "archs": list(stage.archs),
              "repeats": stage.repeats, "split": stage.split, "seed": stage.seed, "hard_labels": stage.hard_labels,
              "lr_grid": list(stage.lr_grid) if stage.lr_grid else None, **asdict(cfg)}
    defaults = {**asdict(EvalConfig()), "split": "test", "seed": 0, "hard_labels": False, "lr_grid": None}
    if finished(out, config, overwrite=overwrite, defaults=defaults):
        log(f"{out} already holds these results; nothing to do (pass --overwrite to evaluate again)")
        return read_json(out / "results.json", what="evaluation results")
    bundle = bundle_from_meta(m["dataset"], stage.data_root, progress)
    if list(bundle.classes) != list(m["classes"]) or bundle.res != synset.images.shape[-1] \
            or bundle.channels != synset.images.shape[1]:
        raise UserError(f"--synset {stage.synset} was made for classes {m['classes']} at {synset.images.shape[-1]} px, "
                        f"but the dataset gives {bundle.classes} at {bundle.res} px")
    with open_run(out, config, overwrite=overwrite, defaults=defaults) as run:
        soft = synset.soft_labels is not None and not stage.hard_labels
        log(f"evaluating {m.get('method')} ipc {m.get('ipc')} on {stage.split}: {', '.join(stage.archs)} x "
            f"{stage.repeats}, {cfg.epochs} epochs, {'soft' if soft else 'hard'} labels"
            + (f"; rate chosen on validation among {', '.join('default' if x is None else f'{x:g}' for x in stage.lr_grid)}"
               if stage.lr_grid else ""))
        # each finished network is kept, so a killed evaluation resumes from them (under torchrun the
        # main rank keeps every rank's: see run_cells)
        saved = SavedNetworks(out / "networks", on_save=run.checkpointed) if is_main() else None
        if saved is not None and run.state == "resume" and saved.folder.is_dir():
            n = len(list(saved.folder.glob("*.json")))
            log(f"resuming: {n} network{'s' if n != 1 else ''} already trained in {saved.folder}")
        results = evaluate_synset(synset, bundle, list(stage.archs), cfg, repeats=stage.repeats, split=stage.split,
                                  seed=stage.seed, device=dev, progress=progress, log=log,
                                  hard_labels=stage.hard_labels, lr_grid=stage.lr_grid, saved=saved)
        if is_main():
            write_results(out, results, label or f"{m.get('method')}" + (" (soft)" if soft else ""))
        run.complete()
    log(f"results in {out / 'results.json'} and {out / 'results.md'}")
    return results
