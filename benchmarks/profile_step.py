"""Where one distillation iteration's time goes: torch.profiler by op family and by pass.

Setting (issue 19's fmnist setting): 28x28x1, ConvNet-D3 width 128 instance norm, 10
classes, ipc 10 (100 images), batch_syn 100, DSA on, N = 10, 2 threads, default ops. Two
engine paths are profiled, one iteration each after a warm-up:

* ``kept``: ``auto`` with room for every step's graph (what the default budget gives here;
  the same work as ``full``): forward + first backward (create_graph) per step, then one
  double backward through the whole unroll.
* ``adjoint``: ``auto`` with a budget that keeps no graph (= the ``adjoint`` engine): a
  graph-free forward + backward per step, then per step a recomputed forward + backward and
  the double backward of ``lambda . g``.

Passes are the ``match.*`` ``record_function`` labels the engines carry; every aten op is
charged (self CPU time) to the innermost pass whose interval holds it, and to a family by
its name. Each convolution is charged its FLOPs (``2 * B * Cout * Ho * Wo * Cin * kh * kw``
per forward; ``convolution_backward`` counts one such product per output it computes, dX
and/or dW, from its ``output_mask``), split by the first layer (Cin = 1) and the rest, so
each pass shows the GFLOP/s its convolutions reach.

Writes benchmarks/results/profile_cpu.json and .md. Run:

    PYTHONPATH=$PWD python benchmarks/profile_step.py [--steps 10] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from collections import defaultdict
from pathlib import Path

import torch

from _meta import source_commit

RESULTS = Path(__file__).parent / "results"

FAMILIES = [  # (family, substrings of the aten / custom op name), first match wins
    ("conv", ("convolution", "conv2d", "mkldnn_conv", "conv_depthwise", "_nnpack", "slow_conv")),
    ("block (norm+relu+pool)", ("mtt_fast::convblock", "mtt_fast::block", "group_norm", "native_group_norm",
                                "relu", "threshold", "avg_pool", "instance_norm")),
    ("dsa", ("mtt_fast::dsa", "grid_sampler", "affine_grid")),
    ("linear / matmul", ("addmm", "::mm", "::bmm", "matmul", "linear", "::dot", "::vdot")),
    ("loss (softmax/CE)", ("softmax", "nll_loss", "cross_entropy", "traj_loss")),
    ("indexing / copies", ("index", "gather", "scatter", "copy_", "clone", "contiguous", "cat", "split", "view",
                           "reshape", "slice", "select", "as_strided", "unbind", "narrow", "to_copy", "_to_copy",
                           "empty", "zeros", "fill_", "stack")),
    ("elementwise / reductions", ("add", "sub", "mul", "div", "sum", "mean", "neg", "pow", "sqrt", "where", "exp",
                                  "log", "sign", "clamp", "square", "lerp", "ones_like", "zero_", "masked")),
]


def _family(name: str) -> str:
    for fam, keys in FAMILIES:
        if any(k in name for k in keys):
            return fam
    return "other"


def _conv_flops(name: str, shapes: list, concrete: list) -> tuple[int, int]:
    """(FLOPs, input channels) of a conv event from its recorded shapes; (0, 0) when unknown.

    A convolution costs ``2 * (output elements) * (weight elements per output channel)``;
    a transposed one ``2 * (input elements) * (weight elements per input channel)``. The
    double backward's convolutions (weight gradients as convolutions over the batch) follow
    the same count with their own operands.
    """
    try:
        if name in ("aten::convolution", "aten::_convolution"):
            x, w = shapes[0], shapes[1]
            stride, pad, dil, transposed = concrete[3], concrete[4], concrete[5], bool(concrete[6])
        elif name == "aten::conv2d":
            x, w = shapes[0], shapes[1]
            stride, pad, dil, transposed = concrete[3], concrete[4], concrete[5], False
        elif name == "aten::convolution_backward":
            x, w = shapes[1], shapes[2]
            stride, pad, dil, transposed = concrete[4], concrete[5], concrete[6], bool(concrete[7])
        else:
            return 0, 0
        n, cin, h, wd = x
        kh, kw = w[2], w[3]
        if transposed:
            one = 2 * n * h * wd * w[0] * w[1] * kh * kw
        else:
            ho = (h + 2 * pad[0] - dil[0] * (kh - 1) - 1) // stride[0] + 1
            wo = (wd + 2 * pad[1] - dil[1] * (kw - 1) - 1) // stride[1] + 1
            one = 2 * n * w[0] * ho * wo * w[1] * kh * kw
        if name == "aten::convolution_backward":
            mask = concrete[-1] if concrete and isinstance(concrete[-1], (list, tuple)) else [True, True, False]
            one *= int(bool(mask[0])) + int(bool(mask[1]))
        return one, cin
    except (IndexError, TypeError, ValueError):
        return 0, 0


def _flops_of(e) -> tuple[int, int]:
    return _conv_flops(e.name, e.input_shapes or [], list(getattr(e, "concrete_inputs", None) or []))


def _ancestors(e):
    p = e.cpu_parent
    while p is not None:
        yield p
        p = p.cpu_parent


def _setup(steps: int, width: int = 128):
    from mtt_fast.augment import DSAConfig
    from mtt_fast.match import Student, plan_steps
    from mtt_fast.models import FlatParams, get_network

    torch.manual_seed(0)
    net = get_network("convnet", 1, 10, 28, width=width, depth=3)
    student = Student.of(net)
    start = FlatParams.of(net).flatten(net)
    target = start + 0.01 * torch.randn_like(start)
    images = torch.randn(100, 1, 28, 28)
    labels = torch.arange(100) % 10
    lr = torch.tensor(0.01)
    gen = torch.Generator().manual_seed(1)

    def plan():
        return plan_steps(100, (1, 28, 28), steps, 100, DSAConfig(), gen)

    return student, start, target, images, labels, lr, plan


def profile_path(path: str, steps: int) -> dict:
    """Profile one iteration of ``path`` ("kept" or "adjoint") after a warm-up; the summary dict."""
    from torch.profiler import ProfilerActivity, profile

    from mtt_fast.match import match_auto

    student, start, target, images, labels, lr, plan = _setup(steps)
    budget = 10**13 if path == "kept" else 1  # 1 byte: keeps nothing (over budget: runs as the adjoint)

    def run():
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return match_auto(student, start, target, images, labels, lr, plan(), memory_budget=budget)

    run()  # warm-up
    t0 = time.perf_counter()
    c0 = time.process_time()
    res = run()
    wall_plain, cpu_plain = time.perf_counter() - t0, time.process_time() - c0
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        run()
        wall_prof = time.perf_counter() - t0
    events = list(prof.events())
    passes = [e for e in events if e.name.startswith("match.")]
    ops = [e for e in events if not e.name.startswith("match.") and not e.name.startswith("ProfilerStep")]

    def pass_of(e) -> str:
        best, span = "outside passes", math.inf
        for p in passes:
            if p.thread == e.thread and p.time_range.start <= e.time_range.start and e.time_range.end <= p.time_range.end:
                if p.time_range.elapsed_us() < span:
                    best, span = p.name, p.time_range.elapsed_us()
        return best

    by_pass_family: dict = defaultdict(lambda: defaultdict(float))
    conv: dict = defaultdict(lambda: {"flops": 0, "us": 0.0, "calls": 0})
    for e in ops:
        us = e.self_cpu_time_total
        if us <= 0:
            continue
        p = pass_of(e)
        fam = _family(e.name)
        by_pass_family[p][fam] += us
        fl, cin = _flops_of(e)
        if fl and not any(_flops_of(a)[0] for a in _ancestors(e)):  # nested conv calls count once
            kind = "fwd conv" if e.name != "aten::convolution_backward" else "conv backward (dX and/or dW)"
            key = f"{p} | {kind} | {'layer 1 (Cin=1)' if cin == 1 else 'layers 2-3'}"
            conv[key]["flops"] += fl
            # a conv's own time is its self time plus its aten children (mkldnn kernels) charged to conv
            conv[key]["us"] += e.cpu_time_total
            conv[key]["calls"] += 1
    for k in conv:
        conv[k]["gflops_per_s"] = conv[k]["flops"] / max(conv[k]["us"], 1e-9) / 1e3
    total_us = sum(sum(f.values()) for f in by_pass_family.values())
    fam_tot: dict = defaultdict(float)
    for f in by_pass_family.values():
        for k, v in f.items():
            fam_tot[k] += v
    return {"path": path, "steps": steps, "kept_steps": res.info["kept_steps"], "wall_s": wall_plain,
            "cpu_s": cpu_plain, "wall_s_profiled": wall_prof, "self_cpu_s_total": total_us / 1e6,
            "by_family_s": {k: v / 1e6 for k, v in sorted(fam_tot.items(), key=lambda kv: -kv[1])},
            "by_pass_s": {p: sum(f.values()) / 1e6 for p, f in by_pass_family.items()},
            "by_pass_family_s": {p: {k: v / 1e6 for k, v in f.items()} for p, f in by_pass_family.items()},
            "conv": {k: dict(v) for k, v in sorted(conv.items())},
            "conv_total_gflop": sum(v["flops"] for v in conv.values()) / 1e9,
            "conv_total_gflops_per_s": sum(v["flops"] for v in conv.values()) / max(sum(v["us"] for v in conv.values()), 1) / 1e3}


# ------------------------------------------------------------------------------ conv rate by plain timers
def _conv_timer():
    """A ``TorchDispatchMode`` that times every ``aten.convolution`` / ``aten.convolution_backward``
    call (the two ops every conv path ends in, ours and autograd's double backward alike) with
    ``perf_counter`` around the call, and charges it the FLOPs ``_conv_flops`` counts. CPU ops run
    synchronously, so the interval is the op's own time; unlike the profiler it adds nothing inside
    the interval (the profiler's per-op records inflate some events: layer 1's double-backward conv
    reads about 140 ms under it against 8 ms by this timer)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    names = {aten.convolution.default: "aten::convolution", aten.convolution_backward.default: "aten::convolution_backward"}

    class ConvTimer(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.records: list[tuple[int, int, float]] = []  # (FLOPs, input channels, seconds)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            name = names.get(func)
            if name is None:
                return func(*args, **kwargs)
            t = time.perf_counter()
            out = func(*args, **kwargs)
            dt = time.perf_counter() - t
            shapes = [list(a.shape) if isinstance(a, torch.Tensor) else None for a in args]
            fl, cin = _conv_flops(name, shapes, list(args))
            self.records.append((fl, cin, dt))
            return out

    return ConvTimer


def conv_rates(steps: int, reps: int, variants: tuple[str, ...] = ("default", "native conv")) -> list[dict]:
    """The GFLOP/s the student convolutions reach in whole unprofiled iterations: each path
    (kept, adjoint) and conv variant, ``reps`` iterations after a warm-up, the variants
    interleaved; per iteration the wall time, the conv seconds and FLOPs (all layers and layer 1)."""
    import statistics
    import warnings

    from mtt_fast.match import match_auto
    from mtt_fast.models import networks

    student, start, target, images, labels, lr, plan = _setup(steps)
    forwards = {k: v for k, v in _variant_forwards().items() if any(k.startswith(s) for s in variants)}
    default, timer = networks.ConvNet.forward, _conv_timer()
    out = []
    try:
        for path, budget in (("kept", 10**13), ("adjoint", 1)):
            p = plan()
            its: dict = {k: [] for k in forwards}
            for rep in range(reps + 1):  # rep 0: warm-up, not kept
                for name, fwd in forwards.items():
                    networks.ConvNet.forward = fwd
                    mode = timer()
                    with warnings.catch_warnings(), mode:
                        warnings.simplefilter("ignore")
                        t = time.perf_counter()
                        match_auto(student, start, target, images, labels, lr, p, memory_budget=budget)
                        wall = time.perf_counter() - t
                    if rep:
                        rec = mode.records
                        fl, s = sum(r[0] for r in rec), sum(r[2] for r in rec)
                        fl1, s1 = sum(r[0] for r in rec if r[1] == 1), sum(r[2] for r in rec if r[1] == 1)
                        its[name].append({"wall_s": wall, "conv_s": s, "conv_gflop": fl / 1e9, "calls": len(rec),
                                          "gflops_per_s": fl / s / 1e9, "layer1_gflop": fl1 / 1e9, "layer1_s": s1,
                                          "layer1_gflops_per_s": fl1 / max(s1, 1e-12) / 1e9})
            for name, rows in its.items():
                med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
                out.append({"path": path, "variant": name, "iterations": rows, "median": med})
    finally:
        networks.ConvNet.forward = default
    return out


def _conv_rate_markdown(rates: list[dict], steps: int, reps: int) -> str:
    lines = [f"### Conv rate of whole unprofiled iterations (N = {steps}, {reps} iterations after a warm-up, "
             "variants interleaved; medians)", "",
             "Each `aten.convolution` / `aten.convolution_backward` call timed by `perf_counter` around it "
             "(a dispatch mode, no profiler), its FLOPs counted as above. This is the figure of record for "
             "the conv rate: the profiler's per-op records inflate some conv events (compare the wall "
             "times above, profiled vs unprofiled).", "",
             "| path | conv variant | iteration wall s | conv s | conv GFLOP | GFLOP/s (median) | each iteration | layer 1 GFLOP/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rates:
        m = r["median"]
        each = " / ".join(f"{it['gflops_per_s']:.0f}" for it in r["iterations"])
        lines.append(f"| {r['path']} | {r['variant']} | {m['wall_s']:.2f} | {m['conv_s']:.2f} | {m['conv_gflop']:.0f} "
                     f"| {m['gflops_per_s']:.0f} | {each} | {m['layer1_gflops_per_s']:.0f} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ experiments
def _unfold_first_conv(conv, h):
    """The first conv as im2col + matmul (a candidate path for 1-channel input)."""
    from torch.nn import functional as F

    w, pad, k = conv.weight, conv.padding, conv.kernel_size
    n, _, hh, ww = h.shape
    cols = F.unfold(h, k, padding=pad)
    ho, wo = hh + 2 * pad[0] - k[0] + 1, ww + 2 * pad[1] - k[1] + 1
    return (torch.matmul(w.reshape(w.shape[0], -1), cols) + conv.bias.view(1, -1, 1)).view(n, w.shape[0], ho, wo)


def _variant_forwards() -> dict:
    """ConvNet.forward replacements: the default (ops.conv convolutions, fused block), the native
    convolution, the first conv via unfold, the native block in NCHW and channels-last."""
    from mtt_fast.models import networks
    from mtt_fast.ops import block as fused_block

    default = networks.ConvNet.forward

    def unfold_first(self, x):
        h = x
        for d in range(self.depth):
            conv, norm = self.features[4 * d], self.features[4 * d + 1]
            c = _unfold_first_conv(conv, h) if d == 0 else self._conv(conv, h)
            h = fused_block.convblock(c, norm.weight, norm.bias, norm.eps, impl="auto")
        return self.classifier(h.flatten(1))

    def native_conv(self, x):  # nn.Conv2d: autograd's own double backward (the default before ops.conv)
        before = self.conv_impl
        self.conv_impl = "native"
        try:
            return default(self, x)
        finally:
            self.conv_impl = before

    def reference_nchw(self, x):  # native conv/group_norm/relu/pool (the path channels-last can use)
        return self.classifier(self.features(x).flatten(1))

    def reference_channels_last(self, x):
        return self.classifier(self.features(x.contiguous(memory_format=torch.channels_last)).flatten(1))

    def merged_gy_bar(self, x):  # ops.conv's double backward with gy_bar's two convs as one (channel concat)
        return default(self, x)

    from mtt_fast.ops import conv as conv_op

    from torch.nn import functional as F

    two_convs = conv_op._gy_bar

    def one_conv_gy_bar(x, w, ggx, ggw, stride, padding, dilation):
        """``conv(x, ggw) + conv(ggx, w)`` as ONE convolution of the channel-concatenated
        operands (same FLOPs, one GEMM with twice the reduction length)."""
        if ggw is None or ggx is None:
            return two_convs(x, w, ggx, ggw, stride, padding, dilation)
        return F.conv2d(torch.cat([x, ggx], 1), torch.cat([ggw, w], 1), None, stride, padding, dilation)

    # patched for the whole iteration (the double backward runs after the forward has returned)
    merged_gy_bar.patch = (conv_op, "_gy_bar", one_conv_gy_bar)

    return {"default (ops.conv convs, fused block, NCHW)": default, "first conv via unfold+matmul": unfold_first,
            "gy_bar as one conv (channel concat)": merged_gy_bar,
            "native conv (autograd's double backward)": native_conv,
            "native block, NCHW": reference_nchw, "native block, channels-last": reference_channels_last}


def experiments(steps: int, reps: int, only: str = "") -> list[dict]:
    """Each candidate vs the default on the kept and the adjoint path: CPU seconds per iteration
    (process time, robust to other jobs on the machine), interleaved, median of reps 2..; and the
    relative difference of d loss / d images from the default (float32)."""
    import statistics
    import warnings

    from mtt_fast.match import match_auto
    from mtt_fast.models import networks

    student, start, target, images, labels, lr, plan = _setup(steps)
    variants = _variant_forwards()
    keys = [k for k in only.split(",") if k]
    if keys:  # the default first, then the named candidates (substrings of their names)
        variants = {k: v for i, (k, v) in enumerate(variants.items()) if i == 0 or any(s in k for s in keys)}
    default = networks.ConvNet.forward
    out = []
    try:
        for path, budget in (("kept", 10**13), ("adjoint", 1)):
            p = plan()
            times: dict = {k: [] for k in variants}
            grads: dict = {}
            for _ in range(reps):
                for name, fwd in variants.items():
                    networks.ConvNet.forward = fwd
                    patch = getattr(fwd, "patch", None)  # (object, attribute, value) set for the iteration
                    saved = patch and patch[0].__dict__[patch[1]]
                    if patch:
                        setattr(*patch)
                    t = time.process_time()
                    try:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            grads[name] = match_auto(student, start, target, images, labels, lr, p,
                                                     memory_budget=budget).grad_images
                    finally:
                        if patch:
                            setattr(patch[0], patch[1], saved)
                    times[name].append(time.process_time() - t)
            base = next(iter(variants))
            med = {k: statistics.median(v[1:] if len(v) > 1 else v) for k, v in times.items()}
            for name in variants:
                out.append({"path": path, "variant": name, "cpu_s": times[name], "median_cpu_s": med[name],
                            "vs_default": med[name] / med[base],
                            "grad_rel_diff": float((grads[name] - grads[base]).norm() / grads[base].norm())})
    finally:
        networks.ConvNet.forward = default
    return out


def _markdown(results: list[dict], threads: int) -> str:
    lines = [f"CPU: {platform.processor() or 'cpu'} ({os.cpu_count()} CPUs, {threads} threads, torch {torch.__version__}); "
             "fmnist setting (28x28x1, ConvNet-D3 w128 instancenorm, 100 images, batch_syn 100, DSA on), "
             f"N = {results[0]['steps']}, one profiled iteration after a warm-up. Times are the ops' self CPU "
             "time (summed over threads' work as the profiler sees it on the calling thread).", ""]
    for r in results:
        lines += [f"### {r['path']} ({r['kept_steps']} kept step graphs): {r['wall_s']:.2f} s wall, "
                  f"{r['cpu_s']:.2f} s CPU unprofiled; {r['wall_s_profiled']:.2f} s wall profiled", "",
                  "| op family | s | share |", "|---|---|---|"]
        tot = r["self_cpu_s_total"]
        lines += [f"| {k} | {v:.2f} | {v / tot:.0%} |" for k, v in r["by_family_s"].items()]
        lines += ["", "| pass | s | share | of which conv |", "|---|---|---|---|"]
        for p, v in sorted(r["by_pass_s"].items(), key=lambda kv: -kv[1]):
            lines.append(f"| {p} | {v:.2f} | {v / tot:.0%} | {r['by_pass_family_s'][p].get('conv', 0):.2f} |")
        lines += ["", "| pass / conv kind / layer | calls | GFLOP | s | GFLOP/s |", "|---|---|---|---|---|"]
        for k, v in r["conv"].items():
            lines.append(f"| {k} | {v['calls']} | {v['flops'] / 1e9:.1f} | {v['us'] / 1e6:.2f} | {v['gflops_per_s']:.0f} |")
        lines += ["", f"All convolutions: {r['conv_total_gflop']:.1f} GFLOP at {r['conv_total_gflops_per_s']:.0f} GFLOP/s.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--paths", default="kept,adjoint")
    ap.add_argument("--out", default=None, help="result path stem (default results/profile_cpu)")
    ap.add_argument("--experiment-steps", type=int, default=2, help="N of the candidate A/B runs (0: skip them)")
    ap.add_argument("--experiment-reps", type=int, default=4)
    ap.add_argument("--variants", default="", help="comma list of substrings: only these candidates (and the default)")
    ap.add_argument("--rate-reps", type=int, default=3, help="unprofiled iterations timed per path and conv variant "
                    "for the conv rate (0: skip)")
    args = ap.parse_args()
    from mtt_fast.runtime import retain_freed_memory

    torch.set_num_threads(args.threads)
    retained = retain_freed_memory()  # what every stage does (MTT_FAST_MALLOC=system: the system allocator)
    results = [profile_path(p, args.steps) for p in args.paths.split(",")] if args.paths else []
    rates = conv_rates(args.steps, args.rate_reps) if args.rate_reps else []
    exp = experiments(args.experiment_steps, args.experiment_reps, args.variants) if args.experiment_steps else []
    md = _markdown(results, args.threads) if results else ""
    alloc = ("freed memory kept for reuse (mtt_fast.runtime.retain_freed_memory, what the stages do)" if retained
             else "the system allocator (MTT_FAST_MALLOC=system)")
    md = f"Allocator: {alloc}.\n\n" + md
    if rates:
        md += "\n" + _conv_rate_markdown(rates, args.steps, args.rate_reps)
    if exp:
        md += (f"\n### Candidates (N = {args.experiment_steps}, {args.threads} threads; CPU s per iteration, "
               f"median of reps 2-{args.experiment_reps}, interleaved)\n\n"
               "| path | variant | CPU s / it | vs default | d/dx rel. diff (fp32) |\n|---|---|---|---|---|\n")
        md += "\n".join(f"| {e['path']} | {e['variant']} | {e['median_cpu_s']:.2f} | {e['vs_default']:.2f}x "
                         f"| {e['grad_rel_diff']:.1e} |" for e in exp) + "\n"
    md += (f"\nLoad average when written: {', '.join(f'{v:.1f}' for v in os.getloadavg())} "
           f"(on {os.cpu_count()} CPUs; other jobs share the machine, so wall times and GFLOP/s are lower bounds).\n")
    print(md)
    stem = Path(args.out) if args.out else RESULTS / "profile_cpu"
    from mtt_fast.ops import extension_info

    stem.with_suffix(".json").write_text(json.dumps(
        {"benchmark": "profile_step", "cpus": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
         "commit": source_commit(), "extension": extension_info().get("loaded"), "load_average": os.getloadavg(),
         "retained_heap": retained, "results": results, "conv_rates": rates, "experiments": exp}, indent=2) + "\n")
    stem.with_suffix(".md").write_text(md + "\n")
    print(f"wrote {stem.with_suffix('.json')} and .md")


if __name__ == "__main__":
    main()
