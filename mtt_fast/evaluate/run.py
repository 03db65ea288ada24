"""``mtt-fast eval``: a synset trained on by several architectures, tested on real data."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from mtt_fast.errors import UserError
from mtt_fast.evaluate.metrics import headline_metric
from mtt_fast.evaluate.protocol import EvalConfig, SavedNetworks, run_cells, summarize
from mtt_fast.evaluate.tables import results_markdown
from mtt_fast.io import write_json, write_text
from mtt_fast.runtime import runtime
from mtt_fast.synth import Synset

#: Starting learning rates of the unseen architectures, as the GLaD reference evaluates them
#: (``glad_utils.get_eval_lrs``): the learned syn_lr belongs to the backbone the synset was
#: distilled with, and e.g. AlexNet (no normalization layers) diverges at a ConvNet's 0.03-0.05.
UNSEEN_ARCH_LR = {"alexnet": 0.001, "vgg11": 0.0001, "resnet18": 0.001}


def eval_lr(synset: Synset, arch: str, cfg: EvalConfig) -> float:
    """``--lr`` if given; else the synset's learned syn_lr on its own backbone; else the
    reference's rate for an unseen architecture; else ``cfg.default_lr``."""
    if cfg.lr is not None:
        return cfg.lr
    backbone = str(synset.meta.get("arch", "convnet")).lower()
    if synset.syn_lr is not None and arch.lower() == backbone:
        return synset.syn_lr
    return UNSEEN_ARCH_LR.get(arch.lower(), cfg.default_lr)


#: How ``eval --lr-grid`` chooses, as results.json records it.
LR_SELECTION_RULE = ("one network per candidate rate (the seed of repeat 0) trained on the synset and scored on the "
                     "validation split; the best headline metric wins (ties: the earlier candidate); that network "
                     "is repeat 0 of the reported ones, the other repeats are trained at the chosen rate")


def lr_candidates(synset: Synset, arch: str, cfg: EvalConfig, grid: list[float | None]) -> list[float]:
    """The distinct starting rates ``grid`` names for ``arch``, in order (None: :func:`eval_lr`'s default)."""
    return list(dict.fromkeys(x if x is not None else eval_lr(synset, arch, replace(cfg, lr=None)) for x in grid))


def check_lr_grid(lr_grid: list[float | None] | None, *, lr: float | None, split: str) -> None:
    """Refuse an ``eval --lr-grid`` that cannot be honoured, before anything runs.

    Raises:
        UserError: a candidate rate is not a positive finite number, ``--lr`` is given too, or the
            report would be on the validation split the grid is chosen on.
    """
    if not lr_grid:
        return
    bad = [x for x in lr_grid if x is not None and not (isinstance(x, (int, float)) and 0 < x < math.inf)]
    if bad:
        raise UserError(f"--lr-grid: {bad[0]:g} is not a positive finite rate" if isinstance(bad[0], (int, float))
                        else f"--lr-grid: {bad[0]!r} is not a positive finite rate")
    if lr is not None:
        raise UserError("--lr and --lr-grid: give one of them (--lr-grid chooses the rate on validation)")
    if split != "test":
        raise UserError("--lr-grid chooses the rate on the validation split: report on --split test")


def select_lrs(synset: Synset, bundle, archs: list[str], cfg: EvalConfig, grid: list[float | None], *, split: str,
               seed: int, device, progress: bool, soft, saved: SavedNetworks | None = None
               ) -> tuple[dict[str, float], dict[str, dict], dict[str, dict]]:
    """``eval --lr-grid``: each architecture's starting rate chosen on the validation split.

    Returns ``(chosen rate, selection record, metrics on split of the chosen rate's network)``
    per architecture. The networks are those :func:`evaluate_synset` trains as repeat 0 (same
    seed), so the reported numbers equal an evaluation with ``--lr <chosen>``.
    """
    metric = headline_metric(bundle.num_classes)
    cands = {arch: lr_candidates(synset, arch, cfg, grid) for arch in archs}
    cells = [(arch, lr, 0) for arch in archs for lr in cands[arch]]
    done = run_cells(cells, synset.images, synset.labels, bundle.split("val"), cfg=cfg, seed=seed, device=device,
                     progress=progress, extra={"reported": bundle.split(split)}, soft_labels=soft, saved=saved,
                     tag="select")
    chosen, record, first = {}, {}, {}
    for arch in archs:
        scored = [(lr, val, more["reported"]) for (a, lr, _), (val, more) in zip(cells, done, strict=True) if a == arch]
        best = max(range(len(scored)), key=lambda i: (scored[i][1][metric], -i))
        chosen[arch], first[arch] = scored[best][0], scored[best][2]
        record[arch] = {"split": "val", "metric": metric, "chosen": chosen[arch], "rule": LR_SELECTION_RULE,
                        "candidates": [{"lr": lr, "val": {k: v for k, v in val.items() if isinstance(v, float)}}
                                       for lr, val, _ in scored]}
    return chosen, record, first


