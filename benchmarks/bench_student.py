"""Benchmark: the fused ConvNet block (mtt_fast.ops.block) against the native nn ops.

Part 1, one student step: forward, CE gradient with a graph, Hessian-vector product
w.r.t. (theta, x) -- what the adjoint engine does per step in its reverse sweep -- for
  d3   ConvNet-D3 width 128, batch 100, 32x32x3   (the distillation setting)
  d5   ConvNet-D5 width 128, batch --d5-batch, 128x128x3
fused vs native blocks, interleaved in one process (medians of --repeats and their ratio
from the same run). "Saved activations" are the bytes of the distinct storages autograd
saves during the forward and the gradient-with-graph (torch.autograd.graph.saved_tensors_hooks;
the parameter vector and the input images excluded): what a step holds at its peak on top
of the inputs. The peak RSS of a child process running the same step is reported beside it.

Part 2, one distillation iteration (cifar shape, ipc 10 = 100 images, batch_syn 100, DSA on,
N = --steps, random images and trajectories as in bench_engines.py): adjoint engine with
fused blocks, adjoint with native blocks and the `full` engine with native blocks (the
reference engine), each in its own child process, the three interleaved --iter-rounds
times; median seconds per iteration and peak RSS.

The floor: the conv work of one iteration at N=20 is about 1.4 TFLOP, 7.5 s at the ~190
GFLOP/s oneDNN reaches on a 2-core machine (issue 6); the ratio of each engine's time to
that floor is reported, with the conv throughput measured in this run beside it (a loaded
machine makes everything slower, the floor included).

On a machine shared with other jobs, every parallel region with 2 threads can wait a
scheduler slice for a descheduled thread; --threads 2,1 also measures the student step on
one thread, where the ratio reflects the work done rather than the synchronizations.

Writes benchmarks/results/student_{cpu,cuda}.json and .md (about 15 minutes on 2 cores). Run:
  python benchmarks/bench_student.py --threads 2,1 --iters 1 --iter-rounds 2   (the CPU result)
  python benchmarks/bench_student.py --device cuda [--skip-iteration]
  python benchmarks/bench_student.py --render benchmarks/results/student_cpu.json  (rewrite the .md)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _meta import source_commit

RESULTS = Path(__file__).parent / "results"
FLOOR_S = 7.5          # issue 6: ~1.4 TFLOP of conv per iteration (N=20) at ~190 GFLOP/s
FLOOR_GFLOPS = 190.0


def _config(name: str, args) -> dict:
    if name == "d3":
        return {"name": "d3", "depth": 3, "res": 32, "channels": 3, "batch": 100, "width": 128}
    if name == "d5":
        return {"name": "d5", "depth": 5, "res": 128, "channels": 3, "batch": args.d5_batch, "width": 128}
    raise SystemExit(f"unknown config {name}")


def _setup(cfg: dict, device: str):
    import torch

    from mtt_fast.models import ConvNet, FlatParams

    torch.manual_seed(0)
    net = ConvNet(cfg["channels"], 10, cfg["res"], width=cfg["width"], depth=cfg["depth"]).to(device)
    layout = FlatParams.of(net)
    theta = layout.flatten(net)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(cfg["batch"], cfg["channels"], cfg["res"], cfg["res"], generator=g).to(device)
    y = (torch.arange(cfg["batch"]) % 10).to(device)
    v = torch.randn(theta.shape, generator=g).to(device) * 1e-3
    return net, layout, theta, x, y, v


def _step(net, layout, theta0, x0, y, v, saved: list | None = None):
    """Forward, gradient with a graph, HVP w.r.t. (x, theta). Returns the HVP w.r.t. theta."""
    import torch
    from torch.nn import functional as F

    from mtt_fast.models import forward_flat

    theta = theta0.detach().requires_grad_(True)
    x = x0.detach().requires_grad_(True)
    if saved is None:
        logits = forward_flat(net, layout, theta, x)
        (g,) = torch.autograd.grad(F.cross_entropy(logits, y), theta, create_graph=True)
    else:
        skip = {theta.untyped_storage().data_ptr(), x.untyped_storage().data_ptr()}

        def pack(t):
            st = t.untyped_storage()
            if st.data_ptr() not in skip:
                saved.append((st.data_ptr(), st.nbytes()))
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logits = forward_flat(net, layout, theta, x)
            (g,) = torch.autograd.grad(F.cross_entropy(logits, y), theta, create_graph=True)
    _hx, ht = torch.autograd.grad(torch.dot(v, g), (x, theta))
    return ht


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _saved_bytes(cfg: dict, device: str, impl: str) -> int:
    net, layout, theta, x, y, v = _setup(cfg, device)
    net.block_impl = impl
    saved: list = []
    _step(net, layout, theta, x, y, v, saved)
    return sum(dict(saved).values())


def student_part(cfg: dict, device: str, repeats: int) -> dict:
    import torch

    net, layout, theta, x, y, v = _setup(cfg, device)
    times = {"fused": [], "native": []}
    impl_of = {"fused": "fused", "native": "reference"}
    outs = {}
    for name in ("fused", "native"):  # warm-up, and the two results for a sanity check
        net.block_impl = impl_of[name]
        outs[name] = _step(net, layout, theta, x, y, v)
    err = float((outs["fused"] - outs["native"]).abs().max() / outs["native"].abs().max())
    for r in range(repeats):
        order = ("fused", "native") if r % 2 == 0 else ("native", "fused")
        for name in order:
            net.block_impl = impl_of[name]
            _sync(device)
            t = time.perf_counter()
            _step(net, layout, theta, x, y, v)
            _sync(device)
            times[name].append(time.perf_counter() - t)
    del outs
    saved = {name: _saved_bytes(cfg, device, impl_of[name]) for name in ("fused", "native")}
    row = {
        "config": cfg,
        "seconds": times,
        "median_s": {k: statistics.median(t) for k, t in times.items()},
        "saved_mib": {k: b / 2**20 for k, b in saved.items()},
        "hvp_rel_diff": err,
    }
    row["speedup"] = row["median_s"]["native"] / row["median_s"]["fused"]
    row["saved_reduction"] = 1.0 - saved["fused"] / saved["native"]
    if device == "cpu":
        for name in ("fused", "native"):
            r = _run_child({"kind": "step_rss", "cfg": cfg, "impl": impl_of[name], "device": device,
                            "threads": cfg.get("threads")})
            row.setdefault("peak_rss_mib", {})[name] = r.get("peak_mib")
    elif device.startswith("cuda"):
        for name in ("fused", "native"):
            net.block_impl = impl_of[name]
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            _step(net, layout, theta, x, y, v)
            torch.cuda.synchronize()
            row.setdefault("peak_cuda_mib", {})[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
    return row


def conv_gflops(device: str) -> float:
    """Measured throughput of the D3 middle conv (128 -> 128, 3x3, 16x16, batch 100), forward."""
    import torch
    from torch.nn import functional as F

    x = torch.randn(100, 128, 16, 16, device=device)
    w = torch.randn(128, 128, 3, 3, device=device)
    flops = 2 * 100 * 128 * 16 * 16 * 128 * 9
    F.conv2d(x, w, padding=1)
    ts = []
    for _ in range(5):
        _sync(device)
        t = time.perf_counter()
        F.conv2d(x, w, padding=1)
        _sync(device)
        ts.append(time.perf_counter() - t)
    return flops / statistics.median(ts) / 1e9


# ------------------------------------------------------------------------------ children
def _peak_rss_mib() -> float | None:
    from mtt_fast.memory import child_peak_rss_mib

    return child_peak_rss_mib()


def _child(spec: dict) -> dict:
    import torch

    process_peak_rss_mib = _peak_rss_mib
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    if spec["kind"] == "step_rss":
        net, layout, theta, x, y, v = _setup(spec["cfg"], spec["device"])
        net.block_impl = spec["impl"]
        base = process_peak_rss_mib()
        _step(net, layout, theta, x, y, v)
        return {"peak_mib": process_peak_rss_mib(), "base_mib": base}

    from mtt_fast.augment import DSAConfig, uses_fused
    from mtt_fast.match import ENGINES, Student, plan_steps
    from mtt_fast.models import FlatParams, get_network

    dev = torch.device(spec["device"])
    torch.manual_seed(0)
    c, res, ncls = 3, 32, 10
    net = get_network("convnet", c, ncls, res, width=128, depth=3, block_impl=spec["impl"]).to(dev)
    student = Student.of(net)
    start = FlatParams.of(net).flatten(net)
    target = start + 0.01 * torch.randn_like(start)
    n = 100
    images = torch.randn(n, c, res, res, device=dev)
    labels = torch.arange(n, device=dev) % ncls
    lr = torch.tensor(0.01, device=dev)
    engine = ENGINES[spec["engine"]]
    gen = torch.Generator().manual_seed(1)
    times = []
    for _ in range(spec["iters"]):
        aug_device = "cpu" if uses_fused(images, student.aug_impl) else dev
        plan = plan_steps(n, (c, res, res), spec["steps"], 100, DSAConfig(), gen, device=dev, aug_device=aug_device)
        _sync(spec["device"])
        t = time.perf_counter()
        r = engine(student, start, target, images, labels, lr, plan)
        float(r.loss)
        _sync(spec["device"])
        times.append(time.perf_counter() - t)
    out = {"seconds": times}
    if dev.type == "cpu":
        out["peak_mib"] = process_peak_rss_mib()
    return out


def _run_child(spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    p = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if p.returncode != 0:
        return {"error": (p.stderr or "").strip().splitlines()[-3:] or [f"exit {p.returncode}"]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def iteration_part(device: str, steps: int, rounds: int, iters: int, threads: int) -> dict:
    variants = [("adjoint", "fused"), ("adjoint", "reference"), ("full", "reference")]
    runs: dict = {f"{e}/{i}": [] for e, i in variants}
    peaks: dict = {}
    for r in range(rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for engine, impl in order:
            key = f"{engine}/{impl}"
            res = _run_child({"kind": "iteration", "engine": engine, "impl": impl, "steps": steps,
                              "iters": iters, "device": device, "threads": threads})
            if "error" in res:
                raise RuntimeError(f"{key}: {res['error']}")
            runs[key] += res["seconds"][1:] if len(res["seconds"]) > 1 else res["seconds"]
            if "peak_mib" in res:
                peaks[key] = max(peaks.get(key, 0.0), res["peak_mib"])
            print(f"  iteration {key:18} {[f'{s:.2f}' for s in res['seconds']]}", flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {"steps": steps, "seconds": runs, "median_s": med, "peak_rss_mib": peaks}


def render(out: dict) -> str:
    """The Markdown tables (and the issue's targets) of a result JSON."""
    cpu = out["device"] == "cpu"
    rows, iteration, gflops = out["student_step"], out["iteration"], out["conv_gflops"]
    lines = [(f"Device: {out['device_name']} ({out['cpus']} CPUs, torch {out['torch']}, commit {out['commit']}); "
              f"load average {out['load_average']['before']:.2f} before, {out['load_average']['after']:.2f} after "
              "(a machine shared with other jobs); medians and ratios from the same run."), "",
             "Student step (forward + gradient with graph + HVP w.r.t. theta and x), fused and native interleaved:", "",
             "| config | batch | threads | fused s | native s | speedup | saved MiB fused | saved MiB native "
             "| saved: less |" + (" peak RSS MiB fused / native |" if cpu else ""),
             "|---|---|---|---|---|---|---|---|---|" + ("---|" if cpu else "")]
    for r in rows:
        c = r["config"]
        line = (f"| ConvNet-D{c['depth']} w{c['width']} {c['res']}x{c['res']}x{c['channels']} | {c['batch']} "
                f"| {c.get('threads', '-')} | {r['median_s']['fused']:.3f} | {r['median_s']['native']:.3f} "
                f"| {r['speedup']:.2f}x | {r['saved_mib']['fused']:.0f} | {r['saved_mib']['native']:.0f} "
                f"| {100 * r['saved_reduction']:.0f}% |")
        if cpu:
            p = r.get("peak_rss_mib", {})
            line += f" {p.get('fused') or 0:.0f} / {p.get('native') or 0:.0f} |"
        lines.append(line)
    lines += ["", (f"Conv throughput measured in this run (D3 middle conv, forward): {gflops:.0f} GFLOP/s "
              f"(the issue's figure for an idle 2-core machine: {FLOOR_GFLOPS:.0f}).")]
    targets = [f"- student step >= 1.3x faster: min {min(r['speedup'] for r in rows):.2f}x",
               f"- saved activations >= 25% smaller: min {100 * min(r['saved_reduction'] for r in rows):.0f}%"]
    if iteration:
        med = iteration["median_s"]
        full = med["full/reference"]
        floor_here = iteration["floor_at_measured_gflops_s"]
        lines += ["", (f"One distillation iteration (ConvNet-D3 w128, 32x32x3, 100 images, batch 100, DSA, "
                  f"N={iteration['steps']}), each variant in its own process, interleaved:"), "",
                  ("| engine / blocks | s / iteration | vs full | vs floor 7.5 s | vs floor at measured conv speed "
                  f"({floor_here:.1f} s) | peak RSS MiB |"),
                  "|---|---|---|---|---|---|"]
        for k, s in med.items():
            lines.append(f"| {k.replace('reference', 'native')} | {s:.2f} | {s / full:.2f}x | {s / FLOOR_S:.2f}x "
                         f"| {s / floor_here:.2f}x | {iteration['peak_rss_mib'].get(k, 0):.0f} |")
        targets += [f"- adjoint (fused) no slower than full (native): {iteration['adjoint_fused_vs_full']:.2f}x",
                    (f"- adjoint (fused) within 1.5x of the 7.5 s floor: {iteration['adjoint_fused_vs_floor']:.2f}x "
                    f"({med['adjoint/fused'] / floor_here:.2f}x of the floor at this run's conv speed)")]
    lines += ["", "Issue 6 targets:", "", *targets]
    return "\n".join(lines)


def _load() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--configs", default="d3,d5")
    ap.add_argument("--d5-batch", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5, help="timed student steps per implementation")
    ap.add_argument("--steps", type=int, default=20, help="N of the distillation iteration")
    ap.add_argument("--iter-rounds", type=int, default=2, help="interleaved rounds of the three iteration variants")
    ap.add_argument("--iters", type=int, default=2, help="iterations per child (the first is a warm-up when > 1)")
    ap.add_argument("--threads", default=None,
                    help="comma list of torch thread counts for the student-step part (default: torch's); "
                         "the iteration part uses the first")
    ap.add_argument("--skip-iteration", action="store_true")
    ap.add_argument("--render", metavar="JSON", help="only rewrite the .md of an existing result JSON")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return
    if args.render:
        path = Path(args.render)
        path.with_suffix(".md").write_text(render(json.loads(path.read_text())) + "\n")
        print(path.with_suffix(".md").read_text())
        return

    import torch

    from mtt_fast.ops import block, extension_info

    if "cpu" not in block.COMPILED_DEVICES and args.device == "cpu":
        raise SystemExit("mtt_fast._C with the convblock ops is not loaded: build it first")
    load_before = _load()
    threads = [int(t) for t in args.threads.split(",")] if args.threads else [torch.get_num_threads()]
    rows = []
    for nt, name in [(nt, name) for nt in threads for name in args.configs.split(",")]:
        torch.set_num_threads(nt)
        cfg = {**_config(name, args), "threads": nt}
        row = student_part(cfg, args.device, args.repeats)
        rows.append(row)
        print(f"student step {name} ({nt} threads): fused {row['median_s']['fused']:.3f} s, "
              f"native {row['median_s']['native']:.3f} s ({row['speedup']:.2f}x); saved "
              f"{row['saved_mib']['fused']:.0f} vs {row['saved_mib']['native']:.0f} MiB "
              f"({100 * row['saved_reduction']:.0f}% less)", flush=True)
    torch.set_num_threads(threads[0])
    gflops = conv_gflops(args.device)
    iteration = None if args.skip_iteration else iteration_part(args.device, args.steps, args.iter_rounds, args.iters,
                                                                 threads[0])
    load_after = _load()

    dev_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else (platform.processor() or "cpu")
    if iteration:
        med = iteration["median_s"]
        iteration["floor_s"] = FLOOR_S
        iteration["floor_at_measured_gflops_s"] = FLOOR_S * FLOOR_GFLOPS / gflops
        iteration["adjoint_fused_vs_full"] = med["adjoint/fused"] / med["full/reference"]
        iteration["adjoint_fused_vs_floor"] = med["adjoint/fused"] / FLOOR_S
    info = extension_info()
    out = {
        "device": args.device,
        "device_name": dev_name,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": threads,
        "commit": source_commit(),
        "extension": {k: info[k] for k in ("loaded", "built_with_cuda")},
        "load_average": {"before": load_before, "after": load_after},
        "student_step": rows,
        "conv_gflops": gflops,
        "iteration": iteration,
    }
    table = render(out)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = "cuda" if args.device.startswith("cuda") else "cpu"
    (RESULTS / f"student_{tag}.json").write_text(json.dumps(out, indent=2) + "\n")
    (RESULTS / f"student_{tag}.md").write_text(table + "\n")
    print(f"wrote {RESULTS / f'student_{tag}.json'}")


if __name__ == "__main__":
    main()
