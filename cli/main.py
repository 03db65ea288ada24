"""The ``mtt-fast`` command line. Thin: parse options, call the library, print."""

from __future__ import annotations

import platform
from dataclasses import asdict
from pathlib import Path

import click
import torch
from mtt_fast.cli.common import (
    common_options,
    dataset_options,
    echo,
    out_path,
    parse_kv,
    resolve_device,
    user_errors,
)

import mtt_fast
from mtt_fast.augment import DSAConfig
from mtt_fast.errors import UserError

DEFAULT_DSA = DSAConfig().strategy


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(mtt_fast.__version__, prog_name="mtt-fast")
def main() -> None:
    """mtt-fast: distill image datasets into a few synthetic images per class by Matching
    Training Trajectories (MTT), optionally through a deep generative prior (GLaD).

    The pipeline is buffer -> distill -> eval; each stage reads and writes directories.
    """


# --------------------------------------------------------------------------------------
# shared option groups


def dsa_options(f):
    f = click.option("--dsa-impl", type=click.Choice(["auto", "fused", "reference"]), default="auto", show_default=True,
                     help="DSA implementation: auto (the fused compiled op where built for the device, else the "
                          "pure-PyTorch reference), fused (fail if unavailable), reference (for comparison).")(f)
    f = click.option("--dsa-mode", type=click.Choice(["S", "M"]), default="S", show_default=True,
                     help="S: one augmentation group per batch (MTT); M: all groups in turn.")(f)
    f = click.option("--dsa-strategy", default=DEFAULT_DSA, show_default=True,
                     help="Differentiable Siamese augmentation ops joined by _ (add noise for the paper's noise op); none disables.")(f)
    return f


def dsa_dict(strategy: str, mode: str) -> dict:
    return asdict(DSAConfig(strategy="" if strategy in ("none", "") else strategy, mode=mode))


def _load_bundle(dataset, data_root, res, normalization, data_option, cache_dir, seed, progress):
    from mtt_fast.data import load_dataset

    return load_dataset(dataset, data_root, res, seed=seed, options=parse_kv(data_option, "--data-option"),
                        cache_dir=cache_dir, normalization=normalization, progress=progress)


def _bundle_from_meta(meta: dict, data_root: str | None, progress: bool):
    from mtt_fast.data import load_dataset_from_meta

    return load_dataset_from_meta(meta, root=data_root, progress=progress)


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
    from mtt_fast.match import ENGINES

    echo(f"matching engines: {', '.join(ENGINES)} (default adjoint)")
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

    bundle = _load_bundle(dataset, data_root, res, normalization, data_option, cache_dir, seed, progress)
    stats = dataset_stats(bundle)
    echo(json.dumps(stats, indent=2) if as_json else format_stats(stats))


