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
from mtt_fast.generative.config import AUGMENTS

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
@click.option("--style-mixing", "--mixing-prob", "mixing_prob", type=float, default=_D.mixing_prob, show_default=True,
              help="Style-mixing regularization: probability that a fake image takes the styles of a second w "
                   "(same class) from a random crossover block on (0: off).")
@click.option("--augment", type=click.Choice(AUGMENTS), default=_D.augment, show_default=True,
              help="Augmentation before D, of real and fake images alike: ada (adaptive discriminator "
                   "augmentation: geometric, colour, noise and cutout ops each applied with a probability p tuned "
                   "online), diffaug (the --aug ops always; the recipe before ADA) or none.")
@click.option("--ada-target", type=float, default=_D.ada_target, show_default=True,
              help="ADA: the E[sign(D(real))] that p is steered to.")
@click.option("--ada-interval", type=int, default=_D.ada_interval, show_default=True,
              help="ADA: adjust p every this many steps.")
@click.option("--ada-kimg", type=float, default=_D.ada_kimg, show_default=True,
              help="ADA: thousands of real images for p to move from 0 to 1 (the adjustment speed).")
@click.option("--aug", default=_D.aug, show_default=True,
              help="With --augment diffaug: DSA op names joined by _ (all applied to real and fake images); none "
                   "disables.")
@click.option("--max-train-per-class", type=int, default=None, help="Train on at most this many images per class.")
@click.option("--sample-every", type=int, default=_D.sample_every, show_default=True, help="Write samples_<step>.png every this many steps.")
@click.option("--checkpoint-every", type=int, default=_D.checkpoint_every, show_default=True,
              help="Save resumable state and generator.safetensors every this many steps.")
@click.option("--quality-every", type=int, default=_D.quality_every, show_default=True,
              help="Measure class consistency, kernel distance and diversity every this many steps (and at the "
                   "end); generator_best.* keeps the step with the lowest mean kernel distance.")
@click.option("--quality-samples", type=int, default=_D.quality_samples, show_default=True,
              help="Generated (and real validation) images per class for the quality numbers.")
@click.option("--quality-truncation", type=float, default=_D.quality_truncation, show_default=True,
              help="Truncation psi of the images the quality numbers judge (1: off).")
@click.option("--log-every", type=int, default=_D.log_every, show_default=True, help="Append losses to metrics.jsonl every this many steps.")
@click.option("--classifier-store", default=None,
              help="Trajectory store whose expert 0 (final epoch) judges class consistency (default: train a small ConvNet).")
@click.option("--classifier-epochs", type=int, default=_D.classifier_epochs, show_default=True,
              help="Epochs of the default class-consistency classifier.")
@click.option("--dsa-impl", type=click.Choice(["auto", "fused", "reference"]), default="auto", show_default=True,
              help="Augmentation implementation (see `mtt-fast buffer --help`).")
@click.option("--out", required=True, help="Run directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run in --out.")
@common_options
@user_errors
def gan_train(dataset, data_root, res, normalization, data_option, cache_dir, steps, batch_size, z_dim, w_dim, channel_base,
              channel_max, mapping_layers, lr, r1_gamma, r1_interval, ema_kimg, mixing_prob, augment, ada_target,
              ada_interval, ada_kimg, aug, max_train_per_class, sample_every, checkpoint_every, quality_every,
              quality_samples, quality_truncation, log_every, classifier_store, classifier_epochs, dsa_impl,
              out, overwrite, seed, device, progress):
    """Train a class-conditional StyleGAN2-like generator on the real training split.

    Writes generator.safetensors + generator.json (the EMA generator, for `distill
    --generator`), generator_best.* (the quality step with the lowest mean kernel distance),
    samples_<step>.png, metrics.jsonl (losses, R1, ADA's p, class consistency, kernel distance,
    diversity) and a resumable checkpoint; rerun the same command to resume a killed run.
    """
    from mtt_fast.stages import GanStage, run_gan

    cfg = GANConfig(steps=steps, batch_size=batch_size, z_dim=z_dim, w_dim=w_dim, channel_base=channel_base,
                    channel_max=channel_max, mapping_layers=mapping_layers, lr=lr, r1_gamma=r1_gamma,
                    r1_interval=r1_interval, ema_kimg=ema_kimg, mixing_prob=mixing_prob, augment=augment,
                    ada_target=ada_target, ada_interval=ada_interval, ada_kimg=ada_kimg,
                    quality_truncation=quality_truncation,
                    aug="" if aug in ("none", "") else aug, dsa_impl=dsa_impl, max_train_per_class=max_train_per_class,
                    sample_every=sample_every, checkpoint_every=checkpoint_every, quality_every=quality_every,
                    quality_samples=quality_samples, log_every=log_every, classifier_store=classifier_store,
                    classifier_epochs=classifier_epochs, seed=seed)
    stage = GanStage(data_options_of(dataset, data_root, res, normalization, data_option, cache_dir), cfg)
    run_gan(stage, out_path(out), overwrite=overwrite, device=device, progress=progress, log=echo)


@gan.command("sample")
@click.option("--generator", required=True,
              help="A `gan train` directory, its generator.json or generator_best.json, a TorchScript file, or "
                   "package.module:factory.")
@click.option("--per-class", type=int, default=10, show_default=True, help="Images per class (one row each).")
@click.option("--truncation", type=float, default=1.0, show_default=True,
              help="Truncation psi toward the class's average style w (1: off; 0: the average image).")
@click.option("--out", required=True, help="PNG file to write.")
@common_options
@user_errors
def gan_sample(generator, per_class, truncation, out, seed, device, progress):
    """Write a grid of the generator's images, one row per class."""
    from mtt_fast.generative.sample import sample_grid
    from mtt_fast.stages.common import resolve_device

    res = sample_grid(generator, out, per_class=per_class, truncation=truncation, seed=seed,
                      device=resolve_device(device))
    echo(f"wrote {res['path']} ({per_class} per class, truncation {truncation})")
