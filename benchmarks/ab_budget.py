"""A/B: ``auto`` with a 1 GiB budget vs the ``adjoint`` engine at N = 80, in one process, interleaved.

Issue 19's target: with a 1 GiB budget the default engine still runs at N = 80 and is no
slower than the adjoint engine. ``bench_reference.py`` runs each in its own process once;
this runs both in one process, alternating, ``--reps`` iterations each (the first is a
warm-up), on profile_step's fmnist setting (28x28x1, ConvNet-D3 w128, 100 images, batch_syn
100, DSA on, 2 threads, retained heap). Prints each iteration and writes
``benchmarks/results/ab_budget_cpu.json``.

    PYTHONPATH=$PWD python benchmarks/ab_budget.py [--steps 80] [--reps 4] [--budget 1GiB]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--budget", default="1GiB")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    import profile_step as ps
    from _meta import source_commit
    from mtt_fast.match import ENGINES
    from mtt_fast.runtime import retain_freed_memory

    torch.set_num_threads(args.threads)
    retain_freed_memory()
    student, start, target, images, labels, lr, plan = ps._setup(args.steps)
    p = plan()
    names = (f"auto {args.budget}", "adjoint")
    t: dict = {k: [] for k in names}
    kept = None
    for r in range(args.reps):
        for name in names:
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if name == "adjoint":
                    res = ENGINES["adjoint"](student, start, target, images, labels, lr, p)
                else:
                    res = ENGINES["auto"](student, start, target, images, labels, lr, p, memory_budget=args.budget)
                    kept = res.info["kept_steps"]
            t[name].append(time.perf_counter() - t0)
            print(name, r, round(t[name][-1], 2), flush=True)
    out = {"benchmark": "ab_budget", "commit": source_commit(), "torch": torch.__version__, "threads": args.threads,
           "steps": args.steps, "budget": args.budget, "kept_steps": kept, "seconds": t,
           "median_s_after_warmup": {k: statistics.median(v[1:]) for k, v in t.items()},
           "mean_s_after_warmup": {k: statistics.fmean(v[1:]) for k, v in t.items()}}
    for k in names:
        print(f"{k}: median {out['median_s_after_warmup'][k]:.2f} s, mean {out['mean_s_after_warmup'][k]:.2f} s "
              f"(iterations after the first: {[round(x, 2) for x in t[k][1:]]})")
    path = Path(__file__).resolve().parent / "results" / "ab_budget_cpu.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
