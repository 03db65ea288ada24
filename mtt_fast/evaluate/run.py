"""``mtt-fast eval``: a synset trained on by several architectures, tested on real data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from mtt_fast.evaluate.metrics import headline_metric
from mtt_fast.evaluate.protocol import EvalConfig, evaluate_cells
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
) -> dict:
    """Evaluate ``synset`` on each architecture; returns the ``results.json`` content.

    The learning rate is :func:`eval_lr` per architecture (recorded per architecture). A synset
    with soft labels is trained on with them (soft cross-entropy) unless ``hard_labels``;
    ``results.json["labels"]`` says which: ``"soft"`` or ``"hard"``.
    """
    lr = eval_lr(synset, archs[0] if archs else "convnet", cfg)
    data = bundle.split(split)
    metric = headline_metric(bundle.num_classes)
    soft = None if hard_labels else synset.soft_labels
    lrs = {arch: eval_lr(synset, arch, cfg) for arch in archs}
    # every (architecture, repeat) cell at once: under torchrun they are spread over the ranks
    results = evaluate_cells([(a, lrs[a], r) for a in archs for r in range(repeats)], synset.images, synset.labels,
                             data, cfg=cfg, seed=seed, device=device, progress=progress, soft_labels=soft)
    for arch, r in results.items():
        r["lr"] = lrs[arch]
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
