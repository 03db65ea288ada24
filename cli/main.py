"""The ``mtt-fast`` command line. Thin: parse options, build a stage's config, call it.

Every default shown here is read from the library's config dataclasses (``_E``, ``_D``, ...);
the stages (``mtt_fast/stages``) own validation, method defaults, resume and completion.
"""

from __future__ import annotations

import platform
import warnings

import click
import torch
from mtt_fast.cli.common import (
    common_options,
    data_options_of,
    dataset_options,
    dsa_options,
    echo,
    out_path,
    user_errors,
)

import mtt_fast
from mtt_fast.distill import (
    METHODS,
    DDOptions,
    DistillConfig,
    GLaDOptions,
    InLoopEval,
    TrajectoryOptions,
)
from mtt_fast.evaluate.protocol import EvalConfig
from mtt_fast.experts import ExpertConfig
from mtt_fast.distill.options import parse_bytes
from mtt_fast.match import ENGINES
from mtt_fast.stages import common as stage_common
from mtt_fast.stages.sweep import PRESET_NAMES
from mtt_fast.stages.evaluate import EvalStage

_E, _D, _T, _G, _DD, _IE, _EV = (ExpertConfig(), DistillConfig(), TrajectoryOptions(), GLaDOptions(), DDOptions(),
                                 InLoopEval(), EvalConfig())
_ES = EvalStage(synset="")
_LR_DEFAULTS = "; ".join(f"{n} {c.defaults['lr_img']:g}" for n, c in METHODS.items() if c.optimizes)
_LR_LR_DEFAULTS = "; ".join(f"{n} {c.defaults['lr_lr']:g}" for n, c in METHODS.items() if c.optimizes)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(mtt_fast.__version__, prog_name="mtt-fast")
@click.option("--dist-backend", type=click.Choice(["nccl", "gloo"]), default=None,
              help="Under torchrun: the torch.distributed backend (default nccl on CUDA, gloo on CPU).")