# --------------------------------------------------------------------------------------
@main.command()
@dataset_options()
@click.option("--arch", default="convnet", show_default=True, help="Expert architecture (the distillation backbone).")
@click.option("--width", type=int, default=128, show_default=True, help="ConvNet width.")
@click.option("--depth", type=int, default=3, show_default=True, help="ConvNet depth.")
@click.option("--num-experts", type=int, default=5, show_default=True)
@click.option("--epochs", type=int, default=50, show_default=True, help="Epochs per expert (snapshots: epochs + 1).")
@click.option("--lr", type=float, default=0.01, show_default=True, help="Expert SGD learning rate (MTT's lr_teacher).")
@click.option("--momentum", type=float, default=0.0, show_default=True)
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--max-train-per-class", type=int, default=None, help="Train on at most this many images per class (quick runs).")
@click.option("--jitter/--no-jitter", default=None, help="Color jitter + h/v flips of the paper (default: on for pg/crc).")
@dsa_options
@click.option("--out", required=True, help="Store directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store in --out.")
@common_options
@user_errors
def buffer(dataset, data_root, res, normalization, data_option, cache_dir, arch, width, depth, num_experts, epochs, lr,
           momentum, weight_decay, batch_size, max_train_per_class, jitter, dsa_strategy, dsa_mode, dsa_impl, out, overwrite,
           seed, device, progress):
    """Train expert networks on the real data and store their trajectories."""
    from mtt_fast.data import ExpertTransform
    from mtt_fast.experts import ExpertConfig, train_experts
    from mtt_fast.models import get_network
    from mtt_fast.rundir import mark_complete, prepare_out

    dev = resolve_device(device)
    get_network(arch, 3, 2, 32)  # unknown --arch fails before any data is read
    if num_experts < 1 or epochs < 1:
        raise UserError("--num-experts and --epochs must be at least 1")
    bundle = _load_bundle(dataset, data_root, res, normalization, data_option, cache_dir, seed, progress)
    if jitter is None:
        jitter = dataset in ("pg", "crc")
    cfg = ExpertConfig(arch=arch, width=width, depth=depth, num_experts=num_experts, epochs=epochs, lr=lr,
                       momentum=momentum, weight_decay=weight_decay, batch_size=batch_size,
                       dsa=dsa_dict(dsa_strategy, dsa_mode), dsa_impl=dsa_impl, max_train_per_class=max_train_per_class, seed=seed)
    config = {"command": "buffer", "dataset": bundle.meta(), "jitter": jitter, **asdict(cfg)}
    out = out_path(out)
    state = prepare_out(out, config, overwrite=overwrite, defaults=asdict(ExpertConfig()))
    if state == "complete":
        echo(f"{out} already holds this finished store; nothing to do (pass --overwrite to train again)")
        return
    bundle.write_split(out / "split.json")
    meta = train_experts(bundle, out, cfg, device=dev, transform=ExpertTransform() if jitter else None,
                         progress=progress, log=echo)
    mark_complete(out)
    accs = [e["val_accuracy"] for e in meta["experts"]]
    echo(f"store {out}: {len(accs)} experts x {epochs} epochs, {meta['num_params']} parameters; "
         f"val accuracy {sum(accs) / len(accs):.2f}% mean")


# --------------------------------------------------------------------------------------
@main.command()
@click.option("--buffer", "buffer_dir", required=True, help="Trajectory store written by `mtt-fast buffer`.")
@click.option("--method", type=click.Choice(["mtt", "glad", "dd", "random"]), default="mtt", show_default=True,
              help="mtt: matching training trajectories on pixels; glad: MTT in a generator's latent space "
                   "(needs --generator); dd: Wang et al.'s dataset distillation (the paper's DD baseline); "
                   "random: random real images (baseline).")
@click.option("--ipc", type=int, default=10, show_default=True, help="Synthetic images per class.")
@click.option("--syn-steps", type=int, default=20, show_default=True, help="N: student steps per iteration.")
@click.option("--expert-epochs", type=int, default=2, show_default=True, help="M: expert epochs to match.")
@click.option("--max-start-epoch", type=int, default=20, show_default=True, help="T+: start epochs drawn from [0, T+).")
@click.option("--iterations", type=int, default=5000, show_default=True)
@click.option("--engine", type=click.Choice(["adjoint", "full", "tesla"]), default="adjoint", show_default=True,
              help="Matching engine. adjoint: exact gradients, activation memory of one student step; "
                   "full: autograd through the whole unroll (exact, memory grows with N); "
                   "tesla: TESLA's per-step approximation (not exact for N > 1; for comparison).")
@click.option("--offload-history", is_flag=True,
              help="adjoint/tesla: keep the N parameter snapshots in host memory instead of on the GPU.")
@click.option("--lr-img", type=float, default=None,
              help="Learning rate of the pixels (glad: of the feature latents). Default 1000 (SGD); dd: 0.01 (Adam).")
@click.option("--lr-lr", type=float, default=None, help="Learning rate of syn_lr. Default 1e-5 (SGD); dd: 1e-4 (Adam).")
@click.option("--lr-teacher", type=float, default=None, help="Initial syn_lr (default: the experts' lr).")
@click.option("--batch-syn", type=int, default=None, help="Synthetic images per student step (default: all).")
@click.option("--pix-init", type=click.Choice(["real", "noise"]), default="real", show_default=True)
@click.option("--generator", default=None,
              help="glad: a `mtt-fast gan train` directory, a TorchScript file, or package.module:factory.")
@click.option("--space", type=click.Choice(["p", "z", "w", "wp"]), default="wp", show_default=True,
              help="glad: what is learned: p pixels (initialized from G), z, w (one style vector), wp (W+, one per block).")
