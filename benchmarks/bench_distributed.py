"""Benchmark: one distillation iteration split over K ranks (torch.distributed, gloo on CPUs).

Where activations dominate (default: 32x32x3, 10 classes, ipc 50 = 500 images, batch_syn
500, ConvNet-D3 width 128, N = 10, DSA on) it runs the matching engine in K = 1 and K = 2
processes (each rank owns half of the synthetic set and computes its half of every step:
:mod:`mtt_fast.match.parallel`), and reports per rank the peak growth of its resident set
during the iteration (``VmHWM`` after minus ``VmRSS`` before, the peak reset through
``/proc/self/clear_refs``) and the seconds per iteration, median over ``--iters``.

The activation memory per rank at K = 2 should be about half of K = 1's (the issue's target:
<= 0.6x). On a 2-core machine K = 2 ranks share the same two cores, so the time is NOT a
speed claim; with one GPU per rank it is (NCCL: ``--device cuda``, one GPU per rank).

Writes benchmarks/results/distributed_{cpu,cuda}.json and .md. Run:
  python benchmarks/bench_distributed.py [--engines adjoint,full] [--iters 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _meta import source_commit

from mtt_fast.augment import DSAConfig
from mtt_fast.match import ENGINES, Student, plan_steps
from mtt_fast.match.parallel import RankShare
from mtt_fast.memory import proc_status_bytes
from mtt_fast.models import FlatParams, get_network

RESULTS = Path(__file__).resolve().parent / "results"


def _status(key: str) -> int:
    return proc_status_bytes(key) or 0


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def _one_rank(rank: int, world: int, port: int, a: dict, out: str) -> None:
    torch.set_num_threads(a["threads"])
    device = torch.device("cuda", rank) if a["device"] == "cuda" else torch.device("cpu")
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    net = get_network("convnet", a["channels"], a["classes"], a["res"], width=128, depth=3).to(device)
    student = Student.of(net)
    if world > 1:
        student.share = RankShare(rank, world)
    n = a["ipc"] * a["classes"]
    start = FlatParams.of(net).flatten(net).to(device)
    target = start + 0.01 * torch.randn_like(start)
    x = torch.randn(n, a["channels"], a["res"], a["res"], device=device)
    y = (torch.arange(n, device=device) // a["ipc"]) % a["classes"]
    lr = torch.tensor(0.01, device=device)
    rows = []
    for engine in a["engines"]:
        for it in range(a["iters"] + 1):  # the first is a warm-up
            plan = plan_steps(n, tuple(x.shape[1:]), a["steps"], a["batch_syn"], DSAConfig(),
                              torch.Generator().manual_seed(it), device=device, aug_device="cpu")
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
            else:
                _reset_peak()
                base = _status("VmRSS")
            if world > 1:
                dist.barrier()
            t0 = time.perf_counter()
            r = ENGINES[engine](student, start, target, x, y, lr, plan)
            if world > 1:
                RankShare.sum(r.grad_images)
            if device.type == "cuda":
                torch.cuda.synchronize()
                peak = torch.cuda.max_memory_allocated() - base
            else:
                peak = _status("VmHWM") - base
            secs = time.perf_counter() - t0
            if it:
                rows.append({"engine": engine, "iteration": it, "seconds": secs, "peak_bytes": peak})
    gathered = [None] * world
    if world > 1:
        dist.all_gather_object(gathered, rows)
        dist.destroy_process_group()
    else:
        gathered = [rows]
    if rank == 0:
        Path(out).write_text(json.dumps(gathered))


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--engines", default="adjoint,full")
    p.add_argument("--ranks", default="1,2")
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--ipc", type=int, default=50)
    p.add_argument("--res", type=int, default=32)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-syn", type=int, default=500)
    p.add_argument("--threads", type=int, default=1, help="threads per rank")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that the script runs")
    args = p.parse_args()
    a = {"device": args.device, "engines": args.engines.split(","), "iters": args.iters, "ipc": args.ipc,
         "res": args.res, "steps": args.steps, "batch_syn": args.batch_syn, "threads": args.threads,
         "channels": 3, "classes": 10}
    if args.quick:
        a.update(ipc=2, res=16, steps=2, batch_syn=20, iters=1)
    # glibc keeps freed heap memory (and raises its mmap threshold after the first large free), so
    # an earlier iteration's memory would hide a later one's growth in the resident set: a fixed
    # mmap threshold returns every large tensor to the OS when it is freed (set before the ranks start)
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(256 * 1024))
    os.environ.setdefault("MALLOC_TRIM_THRESHOLD_", str(256 * 1024))
    table = []
    tmp = RESULTS / ".bench_distributed.tmp.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    for k in (int(v) for v in args.ranks.split(",")):
        mp.start_processes(_one_rank, args=(k, _port(), a, str(tmp)), nprocs=k, start_method="spawn")
        per_rank = json.loads(tmp.read_text())
        tmp.unlink()
        for engine in a["engines"]:
            peaks = [max(r["peak_bytes"] for r in rows if r["engine"] == engine) for rows in per_rank]
            secs = [statistics.median(r["seconds"] for r in rows if r["engine"] == engine) for rows in per_rank]
            table.append({"ranks": k, "engine": engine, "peak_per_rank_mib": [b / 2**20 for b in peaks],
                          "max_peak_per_rank_mib": max(peaks) / 2**20, "seconds_per_iteration": max(secs)})
    for row in table:
        one = next(r for r in table if r["engine"] == row["engine"] and r["ranks"] == 1)
        row["peak_vs_one_rank"] = row["max_peak_per_rank_mib"] / one["max_peak_per_rank_mib"]
    setting = {k: v for k, v in a.items() if k != "engines"}
    doc = {"benchmark": "bench_distributed", "setting": setting, "quick": args.quick, "commit": source_commit(),
           "torch": torch.__version__, "cpus": os.cpu_count(), "machine": platform.machine(), "rows": table}
    lines = [f"Setting: {setting} (ConvNet-D3 w128, DSA on; peak = growth of the rank's resident set during one "
             f"iteration, glibc's mmap threshold fixed at 256 KiB so that freed tensors leave it{'' if args.device == 'cpu' else ' (CUDA: max_memory_allocated)'}; {os.cpu_count()} CPUs "
             f"shared by all ranks: the time is not a speed claim on CPU).", "",
             "| ranks | engine | peak per rank (MiB) | vs 1 rank | s / iteration |", "|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['ranks']} | {r['engine']} | {', '.join(f'{v:.0f}' for v in r['peak_per_rank_mib'])} | "
                     f"{r['peak_vs_one_rank']:.2f}x | {r['seconds_per_iteration']:.2f} |")
    md = "\n".join(lines) + "\n"
    print(md)
    if not args.quick:
        name = f"distributed_{args.device}"
        (RESULTS / f"{name}.json").write_text(json.dumps(doc, indent=2) + "\n")
        (RESULTS / f"{name}.md").write_text(md)


if __name__ == "__main__":
    main()
