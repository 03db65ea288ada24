"""``mtt-fast gan``: train the class-conditional generator used as GLaD's deep generative prior."""

from __future__ import annotations

import click
from mtt_fast.cli.common import (
    common_options,
    data_options_of,
    dataset_options,
    echo,
    out_path,
    user_errors,
)

from mtt_fast.generative import GANConfig

_D = GANConfig()


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def gan() -> None:
    """The generator (deep generative prior) for `distill --method glad`."""


@gan.command("train")
@dataset_options()
@click.option("--steps", type=int, default=_D.steps, show_default=True, help="Training steps (one G and one D update each).")
@click.option("--batch-size", type=int, default=_D.batch_size, show_default=True)
@click.option("--z-dim", type=int, default=_D.z_dim, show_default=True)
@click.option("--w-dim", type=int, default=_D.w_dim, show_default=True)
@click.option("--channel-base", type=int, default=_D.channel_base, show_default=True,
              help="A block at resolution r has min(channel_base / r, channel_max) channels (G and D).")
@click.option("--channel-max", type=int, default=_D.channel_max, show_default=True)
@click.option("--mapping-layers", type=int, default=_D.mapping_layers, show_default=True)
@click.option("--lr", type=float, default=_D.lr, show_default=True, help="Adam learning rate of G and D.")
@click.option("--r1-gamma", type=float, default=_D.r1_gamma, show_default=True, help="R1 penalty weight (0: off).")
@click.option("--r1-interval", type=int, default=_D.r1_interval, show_default=True, help="Lazy R1: every this many steps.")
@click.option("--ema-kimg", type=float, default=_D.ema_kimg, show_default=True,
              help="Half-life of the EMA generator in thousands of images.")
@click.option("--mixing-prob", type=float, default=_D.mixing_prob, show_default=True,
              help="Style-mixing probability of the fake batch.")
@click.option("--aug", default=_D.aug, show_default=True,
              help="DiffAugment ops (DSA op names joined by _; all applied to real and fake images); none disables.")
@click.option("--max-train-per-class", type=int, default=None, help="Train on at most this many images per class.")
@click.option("--sample-every", type=int, default=_D.sample_every, show_default=True, help="Write samples_<step>.png every this many steps.")
@click.option("--checkpoint-every", type=int, default=_D.checkpoint_every, show_default=True,
              help="Save resumable state and generator.safetensors every this many steps.")
@click.option("--quality-every", type=int, default=_D.quality_every, show_default=True,
              help="Measure class consistency every this many steps (and at the end).")
@click.option("--quality-samples", type=int, default=_D.quality_samples, show_default=True,
              help="Generated images per class for class consistency.")
@click.option("--log-every", type=int, default=_D.log_every, show_default=True, help="Append losses to metrics.jsonl every this many steps.")
@click.option("--classifier-store", default=None,
              help="Trajectory store whose expert 0 (final epoch) judges class consistency (default: train a small ConvNet).")
@click.option("--classifier-epochs", type=int, default=_D.classifier_epochs, show_default=True,
              help="Epochs of the default class-consistency classifier.")
@click.option("--dsa-impl", type=click.Choice(["auto", "fused", "reference"]), default="auto", show_default=True,
              help="Augmentation implementation (see `mtt-fast buffer --help`).")
@click.option("--num-threads", type=int, default=None, help="CPU threads of PyTorch (default: its own choice).")
@click.option("--out", required=True, help="Run directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run in --out.")
@common_options
@user_errors
def gan_train(dataset, data_root, res, normalization, data_option, cache_dir, steps, batch_size, z_dim, w_dim, channel_base,
              channel_max, mapping_layers, lr, r1_gamma, r1_interval, ema_kimg, mixing_prob, aug, max_train_per_class,
              sample_every, checkpoint_every, quality_every, quality_samples, log_every, classifier_store, classifier_epochs, dsa_impl,
              num_threads, out, overwrite, seed, device, progress):
    """Train a class-conditional StyleGAN2-like generator on the real training split.

    Writes generator.safetensors + generator.json (the EMA generator, for `distill
    --generator`), samples_<step>.png, metrics.jsonl (losses, R1, class consistency) and a
    resumable checkpoint; rerun the same command to resume a killed run.
    """
    from mtt_fast.stages import GanStage, run_gan

    cfg = GANConfig(steps=steps, batch_size=batch_size, z_dim=z_dim, w_dim=w_dim, channel_base=channel_base,
                    channel_max=channel_max, mapping_layers=mapping_layers, lr=lr, r1_gamma=r1_gamma,
                    r1_interval=r1_interval, ema_kimg=ema_kimg, mixing_prob=mixing_prob,
                    aug="" if aug in ("none", "") else aug, dsa_impl=dsa_impl, max_train_per_class=max_train_per_class,
                    sample_every=sample_every, checkpoint_every=checkpoint_every, quality_every=quality_every,
                    quality_samples=quality_samples, log_every=log_every, classifier_store=classifier_store,
                    classifier_epochs=classifier_epochs, seed=seed)
    stage = GanStage(data_options_of(dataset, data_root, res, normalization, data_option, cache_dir), cfg, num_threads)
    run_gan(stage, out_path(out), overwrite=overwrite, device=device, progress=progress, log=echo)