def evaluate_synset(
    synset: Synset,
    bundle,
    archs: list[str],
    cfg: EvalConfig,
    *,
    repeats: int = 3,
    split: str = "test",
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] = print,
    hard_labels: bool = False,
    lr_grid: list[float | None] | None = None,
    saved: SavedNetworks | None = None,
) -> dict:
    """Evaluate ``synset`` on each architecture; returns the ``results.json`` content.

    The learning rate is :func:`eval_lr` per architecture (recorded per architecture). A synset
    with soft labels is trained on with them (soft cross-entropy) unless ``hard_labels``;
    ``results.json["labels"]`` says which: ``"soft"`` or ``"hard"``.

    ``lr_grid`` (``eval --lr-grid``; None entries: the default rate): each architecture's rate is
    chosen among these on the validation split (:func:`select_lrs`, recorded per architecture
    as ``"lr_selection"``); ``split`` must then be ``"test"``.

    ``saved`` (see :class:`~mtt_fast.evaluate.protocol.SavedNetworks`): networks a killed run
    finished are taken from it, not trained again; each new one is saved as it finishes.
    """
    data = bundle.split(split)
    metric = headline_metric(bundle.num_classes)
    soft = None if hard_labels else synset.soft_labels
    check_lr_grid(lr_grid, lr=cfg.lr, split=split)
    if lr_grid:
        lrs, selection, first = select_lrs(synset, bundle, archs, cfg, lr_grid, split=split, seed=seed, device=device,
                                           progress=progress, soft=soft, saved=saved)
    else:
        lrs, selection, first = {arch: eval_lr(synset, arch, cfg) for arch in archs}, {}, {}
    lr = lrs[archs[0]] if archs else eval_lr(synset, "convnet", cfg)
    # every (architecture, repeat) cell at once: under torchrun they are spread over the ranks; with
    # --lr-grid, repeat 0 is the network that won the selection (already scored on this split)
    cells = [(a, lrs[a], r) for a in archs for r in range(1 if a in first else 0, repeats)]
    done = run_cells(cells, synset.images, synset.labels, data, cfg=cfg, seed=seed, device=device, progress=progress,
                     soft_labels=soft, saved=saved)
    results = {}
    for arch in archs:
        runs = ([first[arch]] if arch in first else []) + [m for (a, _, _), (m, _) in zip(cells, done, strict=True)
                                                           if a == arch]
        results[arch] = {"runs": runs, **summarize(runs), "lr": lrs[arch]}
        if arch in selection:
            results[arch]["lr_selection"] = selection[arch]
    for arch, r in results.items():
        log(f"{arch}: {metric} {r['mean'][metric]:.2f} ± {r['std'][metric]:.2f}  "
            f"(balanced accuracy {r['mean']['balanced_accuracy']:.2f} ± {r['std']['balanced_accuracy']:.2f})")
    m = synset.meta
    return {
        "dataset": bundle.name,
        "classes": list(bundle.classes),
        "split": split,
        "metric": metric,
        "method": m.get("method"),
        "ipc": m.get("ipc"),
        # the synset's distill options: an evaluation copied away from its synset still names its variant
        **({"distill": m["distill"]} if isinstance(m.get("distill"), dict) else {}),
        "labels": "hard" if soft is None else "soft",
        "ratio_percent": 100.0 * len(synset.labels) / max(1, len(bundle.split("train"))),
        "lr": lr,
        "repeats": repeats,
        "protocol": {k: v for k, v in cfg.__dict__.items()},
        "runtime": runtime(device),
        "results": results,
    }


def write_results(out: str | Path, results: dict, label: str) -> None:
    """Write ``results.json`` and ``results.md`` into ``out``."""
    out = Path(out)
    write_json(out / "results.json", results)
    write_text(out / "results.md", results_markdown([(label, results)]))