@click.option("--layer", type=int, default=-1, show_default=True,
              help="glad: also learn the feature map after synthesis block k (lr --lr-img); -1: style vectors only.")
@click.option("--avg-w", is_flag=True, help="glad: start every image at its class-average w instead of a mapped random z.")
@click.option("--lr-w", type=float, default=1.0, show_default=True, help="glad: SGD learning rate of z / w / w+.")
@click.option("--learn-g", is_flag=True, help="glad: also learn the generator's weights (lr --lr-g).")
@click.option("--lr-g", type=float, default=0.01, show_default=True, help="glad: SGD learning rate of the generator's weights.")
@click.option("--g-batch", type=int, default=100, show_default=True,
              help="glad: images rendered per generator call (generator memory does not grow with ipc).")
@click.option("--block-impl", type=click.Choice(["auto", "fused", "reference"]), default="auto", show_default=True,
              help="ConvNet student blocks (instance norm + ReLU + avg pool, and their first and second derivatives): "
                   "auto (the fused compiled op where built for the device), fused (fail if unavailable), reference.")
@click.option("--dd-models", type=int, default=4, show_default=True, help="dd: random initializations per iteration.")
@click.option("--batch-real", type=int, default=256, show_default=True, help="dd: real images the updated networks are scored on.")
@click.option("--eval-it", type=int, default=100, show_default=True, help="Evaluate on the validation split every this many iterations.")
@click.option("--eval-epochs", type=int, default=300, show_default=True, help="Epochs of each validation evaluation.")
@click.option("--eval-repeats", type=int, default=1, show_default=True)
@click.option("--checkpoint-it", type=int, default=10, show_default=True, help="Save resumable state every this many iterations.")
@dsa_options
@click.option("--data-root", default=None, help="Where the dataset lives now, if it moved since `buffer`.")
@click.option("--out", required=True, help="Run directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run in --out.")
@common_options
@user_errors
def distill(buffer_dir, method, ipc, syn_steps, expert_epochs, max_start_epoch, iterations, engine, offload_history, lr_img, lr_lr,
            lr_teacher, batch_syn, pix_init, generator, space, layer, avg_w, lr_w, learn_g, lr_g, g_batch, block_impl, dd_models, batch_real, eval_it, eval_epochs, eval_repeats, checkpoint_it, dsa_strategy, dsa_mode, dsa_impl, data_root,
            out, overwrite, seed, device, progress):
    """Distill a synthetic set from a trajectory store."""
    from mtt_fast.distill import (
        DD_DEFAULTS,
        DDDistiller,
        DistillConfig,
        GLaDDistiller,
        MTTDistiller,
        distill_random,
    )
    from mtt_fast.experts import TrajectoryStore
    from mtt_fast.rundir import mark_complete, prepare_out

    dev = resolve_device(device)
    for name, v in (("--ipc", ipc), ("--syn-steps", syn_steps), ("--iterations", iterations), ("--eval-it", eval_it),
                    ("--checkpoint-it", checkpoint_it), ("--eval-epochs", eval_epochs), ("--eval-repeats", eval_repeats)):
        if v < 1:
            raise UserError(f"{name} must be at least 1 (got {v})")
    if method == "glad" and not generator:
        raise UserError("--method glad needs --generator (a `mtt-fast gan train` directory, a TorchScript file, or "
                        "package.module:factory)")
    if method != "glad" and generator:
        raise UserError(f"--generator is only used by --method glad (got --method {method})")
    store = TrajectoryStore.open(buffer_dir)
    defaults = DD_DEFAULTS if method == "dd" else {"lr_img": DistillConfig.lr_img, "lr_lr": DistillConfig.lr_lr}
    lr_img = defaults["lr_img"] if lr_img is None else lr_img
    lr_lr = defaults["lr_lr"] if lr_lr is None else lr_lr
    cfg = DistillConfig(method=method, ipc=ipc, syn_steps=syn_steps, expert_epochs=expert_epochs,
                        max_start_epoch=max_start_epoch, iterations=iterations, lr_img=lr_img, lr_lr=lr_lr,
                        lr_teacher=lr_teacher, batch_syn=batch_syn, pix_init=pix_init, engine=engine,
                        generator=_generator_spec(generator) if method == "glad" else None, space=space, layer=layer,
                        avg_w=avg_w, lr_w=lr_w, learn_g=learn_g, lr_g=lr_g, g_batch=g_batch, block_impl=block_impl,
                        dd_models=dd_models,
                        batch_real=batch_real,
                        offload_history=offload_history,
                        dsa=dsa_dict(dsa_strategy, dsa_mode), dsa_impl=dsa_impl, eval_it=eval_it, eval_epochs=eval_epochs,
                        eval_repeats=eval_repeats, checkpoint_it=checkpoint_it, seed=seed)
    if method in ("mtt", "glad"):
        store.check_epochs(expert_epochs, max_start_epoch)
    out = out_path(out)
    config = {"command": "distill", "buffer": str(Path(buffer_dir).resolve()), **asdict(cfg)}
    state = prepare_out(out, config, overwrite=overwrite, defaults=asdict(DistillConfig()))
    if state == "complete":
        echo(f"{out} already holds this finished run; nothing to do (pass --overwrite to run again)")
        return
    bundle = _bundle_from_meta(store.dataset_meta, data_root, progress)
    if method == "random":
        s = distill_random(bundle, store.meta, ipc, seed, out)
        echo(f"random real baseline: {len(s.labels)} images written to {out / 'synset'}")
    else:
        cls = {"glad": GLaDDistiller, "dd": DDDistiller}.get(method, MTTDistiller)
        summary = cls(store, bundle, cfg, out, device=dev, progress=progress, log=echo).run()
        echo(f"done: best validation {next(k for k in summary if k.startswith('best_val'))[9:]} "
             f"{summary[next(k for k in summary if k.startswith('best_val'))]:.2f} at iteration "
             f"{summary['best_iteration']}; synset in {out / 'synset'}")
    mark_complete(out)


