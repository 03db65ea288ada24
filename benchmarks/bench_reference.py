"""Benchmark: the MTT reference's distillation loop, restated plainly, vs our default engine.

The "reference" side is the paper's Algorithm 1 written directly with native torch ops, the
way the published code structures it: one flat parameter vector, a functional ConvNet (conv
-> GroupNorm(C, C) instance norm -> ReLU -> 2x2 average pool, linear head), DSA (our
pure-torch reference implementation of the reference's augmentation, ``apply_reference``),
the N student steps appended to a list with ``create_graph=True`` (autograd through the
whole unroll), the normalized parameter distance, ``backward()``, then SGD (momentum 0.5)
on the images and on the learnable lr.

The "ours" side runs the same iteration (same shapes, DSA, optimizers) through
``ENGINES["auto"]`` with the default network ops (fused blocks and DSA where built and
verified) and the default memory budget (or ``--small-budget`` at ``--budget-n``), and
records the budget and the number of kept step graphs it chose. At ``--budget-n`` the
``adjoint`` engine runs too: the small budget's row is held against it.

Setting (issue 19's fmnist setting): 28x28x1, ConvNet-D3 width 128 instance norm, 10
classes, ipc 10 (100 images), batch_syn 100, DSA on, 2 threads; N in {10, 20, 40, 80}; at
N = 80 ours also runs with a 1 GiB budget. Each configuration runs in a fresh subprocess,
the two sides interleaved (their order alternates with N); a child runs one warm-up
iteration and ``--iters`` timed ones (median s/iteration) and reports its peak RSS (VmHWM).
A reference configuration whose memory, extrapolated linearly in N from its two previous
sizes, would exceed 85% of MemAvailable is not run, and its row says so.

Writes benchmarks/results/reference_cpu.json and .md (``--quick``: a tiny network and N, to
check that the script works, into reference_cpu_quick.*). The full run (30-40 min on a quiet
2-core machine):

    PYTHONPATH=$PWD python benchmarks/bench_reference.py
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
FULL = {"channels": 1, "res": 28, "classes": 10, "width": 128, "depth": 3, "ipc": 10, "batch_syn": 100,
        "steps": [10, 20, 40, 80]}
QUICK = {"channels": 1, "res": 28, "classes": 10, "width": 16, "depth": 3, "ipc": 2, "batch_syn": 20,
         "steps": [2, 4]}


def _vm_hwm_mib() -> float:
    """Peak resident set of this process (VmHWM), MiB."""
    from mtt_fast.memory import child_peak_rss_mib

    return child_peak_rss_mib()


# ------------------------------------------------------------------------------ the reference loop
def _first_pad(c: int, res: int) -> int:
    """The reference pads its first conv by 3 for 1-channel 28x28 input (MNIST-like -> 32x32)."""
    return 3 if c == 1 and res == 28 else 1


def _reference_shapes(c: int, width: int, depth: int, res: int, classes: int) -> list[tuple[int, ...]]:
    """Parameter shapes of the reference ConvNet, in its flat order."""
    shapes: list[tuple[int, ...]] = []
    ch, r = c, res + 2 * _first_pad(c, res) - 2
    for _ in range(depth):
        shapes += [(width, ch, 3, 3), (width,), (width,), (width,)]  # conv w, conv b, norm w, norm b
        ch, r = width, r // 2
    return shapes + [(classes, width * r * r), (classes,)]


def _reference_forward(flat, x, shapes: list[tuple[int, ...]], depth: int):
    """The ConvNet as a function of one flat parameter vector, native ops only."""
    import torch
    from torch.nn import functional as F

    parts = torch.split(flat, [int(torch.Size(s).numel()) for s in shapes])
    p = [t.view(s) for t, s in zip(parts, shapes)]
    h = x
    for d in range(depth):
        w, b, gw, gb = p[4 * d: 4 * d + 4]
        h = F.conv2d(h, w, b, padding=_first_pad(x.shape[1], x.shape[-1]) if d == 0 else 1)
        h = F.group_norm(h, w.shape[0], gw, gb, eps=1e-5)
        h = F.relu(h)
        h = F.avg_pool2d(h, 2)
    return F.linear(h.flatten(1), p[-2], p[-1])


def _reference_iteration(state: dict, steps: int, gen) -> dict:
    """One iteration of Algorithm 1: unroll N SGD steps with autograd, match, update x and lr."""
    import torch
    from torch.nn import functional as F

    from mtt_fast.augment import apply_reference, sample_params

    images, labels, syn_lr = state["images"], state["labels"], state["syn_lr"]
    start, target, cfg = state["start"], state["target"], state["cfg"]
    student_params = [start.clone().requires_grad_(True)]
    chunks: list = []
    for _ in range(steps):
        if not chunks:
            chunks = list(torch.randperm(len(images), generator=gen).split(cfg["batch_syn"]))
        these = chunks.pop()
        x = images[these]
        x = apply_reference(x, sample_params(state["dsa"], tuple(x.shape), gen, dtype=x.dtype))
        out = _reference_forward(student_params[-1], x, state["shapes"], cfg["depth"])
        ce = F.cross_entropy(out, labels[these])
        grad = torch.autograd.grad(ce, student_params[-1], create_graph=True)[0]
        student_params.append(student_params[-1] - syn_lr * grad)
    loss = (student_params[-1] - target).square().sum() / (start - target).square().sum()
    state["opt_img"].zero_grad()
    state["opt_lr"].zero_grad()
    loss.backward()
    state["opt_img"].step()
    state["opt_lr"].step()
    return {"loss": float(loss.detach())}


# ------------------------------------------------------------------------------ ours
def _our_iteration(state: dict, steps: int, gen) -> dict:
    """The same iteration through ``ENGINES["auto"]`` and our default ops."""
    from mtt_fast.match import ENGINES, plan_steps

    images, cfg = state["images"], state["cfg"]
    plan = plan_steps(len(images), tuple(images.shape[1:]), steps, cfg["batch_syn"], state["dsa"], gen)
    engine = state.get("engine") or "auto"
    kw = {"memory_budget": state["budget"]} if engine == "auto" else {}
    res = ENGINES[engine](state["student"], state["start"], state["target"], images.detach(), state["labels"],
                          state["syn_lr"].detach(), plan, **kw)
    state["opt_img"].zero_grad()
    state["opt_lr"].zero_grad()
    images.grad = res.grad_images
    state["syn_lr"].grad = res.grad_lr.reshape(state["syn_lr"].shape)
    state["opt_img"].step()
    state["opt_lr"].step()
    return {"loss": float(res.loss), "info": res.info}


def _child(spec: dict) -> dict:
    import torch

    from mtt_fast.augment import DSAConfig
    from mtt_fast.match import Student
    from mtt_fast.models import FlatParams, get_network

    from mtt_fast.runtime import retain_freed_memory

    torch.set_num_threads(spec["threads"])
    # ours: what every stage does (resolve_device); the reference: only in its "retained heap" row
    retained = retain_freed_memory() if spec["side"] == "ours" or spec.get("retain") else False
    cfg = spec["cfg"]
    torch.manual_seed(0)
    net = get_network("convnet", cfg["channels"], cfg["classes"], cfg["res"], width=cfg["width"], depth=cfg["depth"])
    start = FlatParams.of(net).flatten(net)
    target = start + 0.01 * torch.randn_like(start)
    n = cfg["ipc"] * cfg["classes"]
    images = torch.randn(n, cfg["channels"], cfg["res"], cfg["res"]).requires_grad_(True)
    labels = torch.arange(n) % cfg["classes"]
    syn_lr = torch.tensor(0.01).requires_grad_(True)
    state = {"images": images, "labels": labels, "syn_lr": syn_lr, "start": start, "target": target, "cfg": cfg,
             "dsa": DSAConfig(),
             "opt_img": torch.optim.SGD([images], lr=100.0, momentum=0.5),
             "opt_lr": torch.optim.SGD([syn_lr], lr=1e-5, momentum=0.5)}
    if spec["side"] == "reference":
        shapes = _reference_shapes(cfg["channels"], cfg["width"], cfg["depth"], cfg["res"], cfg["classes"])
        if sum(int(torch.Size(s).numel()) for s in shapes) != start.numel():
            raise RuntimeError("the reference ConvNet's parameter count differs from ours")
        state["shapes"] = shapes
        step = _reference_iteration
    else:
        state["student"] = Student.of(net)
        state["budget"] = spec.get("memory_budget")
        state["engine"] = spec.get("engine")
        step = _our_iteration
    gen = torch.Generator().manual_seed(1)
    times, last = [], {}
    for _ in range(1 + spec["iters"]):
        t = time.perf_counter()
        last = step(state, spec["steps"], gen)
        times.append(time.perf_counter() - t)
    out = {"seconds": times, "median_s": statistics.median(times[1:]), "peak_rss_mib": _vm_hwm_mib(),
           "final_loss": last["loss"], "retained_heap": retained}
    if "info" in last:
        out["engine_info"] = last["info"]
    return out


def _run_child(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"])}
    try:
        p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"timeout": True}
    if p.returncode != 0:
        return {"oom": p.returncode in (-9, 137),
                "error": (p.stderr or "").strip().splitlines()[-1:] or [f"exit {p.returncode}"]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def _mem_available_mib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 16 * 1024.0


def _cell(r: dict, key: str, fmt: str) -> str:
    if key in r:
        return fmt.format(r[key])
    if r.get("skipped"):
        return "not run: " + r["skipped"]
    if r.get("timeout"):
        return "timeout"
    return "out of memory" if r.get("oom") else str(r.get("error", "-"))


def _table(rows: list[dict], steps: list[int], cfg: dict, args) -> str:
    import torch

    lines = [f"CPU: {platform.processor() or 'cpu'} ({os.cpu_count()} CPUs, {args.threads} threads, torch "
             f"{torch.__version__}); {cfg['res']}x{cfg['res']}x{cfg['channels']}, ConvNet-D{cfg['depth']} "
             f"w{cfg['width']} instancenorm, ipc {cfg['ipc']} ({cfg['ipc'] * cfg['classes']} images), batch_syn "
             f"{cfg['batch_syn']}, DSA on; median s/iteration over {args.iters} iterations after one warm-up; "
             "peak RSS of each fresh process.", "",
             "| N | reference loop s/it | ours s/it | speed-up | reference RSS | ours RSS "
             "| budget ours chose | kept step graphs | reference, retained heap s/it | speed-up over it |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for n in steps:
        ref = next((r for r in rows if r["N"] == n and r["side"] == "reference" and not r.get("retain")), {})
        ref_r = next((r for r in rows if r["N"] == n and r["side"] == "reference" and r.get("retain")), {})
        for ours in (r for r in rows if r["N"] == n and r["side"] == "ours"):
            info = ours.get("engine_info") or {}
            speed = f"{ref['median_s'] / ours['median_s']:.2f}x" if "median_s" in ref and "median_s" in ours else "-"
            how = f"--memory-budget {ours['memory_budget_arg']}" if ours["memory_budget_arg"] else "default"
            budget = (f"{info['memory_budget'] / 2**30:.2f} GiB ({how})" if info.get("memory_budget")
                      else f"{ours.get('engine', 'auto')} engine (no budget)")
            kept = f"{info['kept_steps']} / {info['steps']}" if info else "-"
            speed_r = (f"{ref_r['median_s'] / ours['median_s']:.2f}x" if "median_s" in ref_r and "median_s" in ours
                       else "-")
            lines.append(f"| {n} | {_cell(ref, 'median_s', '{:.2f}')} | {_cell(ours, 'median_s', '{:.2f}')} | {speed} "
                         f"| {_cell(ref, 'peak_rss_mib', '{:.0f} MiB')} | {_cell(ours, 'peak_rss_mib', '{:.0f} MiB')} "
                         f"| {budget} | {kept} | {_cell(ref_r, 'median_s', '{:.2f}') if ref_r else '-'} | {speed_r} |")
    lines += ["", "Ours keeps freed memory for reuse (mtt_fast.runtime.retain_freed_memory, what every stage does; "
              "MTT_FAST_MALLOC=system turns it off); the reference loop runs on the system allocator as "
              "published, and in the last two columns with the same setting as ours."]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ parent
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--n", default=None, help="comma list of N (default 10,20,40,80; --quick: 2,4)")
    ap.add_argument("--iters", type=int, default=3, help="timed iterations per child, after one warm-up")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a tiny network and N: checks that the script works")
    ap.add_argument("--budget-n", type=int, default=None,
                    help="N at which ours also runs with --small-budget (default 80; --quick: the last N)")
    ap.add_argument("--small-budget", default=None, help="that budget (default 1GiB; --quick: 4MiB)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per child")
    ap.add_argument("--out", default=None, help="result path stem (default results/reference_cpu[_quick])")
    ap.add_argument("--no-reference-retained", dest="reference_retained", action="store_false",
                    help="skip the reference loop's run with our allocator setting (the last two columns)")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return

    import torch

    from mtt_fast.ops import extension_info

    cfg = dict(QUICK if args.quick else FULL)
    steps = [int(s) for s in args.n.split(",")] if args.n else cfg["steps"]
    small = args.small_budget or ("4MiB" if args.quick else "1GiB")
    budget_n = args.budget_n or (steps[-1] if args.quick else 80)
    limit = 0.85 * _mem_available_mib()
    rows: list[dict] = []
    ref_mem: list[tuple[int, float]] = []
    for j, n in enumerate(steps):
        sides: list[tuple[str, str | None]] = [("reference", None), ("ours", None)]
        if j % 2:
            sides.reverse()
        if n == budget_n:  # the small budget, and the adjoint engine it is held against
            sides += [("ours", small), ("ours", "engine:adjoint")]
        if args.reference_retained:
            sides.append(("reference", "retain"))
        for side, budget in sides:
            retain = side == "reference" and budget == "retain"
            engine = budget.split(":", 1)[1] if budget and budget.startswith("engine:") else None
            budget = None if retain or engine else budget
            row: dict = {"N": n, "side": side, "memory_budget_arg": budget, "retain": retain, "engine": engine or "auto"}
            if side == "reference" and len(ref_mem) >= 2:  # (the retained-heap run follows the plain one)
                (n1, m1), (n2, m2) = ref_mem[-2:]
                pred = m2 + (m2 - m1) / (n2 - n1) * (n - n2)
                if pred > limit:
                    row["skipped"] = f"predicted {pred / 1024:.1f} GiB > 85% of MemAvailable ({limit / 1024:.1f} GiB)"
                    rows.append(row)
                    print(row, flush=True)
                    continue
            spec = {"side": side, "steps": n, "iters": args.iters, "threads": args.threads, "cfg": cfg,
                    "memory_budget": budget, "retain": retain, "engine": engine}
            row.update(_run_child(spec, args.timeout))
            if side == "reference" and not retain and "peak_rss_mib" in row:
                ref_mem.append((n, row["peak_rss_mib"]))
            rows.append(row)
            print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k != "seconds"},
                  flush=True)

    table = _table(rows, steps, cfg, args)
    print(table)
    stem = Path(args.out) if args.out else RESULTS / ("reference_cpu_quick" if args.quick else "reference_cpu")
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(
        {"benchmark": "reference", "quick": args.quick, "cpus": os.cpu_count(), "threads": args.threads,
         "torch": torch.__version__, "commit": source_commit(), "extension": extension_info().get("loaded"),
         "setting": cfg, "iters": args.iters, "rows": rows}, indent=2) + "\n")
    stem.with_suffix(".md").write_text(table + "\n")
    print(f"wrote {stem.with_suffix('.json')} and .md")


if __name__ == "__main__":
    main()
