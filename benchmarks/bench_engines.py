"""Benchmark: one distillation iteration per matching engine (auto | full | adjoint | tesla).

For each setting and N it runs each engine in its own subprocess (so the CPU peak resident
set belongs to that engine alone) and reports the median seconds per iteration and the peak
memory: CUDA ``max_memory_allocated`` during the iteration, or on the CPU the child
process's peak RSS (interpreter and torch included; ``rss_base`` is the RSS just before the
first iteration).

Settings (ConvNet-D3 width 128, instance norm, 10 classes, ipc 10 = 100 images, batch_syn
100, DSA on as in distillation, random images and trajectories):
  cifar   32x32x3, N in {10, 20, 40, 80}   (the issue's setting)
  fmnist  28x28x1, N in {10, 20, 40}       (beside the MTT reference code measured on a
                                            2-core CPU: 13.5 / 25.1 / 49.9 s and
                                            5.0 / 8.8 / 16.2 GB at N = 10 / 20 / 40)
Where the full engine's memory, extrapolated linearly in N from the two previous sizes,
would exceed ``--mem-limit-gib``, it is not run and the row says so.

``--bisect`` also finds, by bisection over ipc, the largest ipc whose iteration fits a
memory budget (``--budget-gib``, default 20) at N = 80 (batch_syn = the whole set): on CUDA
the budget is enforced with ``torch.cuda.set_per_process_memory_fraction``.

Writes benchmarks/results/engines_{cpu,cuda}.json and .md. Run:
  python benchmarks/bench_engines.py [--device cuda] [--bisect]
"""

from __future__ import annotations

import argparse
import functools
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
SETTINGS = {
    "cifar": {"channels": 3, "res": 32, "steps": [10, 20, 40, 80]},
    "fmnist": {"channels": 1, "res": 28, "steps": [10, 20, 40]},
}
REFERENCE_CPU = {  # the MTT reference code on this kind of machine (issue 4): N -> (s/it, GB)
    10: (13.5, 5.0), 20: (25.1, 8.8), 40: (49.9, 16.2),
}


# ------------------------------------------------------------------------------ child
def _child(spec: dict) -> dict:
    import torch

    from mtt_fast.augment import DSAConfig, uses_fused
    from mtt_fast.match import ENGINES, Student, plan_steps
    from mtt_fast.memory import process_peak_rss_mib
    from mtt_fast.models import FlatParams, get_network

    dev = torch.device(spec["device"])
    torch.manual_seed(0)
    if dev.type == "cuda":
        dev = torch.device("cuda", dev.index if dev.index is not None else torch.cuda.current_device())
    if dev.type == "cuda" and spec.get("budget_gib"):
        total = torch.cuda.get_device_properties(dev).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, spec["budget_gib"] * 2**30 / total), dev)
    c, res, ncls = spec["channels"], spec["res"], 10
    net = get_network("convnet", c, ncls, res, width=128, depth=3).to(dev)
    student = Student.of(net, aug_impl=spec.get("aug_impl", "auto"))
    start = FlatParams.of(net).flatten(net)
    target = start + 0.01 * torch.randn_like(start)
    n = spec["ipc"] * ncls
    images = torch.randn(n, c, res, res, device=dev)
    labels = torch.arange(n, device=dev) % ncls
    lr = torch.tensor(0.01, device=dev)
    if spec["engine"] == "adjoint_offload":  # the adjoint with its theta history in host memory
        engine = functools.partial(ENGINES["adjoint"], offload=True)
    else:
        engine = ENGINES[spec["engine"]]
    gen = torch.Generator().manual_seed(1)
    rss_base = process_peak_rss_mib()
    times, peaks = [], []
    for _ in range(spec["iters"]):
        aug_device = "cpu" if uses_fused(images, student.aug_impl) else dev
        plan = plan_steps(n, (c, res, res), spec["steps"], spec["batch_syn"] or n, DSAConfig(), gen, device=dev,
                          aug_device=aug_device)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        t = time.perf_counter()
        try:
            res_ = engine(student, start, target, images, labels, lr, plan)
            float(res_.loss)
        except torch.OutOfMemoryError:
            return {"oom": True}
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            peaks.append(torch.cuda.max_memory_allocated(dev) / 2**20)
        times.append(time.perf_counter() - t)
        del res_
    out = {"oom": False, "seconds": times, "median_s": statistics.median(times[1:] if len(times) > 1 else times)}
    if dev.type == "cuda":
        out["peak_mib"] = max(peaks)
    else:
        out["peak_mib"] = process_peak_rss_mib()
        out["rss_base_mib"] = rss_base
    return out