def _generator_spec(spec: str) -> str:
    """A path becomes absolute (the run's config must not depend on the working directory)."""
    p = Path(spec)
    if p.exists() or ":" not in spec:
        return str(p.resolve())
    return spec


# --------------------------------------------------------------------------------------
@main.command()
@click.argument("grid", type=click.Path(dir_okay=False))
@click.option("--preset", type=click.Choice(["crc", "pg"]), default=None,
              help="Start from the paper's best settings (Table 4: crc, Table 5: pg); the grid file's base: wins.")
@click.option("--out", required=True, help="Sweep directory: one distill run per point, summary.md.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--progress/--no-progress", default=True, show_default=True)
@user_errors
def sweep(grid, preset, out, device, progress):
    """Run `distill` once per point of GRID.yaml (resumable) and rank the points by validation score."""
    from mtt_fast.rundir import mark_complete
    from mtt_fast.sweep import load_grid, point_name, summarize

    ctx = click.get_current_context()
    known = {}
    for p in distill.params:
        if p.expose_value:
            known[p.name] = p.name
            known.update({o.lstrip("-").replace("-", "_"): p.name for o in p.opts if o.startswith("--")})
    base, points = load_grid(grid, known, preset)
    out = out_path(out)
    out.mkdir(parents=True, exist_ok=True)
    if "buffer_dir" not in base and not all("buffer_dir" in p for p in points):
        raise UserError(f"{grid}: set buffer (the trajectory store) under base:")
    defaults = {p.name: p.get_default(ctx, call=True) for p in distill.params if p.expose_value}
    statuses = {}
    for i, point in enumerate(points):
        name = point_name(point)
        echo(f"[{i + 1}/{len(points)}] {name}")
        kwargs = {**defaults, **base, **point, "out": str(out / name), "device": device, "progress": progress,
                  "overwrite": False}
        try:
            distill.callback.__wrapped__(**kwargs)
            statuses[name] = "complete" if (out / name / "COMPLETE").exists() else "incomplete"
        except UserError as e:  # one diverging point must not end the sweep
            statuses[name] = f"failed: {e}"
            echo(f"  failed: {e}")
    summary = summarize(out, base, points, statuses)
    echo((out / "summary.md").read_text())
    if all(r["status"] == "complete" for r in summary["rows"]):
        mark_complete(out)
    else:
        raise UserError(f"{sum(r['status'] != 'complete' for r in summary['rows'])} of {len(points)} points did not "
                        f"finish; see {out / 'summary.md'} (rerun to resume)")