def main(dist_backend: str | None) -> None:
    """mtt-fast: distill image datasets into a few synthetic images per class by Matching
    Training Trajectories (MTT), optionally through a deep generative prior (GLaD).

    The pipeline is buffer -> distill -> eval; each stage reads and writes directories.
    Every command also runs under torchrun (`torchrun --nproc-per-node K -m mtt_fast ...`):
    see README, "More than one GPU / machine".
    """
    warnings.showwarning = _one_line_warning
    if dist_backend:
        import os

        os.environ["MTT_FAST_DIST_BACKEND"] = dist_backend


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Library warnings (a dataset subset, a kernel that failed its check) as one ``warning:`` line."""
    click.echo(f"warning: {message}", err=True)


# --------------------------------------------------------------------------------------
@main.command()
def info() -> None:
    """Versions, the compiled core, and the devices PyTorch sees."""
    from mtt_fast.ops import extension_info

    ext = extension_info()
    echo(f"mtt-fast {mtt_fast.__version__}  python {platform.python_version()}  torch {torch.__version__}"
         f"  (built for CUDA {torch.version.cuda or '-'})")
    if ext.get("loaded"):
        echo(f"compiled core: loaded from {ext.get('path')} ({'CUDA + CPU' if ext.get('built_with_cuda') else 'CPU only'} build)")
        echo(f"  ops: {', '.join(ext.get('ops', []))}")
    else:
        echo(f"compiled core: NOT loaded ({ext.get('error', 'unknown reason')}); running on the pure-PyTorch reference path")
    echo("trajectory loss: " + ("fused op" if ext.get("loaded") else "reference"))
    from mtt_fast.ops.dsa import fused_available

    dsa_devs = [d for d in ("cpu", "cuda") if fused_available(d, torch.float32)]
    echo("augmentation (DSA): " + (f"fused op on {', '.join(dsa_devs)} (float32/float64; else the reference)"
                                   if dsa_devs else "reference (pure PyTorch)"))
    from mtt_fast.ops import block as fused_block

    blk_devs = [d for d in ("cpu", "cuda") if fused_block.fused_available(d, torch.float32)]
    echo("ConvNet blocks (norm + ReLU + pool, 1st/2nd derivatives): "
         + (f"fused op on {', '.join(blk_devs)}" if blk_devs else "reference (native ops)"))
    from mtt_fast.ops import verify

    rows = verify.format_cached()
    echo(f"parity checks (auto uses an op once it matched its spec there; `mtt-fast selftest` reruns them): "
         f"{len(rows)} cached in {verify.cache_dir() / verify.CACHE_SUBDIR}")
    for line in rows:
        echo(line)
    from mtt_fast.match import ENGINES

    echo(f"matching engines: {', '.join(ENGINES)} (default {_T.engine})")
    echo(f"CPU threads: {torch.get_num_threads()}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            echo(f"cuda:{i}: {p.name}, {p.total_memory / 2**30:.1f} GiB")
    else:
        echo("CUDA devices: none visible")


# --------------------------------------------------------------------------------------
@main.group()
def data() -> None:
    """Look at a dataset before using it."""


@data.command("stats")
@dataset_options()
@common_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@user_errors
def data_stats(dataset, data_root, res, normalization, data_option, cache_dir, seed, device, progress, as_json):
    """Class counts, imbalance, bags per class and mean/std, per split."""
    import json

    from mtt_fast.data import dataset_stats, format_stats

    opts = data_options_of(dataset, data_root, res, normalization, data_option, cache_dir)
    stats = dataset_stats(stage_common.load_bundle(opts, seed=seed, progress=progress, check_splits=False))
    echo(json.dumps(stats, indent=2) if as_json else format_stats(stats))


# --------------------------------------------------------------------------------------
@main.command()
@dataset_options()
@click.option("--arch", default=_E.arch, show_default=True, help="Expert architecture (the distillation backbone).")
@click.option("--width", type=int, default=_E.width, show_default=True, help="ConvNet width.")
@click.option("--depth", type=int, default=_E.depth, show_default=True, help="ConvNet depth.")
@click.option("--num-experts", type=int, default=_E.num_experts, show_default=True)
@click.option("--epochs", type=int, default=_E.epochs, show_default=True, help="Epochs per expert (snapshots: epochs + 1).")
@click.option("--lr", type=float, default=_E.lr, show_default=True, help="Expert SGD learning rate (MTT's lr_teacher).")
@click.option("--momentum", type=float, default=_E.momentum, show_default=True)
@click.option("--weight-decay", type=float, default=_E.weight_decay, show_default=True)
@click.option("--batch-size", type=int, default=_E.batch_size, show_default=True)
@click.option("--max-train-per-class", type=int, default=_E.max_train_per_class,
              help="Train on at most this many images per class (quick runs).")
@click.option("--jitter/--no-jitter", default=None, help="Color jitter + h/v flips of the paper (default: on for pg/crc).")
@click.option("--sam-rho", type=float, default=_E.sam_rho, show_default=True,
              help="Sharpness-aware experts (SAM, as FTD): every step takes its gradient at w + rho g/||g|| "
                   "and steps from w. 0: plain SGD. FTD uses 0.01.")
@click.option("--gsam-alpha", type=float, default=_E.gsam_alpha, show_default=True,
              help="GSAM's surrogate-gap term with --sam-rho: subtract alpha times the part of the gradient at w "
                   "orthogonal to the SAM gradient. 0: plain SAM. FTD uses 0.3.")
@click.option("--sam-adaptive", is_flag=True, default=_E.sam_adaptive,
              help="With --sam-rho: ASAM's per-weight ascent rho w^2 g/||w g|| (FTD's script's default).")
@dsa_options
@click.option("--out", required=True, help="Store directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store in --out.")
@common_options
@user_errors
def buffer(dataset, data_root, res, normalization, data_option, cache_dir, arch, width, depth, num_experts, epochs, lr,
           momentum, weight_decay, batch_size, max_train_per_class, jitter, sam_rho, gsam_alpha, sam_adaptive,
           dsa_strategy, dsa_mode, dsa_impl, out, overwrite, seed, device, progress):
    """Train expert networks on the real data and store their trajectories."""
    from mtt_fast.stages import BufferStage, run_buffer

    cfg = ExpertConfig(arch=arch, width=width, depth=depth, num_experts=num_experts, epochs=epochs, lr=lr,
                       momentum=momentum, weight_decay=weight_decay, batch_size=batch_size,
                       dsa=stage_common.dsa_dict(dsa_strategy, dsa_mode), dsa_impl=dsa_impl,
                       max_train_per_class=max_train_per_class, seed=seed, sam_rho=sam_rho, gsam_alpha=gsam_alpha,
                       sam_adaptive=sam_adaptive)
    stage = BufferStage(data_options_of(dataset, data_root, res, normalization, data_option, cache_dir), cfg, jitter)
    run_buffer(stage, out_path(out), overwrite=overwrite, device=device, progress=progress, log=echo)


# --------------------------------------------------------------------------------------
@main.command()
@click.option("--buffer", "buffer_dir", required=True, help="Trajectory store written by `mtt-fast buffer`.")
@click.option("--method", type=click.Choice(list(METHODS)), default=_D.method, show_default=True,
              help="mtt: matching training trajectories on pixels; glad: MTT in a generator's latent space "
                   "(needs --generator); dd: Wang et al.'s dataset distillation (the paper's DD baseline); "
                   "random: random real images (baseline); herding / kcenter: a coreset of real images chosen in "
                   "the feature space of expert 0 at its last epoch (baselines).")
@click.option("--ipc", type=int, default=_D.ipc, show_default=True, help="Synthetic images per class.")
@click.option("--syn-steps", type=int, default=_D.syn_steps, show_default=True, help="N: student steps per iteration.")
@click.option("--expert-epochs", type=int, default=_T.expert_epochs, show_default=True, help="M: expert epochs to match.")
@click.option("--max-start-epoch", type=int, default=_T.max_start_epoch, show_default=True,
              help="T+: start epochs drawn from [0, T+).")
@click.option("--iterations", type=int, default=_D.iterations, show_default=True)
@click.option("--engine", type=click.Choice(list(ENGINES)), default=_T.engine, show_default=True,
              help="Matching engine. auto: exact; keeps the graphs of as many steps as fit in --memory-budget "
                   "(full's speed when the unroll fits, adjoint's memory when not); "
                   "adjoint: exact gradients, activation memory of one student step; "
                   "full: autograd through the whole unroll (exact, memory grows with N); "
                   "tesla: TESLA's per-step approximation (not exact for N > 1; for comparison).")
@click.option("--memory-budget", default=_T.memory_budget,
              help="--engine auto: memory it may use, e.g. 8GiB, 512MiB or bytes (default: the engine's own rule).")
@click.option("--start-epoch-schedule", default=_T.start_epoch_schedule, metavar="LO:HI:ITERS",
              help="DATM: T+ grows linearly from LO to HI over ITERS iterations, then stays HI (start epochs drawn "
                   "from [0, T+)); replaces --max-start-epoch.")
@click.option("--skip-loss-above", type=float, default=_T.skip_loss_above,
              help="DATM: an iteration whose normalized matching loss is above this updates nothing.")
@click.option("--match-layers", default=_T.match_layers, show_default=True,
              help="PAD: which parameters enter the matching loss: all, deep:F (the deepest fraction F of the "
                   "layers) or A:B (parameter tensors A..B-1 in order).")
@click.option("--offload-history", is_flag=True, default=_T.offload_history,
              help="adjoint/tesla: keep the N parameter snapshots in host memory instead of on the GPU.")
@click.option("--lr-img", type=float, default=_D.lr_img,
              help=f"Learning rate of the pixels (glad: of the feature latents). Default: the method's ({_LR_DEFAULTS}).")
@click.option("--lr-lr", type=float, default=_D.lr_lr,
              help=f"Learning rate of syn_lr. Default: the method's ({_LR_LR_DEFAULTS}).")
@click.option("--lr-teacher", type=float, default=_D.lr_teacher, help="Initial syn_lr (default: the experts' lr).")
@click.option("--syn-lr-min", type=float, default=_D.syn_lr_min, show_default=True,
              help="Keep the learned syn_lr at or above this (a negative step size trains the student backwards); "
                   "0 lets it cross zero (with a warning).")
@click.option("--batch-syn", type=int, default=_D.batch_syn, help="Synthetic images per student step (default: all).")
@click.option("--pix-init", type=click.Choice(["real", "noise"]), default=_D.pix_init, show_default=True)
@click.option("--soft-labels", is_flag=True, default=_D.soft_labels,
              help="DATM: learned soft labels (logits) initialised from expert 0 at its last epoch, on real images it "
                   "classifies correctly; random/herding/kcenter: that expert's logits, not optimized.")
@click.option("--lr-y", type=float, default=_D.lr_y, show_default=True,
              help="--soft-labels: SGD learning rate of the label logits (momentum 0.9; DATM uses 2-5).")
@click.option("--ema-images", type=float, default=_D.ema_images,
              help="FTD: also keep an exponential moving average of the images (and soft labels) with this decay, "
                   "e.g. 0.9995; evaluated and selected on validation beside the raw set.")
@click.option("--generator", default=_G.generator,
              help="glad: a `mtt-fast gan train` directory, a TorchScript file, or package.module:factory.")
@click.option("--space", type=click.Choice(["p", "z", "w", "wp"]), default=_G.space, show_default=True,
              help="glad: what is learned: p pixels (initialized from G), z, w (one style vector), wp (W+, one per block).")
@click.option("--layer", type=int, default=_G.layer, show_default=True,
              help="glad: also learn the feature map after synthesis block k (lr --lr-img); -1: style vectors only.")
@click.option("--avg-w", is_flag=True, default=_G.avg_w,
              help="glad: start every image at its class-average w instead of a mapped random z.")
@click.option("--lr-w", type=float, default=_G.lr_w, show_default=True, help="glad: SGD learning rate of z / w / w+.")
@click.option("--learn-g", is_flag=True, default=_G.learn_g, help="glad: also learn the generator's weights (lr --lr-g).")
@click.option("--lr-g", type=float, default=_G.lr_g, show_default=True, help="glad: SGD learning rate of the generator's weights.")
@click.option("--g-batch", type=int, default=_G.g_batch, show_default=True,
              help="glad: images rendered per generator call (generator memory does not grow with ipc).")
@click.option("--block-impl", type=click.Choice(["auto", "fused", "reference"]), default=_D.block_impl, show_default=True,
              help="ConvNet student blocks (instance norm + ReLU + avg pool, and their first and second derivatives): "
                   "auto (the fused compiled op where built for the device), fused (fail if unavailable), reference.")
@click.option("--dd-models", type=int, default=_DD.dd_models, show_default=True, help="dd: random initializations per iteration.")
@click.option("--batch-real", type=int, default=_DD.batch_real, show_default=True,
              help="dd: real images the updated networks are scored on.")
@click.option("--eval-it", type=int, default=_IE.eval_it, show_default=True,
              help="Evaluate on the validation split every this many iterations.")
@click.option("--eval-epochs", type=int, default=_IE.eval_epochs, show_default=True, help="Epochs of each validation evaluation.")
@click.option("--eval-repeats", type=int, default=_IE.eval_repeats, show_default=True)
@click.option("--checkpoint-it", type=int, default=_D.checkpoint_it, show_default=True,
              help="Save resumable state every this many iterations.")
@dsa_options
@click.option("--data-root", default=None, help="Where the dataset lives now, if it moved since `buffer`.")
@click.option("--out", required=True, help="Run directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run in --out.")
@common_options
@user_errors
def distill(buffer_dir, method, ipc, syn_steps, expert_epochs, max_start_epoch, iterations, engine, memory_budget,
            start_epoch_schedule, skip_loss_above, match_layers, offload_history,
            lr_img, lr_lr, lr_teacher, syn_lr_min, batch_syn, pix_init, soft_labels, lr_y, ema_images, generator, space, layer, avg_w, lr_w, learn_g, lr_g, g_batch,
            block_impl, dd_models, batch_real, eval_it, eval_epochs, eval_repeats, checkpoint_it, dsa_strategy,
            dsa_mode, dsa_impl, data_root, out, overwrite, seed, device, progress):
    """Distill a synthetic set from a trajectory store."""
    from mtt_fast.stages import DistillStage, run_distill

    cfg = DistillConfig(
        method=method, ipc=ipc, syn_steps=syn_steps, iterations=iterations, lr_img=lr_img, lr_lr=lr_lr,
        lr_teacher=lr_teacher, syn_lr_min=syn_lr_min, batch_syn=batch_syn, pix_init=pix_init, dsa=stage_common.dsa_dict(dsa_strategy, dsa_mode),
        dsa_impl=dsa_impl, block_impl=block_impl, checkpoint_it=checkpoint_it, seed=seed, soft_labels=soft_labels,
        lr_y=lr_y, ema_images=ema_images,
        trajectory=TrajectoryOptions(expert_epochs, max_start_epoch, engine, offload_history,
                                     parse_bytes(memory_budget), start_epoch_schedule, skip_loss_above,
                                     match_layers),
        glad=GLaDOptions(generator, space, layer, avg_w, lr_w, lr_g, learn_g, g_batch),
        dd=DDOptions(dd_models, batch_real), evaluation=InLoopEval(eval_it, eval_epochs, eval_repeats))
    run_distill(DistillStage(buffer_dir, cfg, data_root), out_path(out), overwrite=overwrite, device=device,
                progress=progress, log=echo)


# --------------------------------------------------------------------------------------
@main.command()
@click.argument("grid", type=click.Path(dir_okay=False))
@click.option("--preset", type=click.Choice(PRESET_NAMES), default=None,
              help="Start from a published recipe; the grid file's base: wins. crc / pg: the GLaD paper's best "
                   "settings (Tables 4, 5). datm / ftd / pad: grids over ipc 1 and 10 of DATM (soft labels, "
                   "widening start range, loss skip), FTD (EMA images; train the experts with buffer --sam-rho) "
                   "and PAD (DATM + deep-layer matching); a base: ipc picks that ipc's point; iterations and "
                   "the store's epochs rescale the schedules (see mtt_fast/stages/sweep.py).")
@click.option("--out", required=True, help="Sweep directory: one distill run per point, summary.md.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--progress/--no-progress", default=True, show_default=True)
@user_errors
def sweep(grid, preset, out, device, progress):
    """Run `distill` once per point of GRID.yaml (resumable) and rank the points by validation score."""
    from mtt_fast.stages.sweep import run_sweep

    run_sweep(grid, out_path(out), preset=preset, device=device, progress=progress, log=echo)


# --------------------------------------------------------------------------------------
@main.command("eval")
@click.option("--synset", "synset_dir", required=True, help="A synset directory (or a distill run directory).")
@click.option("--data-root", default=None, help="Where the dataset lives now, if it moved.")
@click.option("--archs", default=",".join(_ES.archs), show_default=True, help="Comma-separated: convnet,alexnet,vgg11,resnet18.")
@click.option("--repeats", type=int, default=_ES.repeats, show_default=True, help="Networks trained per architecture.")
@click.option("--epochs", type=int, default=_EV.epochs, show_default=True, help="Half linear warm-up, half cosine decay.")
@click.option("--lr", type=float, default=_EV.lr,
              help="Starting learning rate of every architecture (default: the synset's learned syn_lr on its own "
                   "backbone; alexnet 0.001, vgg11 0.0001, resnet18 0.001 as the GLaD reference; "
                   f"else {_EV.default_lr:g}).")
@click.option("--lr-grid", default=None,
              help="Comma-separated starting rates ('default' = the rate --lr defaults to): each architecture's rate "
                   "is chosen among them on the VALIDATION split, one network per rate; the winner is repeat 0 of "
                   "the reported networks. Not with --lr; reports on --split test.")
@click.option("--batch-size", type=int, default=_EV.batch_size, show_default=True)
@click.option("--split", type=click.Choice(["test", "val"]), default=_ES.split, show_default=True)
@click.option("--hard-labels", is_flag=True, default=_ES.hard_labels,
              help="Train on the synset's hard classes even when it has soft labels (default: a synset with soft "
                   "labels is trained on with soft cross-entropy against softmax(soft_labels)).")
@dsa_options
@click.option("--out", required=True, help="Directory for results.json, results.md and networks/ (one file per "
              "trained network).")
@click.option("--overwrite", is_flag=True, help="Replace existing results in --out.")
@common_options
@user_errors
def eval_cmd(synset_dir, data_root, archs, repeats, epochs, lr, lr_grid, batch_size, split, hard_labels, dsa_strategy, dsa_mode,
             dsa_impl, out, overwrite, seed, device, progress):
    """Train networks from scratch on a synset and test them on real data.

    Each trained network's metrics are kept in OUT/networks/ as it finishes: rerun the same
    command after a crash or a kill and only the networks still missing are trained.
    """
    from mtt_fast.stages import EvalStage, run_eval

    cfg = EvalConfig(epochs=epochs, lr=lr, batch_size=batch_size, dsa=stage_common.dsa_dict(dsa_strategy, dsa_mode),
                     dsa_impl=dsa_impl)
    stage = EvalStage(synset_dir, cfg, archs=[a.strip() for a in archs.split(",") if a.strip()], repeats=repeats,
                      split=split, seed=seed, data_root=data_root, hard_labels=hard_labels,
                      lr_grid=stage_common.parse_lr_grid(lr_grid))
    run_eval(stage, out_path(out), overwrite=overwrite, device=device, progress=progress, log=echo)


# --------------------------------------------------------------------------------------
@main.command()
@click.option("--out", default="mtt-fast-demo", show_default=True, help="Run directory of the demo.")
@click.option("--data-root", default=None, help="Fashion-MNIST directory (default: Debian's dataset-fashion-mnist).")
@click.option("--overwrite", is_flag=True, help="Start the demo again from scratch.")
@common_options
@user_errors
def demo(out, data_root, overwrite, seed, device, progress):
    """The whole pipeline on Fashion-MNIST on a CPU in a few minutes: experts, MTT at ipc 1
    and 10, the random-real baseline, evaluation, and a printed table."""
    from mtt_fast.stages.demo import run_demo

    run_demo(out_path(out), data_root=data_root, overwrite=overwrite, seed=seed,
             device=stage_common.resolve_device(device), progress=progress, log=echo)


from mtt_fast.cli.gan import gan

main.add_command(gan)
from mtt_fast.cli.report import report

main.add_command(report)
from mtt_fast.cli.selftest import selftest

main.add_command(selftest)

if __name__ == "__main__":
    main()