def _run_child(spec: dict, timeout: float | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    try:
        p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"oom": False, "timeout": True}
    if p.returncode != 0:
        killed = p.returncode in (-9, 137)
        return {"oom": killed, "error": (p.stderr or "").strip().splitlines()[-1:] or [f"exit {p.returncode}"]}
    return json.loads(p.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------ parent
def _mem_available_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 16.0


def _bisect(base: dict, engine: str, lo_hint: int, time_cap: float) -> dict:
    """Largest ipc whose one iteration fits the budget: doubling, then bisection (~6%)."""
    probes = []

    def fits(ipc: int) -> bool | None:
        r = _run_child({**base, "engine": engine, "ipc": ipc, "batch_syn": None, "iters": 1}, timeout=time_cap)
        probes.append({"ipc": ipc, **{k: r.get(k) for k in ("oom", "timeout", "median_s", "peak_mib", "error")}})
        print(f"  bisect {engine:8} ipc {ipc:6}: {'fits' if not r.get('oom') and not r.get('timeout') and 'error' not in r else 'no'}"
              f" {r.get('median_s', '')}", flush=True)
        if r.get("timeout"):
            return None
        if "error" in r and not r.get("oom"):
            raise RuntimeError(f"bisection probe {engine} ipc {ipc} failed: {r['error']}")
        return not r.get("oom")

    lo, hi = 0, None
    ipc = max(1, lo_hint)
    lower_bound_only = False
    while hi is None:  # doubling
        ok = fits(ipc)
        if ok is None:
            lower_bound_only = True
            break
        if ok:
            lo, ipc = ipc, ipc * 2
        else:
            hi = ipc
    while hi is not None and hi - lo > max(1, lo // 16):
        mid = (lo + hi) // 2
        ok = fits(mid)
        if ok is None:
            lower_bound_only = True
            break
        lo, hi = (mid, hi) if ok else (lo, mid)
    return {"engine": engine, "max_ipc": lo, "lower_bound_only": lower_bound_only, "probes": probes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--settings", default="cifar,fmnist")
    ap.add_argument("--engines", default="full,adjoint,tesla",
                    help="comma list of auto, full, adjoint, tesla, adjoint_offload (--offload-history)")
    ap.add_argument("--steps", default=None, help="comma list overriding each setting's N values")
    ap.add_argument("--tesla-steps", default="20", help="N values at which tesla runs (it is approximate)")
    ap.add_argument("--iters", type=int, default=3, help="iterations per child; the first is a warm-up when >1")
    ap.add_argument("--iters-large", type=int, default=None,
                    help="iterations per child for N > 20 (default: --iters); 1 = a single timed iteration")
    ap.add_argument("--mem-limit-gib", type=float, default=None, help="skip full where predicted above (CPU)")
    ap.add_argument("--bisect", action="store_true", help="also find the largest ipc within --budget-gib at N=80")
    ap.add_argument("--budget-gib", type=float, default=20.0)
    ap.add_argument("--bisect-time-cap", type=float, default=240.0, help="seconds per probe before giving up")
    ap.add_argument("--aug-impl", default="auto")
    ap.add_argument("--tag", default=None, help="suffix of the result files")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return

    import torch

    from mtt_fast.ops import extension_info

    limit = args.mem_limit_gib or 0.8 * _mem_available_gib()
    rows = []
    for setting in args.settings.split(","):
        st = SETTINGS[setting]
        steps = [int(s) for s in args.steps.split(",")] if args.steps else st["steps"]
        for engine in args.engines.split(","):
            history: list[tuple[int, float]] = []
            for n in steps:
                if engine == "tesla" and n not in [int(s) for s in args.tesla_steps.split(",")]:
                    continue
                row = {"setting": setting, "engine": engine, "N": n}
                if args.device == "cpu" and engine == "full" and len(history) >= 2:
                    (n1, m1), (n2, m2) = history[-2:]
                    pred = m2 + (m2 - m1) / (n2 - n1) * (n - n2)
                    if pred / 1024 > limit:
                        row.update(skipped=f"predicted {pred / 1024:.1f} GiB > limit {limit:.1f} GiB")
                        rows.append(row)
                        print(row, flush=True)
                        continue
                spec = {"device": args.device, "engine": engine, "steps": n, "channels": st["channels"],
                        "res": st["res"], "ipc": 10, "batch_syn": 100, "aug_impl": args.aug_impl,
                        "iters": args.iters if n <= 20 or args.iters_large is None else args.iters_large}
                r = _run_child(spec)
                row.update(r)
                if "peak_mib" in r:
                    history.append((n, r["peak_mib"]))
                rows.append(row)
                print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k != "seconds"},
                      flush=True)

    bisect = []
    if args.bisect:
        base = {"device": args.device, "steps": 80, "channels": 3, "res": 32, "budget_gib": args.budget_gib,
                "aug_impl": args.aug_impl}
        for engine in ("full", "adjoint"):
            bisect.append(_bisect(base, engine, 4 if engine == "full" else 128, args.bisect_time_cap))

    # ---- table
    dev_name = torch.cuda.get_device_name(0) if args.device == "cuda" else (platform.processor() or "cpu")
    mem_kind = "peak CUDA allocated" if args.device == "cuda" else "peak RSS of the process"
    lines = [f"Device: {dev_name} ({os.cpu_count()} CPUs, torch {torch.__version__}); memory = {mem_kind}.", "",
             "| setting | N | engine | s / iteration | peak memory (MiB) | vs full: time | vs full: memory |",
             "|---|---|---|---|---|---|---|"]
    full = {(r["setting"], r["N"]): r for r in rows if r["engine"] == "full" and "median_s" in r}
    for r in rows:
        f = full.get((r["setting"], r["N"]))
        if "median_s" in r:
            tr = f"{r['median_s'] / f['median_s']:.2f}x" if f else "-"
            mr = f"{f['peak_mib'] / r['peak_mib']:.1f}x less" if f and r["engine"] != "full" else "-"
            lines.append(f"| {r['setting']} | {r['N']} | {r['engine']} | {r['median_s']:.2f} | {r['peak_mib']:.0f} "
                         f"| {tr} | {mr} |")
        else:
            why = r.get("skipped") or ("out of memory" if r.get("oom") else str(r.get("error")))
            lines.append(f"| {r['setting']} | {r['N']} | {r['engine']} | not run: {why} | | | |")
    if args.device == "cpu" and any(r["setting"] == "fmnist" for r in rows):
        lines += ["", "MTT reference code, same fmnist setting on a 2-core CPU (issue 4): "
                  + ", ".join(f"N={n}: {t} s, {g} GB" for n, (t, g) in REFERENCE_CPU.items())]
    if bisect:
        lines += ["", f"Largest ipc (10 classes, batch_syn = whole set, N = 80, cifar shape) within {args.budget_gib:g} GiB:",
                  ""]
        for b in bisect:
            bound = " (lower bound: a probe hit the time cap)" if b["lower_bound_only"] else ""
            lines.append(f"- {b['engine']}: ipc {b['max_ipc']}{bound}")
        if len(bisect) == 2 and bisect[0]["max_ipc"]:
            lines.append(f"- adjoint / full: {bisect[1]['max_ipc'] / bisect[0]['max_ipc']:.1f}x")
    table = "\n".join(lines)
    print(table)

    commit = source_commit()
    RESULTS.mkdir(exist_ok=True)
    stem = f"engines_{'cuda' if args.device == 'cuda' else 'cpu'}" + (f"_{args.tag}" if args.tag else "")
    (RESULTS / f"{stem}.json").write_text(json.dumps(
        {"benchmark": "engines", "device": dev_name, "cpus": os.cpu_count(), "torch": torch.__version__,
         "commit": commit, "extension": extension_info().get("loaded"), "aug_impl": args.aug_impl,
         "iters": args.iters, "iters_large": args.iters_large, "rows": rows, "bisect": bisect}, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(table + "\n")
    print(f"wrote {RESULTS / (stem + '.json')} and .md")


if __name__ == "__main__":
    main()