# --------------------------------------------------------------------------------------
@main.command("eval")
@click.option("--synset", "synset_dir", required=True, help="A synset directory (or a distill run directory).")
@click.option("--data-root", default=None, help="Where the dataset lives now, if it moved.")
@click.option("--archs", default="convnet", show_default=True, help="Comma-separated: convnet,alexnet,vgg11,resnet18.")
@click.option("--repeats", type=int, default=3, show_default=True, help="Networks trained per architecture.")
@click.option("--epochs", type=int, default=1000, show_default=True, help="Half linear warm-up, half cosine decay.")
@click.option("--lr", type=float, default=None,
              help="Starting learning rate of every architecture (default: the synset's learned syn_lr on its own "
                   "backbone; alexnet 0.001, vgg11 0.0001, resnet18 0.001 as the GLaD reference; else 0.01).")
@click.option("--batch-size", type=int, default=256, show_default=True)
@click.option("--split", type=click.Choice(["test", "val"]), default="test", show_default=True)
@dsa_options
@click.option("--out", required=True, help="Directory for results.json and results.md.")
@click.option("--overwrite", is_flag=True, help="Replace existing results in --out.")
@common_options
@user_errors
def eval_cmd(synset_dir, data_root, archs, repeats, epochs, lr, batch_size, split, dsa_strategy, dsa_mode, dsa_impl, out,
             overwrite, seed, device, progress):
    """Train networks from scratch on a synset and test them on real data."""
    from mtt_fast.evaluate.protocol import EvalConfig
    from mtt_fast.evaluate.run import evaluate_synset, write_results
    from mtt_fast.models import get_network
    from mtt_fast.rundir import mark_complete, prepare_out
    from mtt_fast.synth import Synset

    dev = resolve_device(device)
    arch_list = [a.strip() for a in archs.split(",") if a.strip()]
    for a in arch_list:
        get_network(a, 3, 2, 32)
    if repeats < 1 or epochs < 1:
        raise UserError("--repeats and --epochs must be at least 1")
    synset = Synset.load(synset_dir)
    m = synset.meta
    cfg = EvalConfig(epochs=epochs, lr=lr, batch_size=batch_size, dsa=dsa_dict(dsa_strategy, dsa_mode), dsa_impl=dsa_impl,
                     width=m.get("width", 128), depth=m.get("depth", 3))
    out = out_path(out)
    config = {"command": "eval", "synset": str(Path(synset_dir).resolve()), "archs": arch_list, "repeats": repeats,
              "split": split, "seed": seed, **asdict(cfg)}
    state = prepare_out(out, config, overwrite=overwrite, defaults=asdict(EvalConfig()))
    if state == "complete":
        echo(f"{out} already holds these results; nothing to do (pass --overwrite to evaluate again)")
        return
    bundle = _bundle_from_meta(m["dataset"], data_root, progress)
    if list(bundle.classes) != list(m["classes"]) or bundle.res != synset.images.shape[-1] or bundle.channels != synset.images.shape[1]:
        raise UserError(f"--synset {synset_dir} was made for classes {m['classes']} at {synset.images.shape[-1]} px, "
                        f"but the dataset gives {bundle.classes} at {bundle.res} px")
    echo(f"evaluating {m.get('method')} ipc {m.get('ipc')} on {split}: {', '.join(arch_list)} x {repeats}, {epochs} epochs")
    results = evaluate_synset(synset, bundle, arch_list, cfg, repeats=repeats, split=split, seed=seed, device=dev,
                              progress=progress, log=echo)
    write_results(out, results, f"{m.get('method')}")
    mark_complete(out)
    echo(f"results in {out / 'results.json'} and {out / 'results.md'}")


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
    from mtt_fast.demo import run_demo

    run_demo(out_path(out), data_root=data_root, overwrite=overwrite, seed=seed, device=resolve_device(device),
             progress=progress, log=echo)


from mtt_fast.cli.gan import gan

main.add_command(gan)
from mtt_fast.cli.report import report

main.add_command(report)

if __name__ == "__main__":
    main()
