"""``mtt-fast gan train``: the class-conditional generator GLaD distills through."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from mtt_fast import distributed
from mtt_fast.errors import UserError
from mtt_fast.generative import GANConfig, train_gan
from mtt_fast.generative.config import legacy_defaults
from mtt_fast.rundir import finished, open_run
from mtt_fast.stages.common import (
    DataOptions,
    at_least_one,
    load_bundle,
    quiet_unless_main,
    resolve_device,
)


@dataclass
class GanStage:
    """The gan train command: a dataset and the GAN's settings (``num_threads``: torch's CPU threads)."""

    data: DataOptions
    gan: GANConfig = field(default_factory=GANConfig)
    num_threads: int | None = None


def run_gan(stage: GanStage, out: str | Path, *, overwrite: bool = False, device="auto", progress: bool = True,
            log: Callable[[str], None] = print) -> dict:
    """Train (or resume) the generator in ``out``; returns ``train_gan``'s result (None if already finished)."""
    out = Path(out)
    dev = resolve_device(device)  # under torchrun: joins the group (DDP in the trainer; rank 0 writes)
    log, progress = quiet_unless_main(log, progress)
    at_least_one(num_threads=stage.num_threads)
    if stage.num_threads is not None:
        torch.set_num_threads(stage.num_threads)
    cfg = stage.gan
    if cfg.classifier_store:
        cfg = replace(cfg, classifier_store=str(Path(cfg.classifier_store).expanduser().resolve()))
    cfg.validate()
    at_least_one(classifier_epochs=cfg.classifier_epochs)
    if cfg.batch_size < distributed.world_size():  # before the run directory is touched
        raise UserError(f"--batch-size {cfg.batch_size} is smaller than the {distributed.world_size()} ranks "
                        "it is split over")
    bundle = load_bundle(stage.data, seed=cfg.seed, progress=progress)
    config = {"command": "gan train", "dataset": bundle.meta(), **asdict(cfg), "num_threads": stage.num_threads}
    defaults = legacy_defaults()  # a run made before a setting existed used its old value
    if finished(out, config, overwrite=overwrite, defaults=defaults):
        log(f"{out} already holds this finished generator; nothing to do (pass --overwrite to train again)")
        return {}
    with open_run(out, config, overwrite=overwrite, defaults=defaults) as run:
        res = train_gan(bundle, out, cfg, device=dev, progress=progress, log=log)
        run.complete()
    q = res["quality"]
    log(f"generator {out / 'generator.json'} (step {res['step']}): class consistency "
        f"{q['class_consistency']:.2f}% (the classifier's accuracy on real validation images: "
        f"{res['classifier']['val_accuracy']:.2f}%)")
    if res.get("best"):
        log(f"best generator {out / 'generator_best.json'}: step {res['best']['step']}, kid {res['best']['kid']:.4f}")
    return res
