"""Benchmark: fused trajectory loss (compiled op) vs its pure-PyTorch reference.

Times forward + backward of ``||a - b||^2 / ||c - b||^2`` over flat parameter vectors of the
sizes MTT uses (ConvNet-D3 w128 at 32 px: 320,010; ResNet18: ~11.2M), medians over repeats
in one process, and writes JSON to benchmarks/results/. Run: python benchmarks/bench_traj_loss.py
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch
from _meta import source_commit

from mtt_fast.ops import extension_info, trajectory_loss


def _time(fn, repeats: int) -> float:
    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for dev in devices:
        for n in (320_010, 11_173_962):
            g = torch.Generator().manual_seed(0)
            a, b, c = (torch.randn(n, generator=g).to(dev) for _ in range(3))

            def run(impl, a=a, b=b, c=c):
                x = a.clone().requires_grad_(True)
                trajectory_loss(x, b, c, impl=impl).backward()

            ref = _time(lambda: run("reference"), 20)
            fused = _time(lambda: run("fused"), 20)
            rows.append({"device": dev, "numel": n, "reference_ms": ref * 1e3, "fused_ms": fused * 1e3,
                         "speedup": ref / fused})
    print(f"{'device':6} {'numel':>10} {'reference ms':>13} {'fused ms':>9} {'speedup':>8}")
    for r in rows:
        print(f"{r['device']:6} {r['numel']:>10} {r['reference_ms']:>13.3f} {r['fused_ms']:>9.3f} {r['speedup']:>8.2f}")
    commit = source_commit()
    dev_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu"
    out = Path(__file__).parent / "results" / f"traj_loss_{'cuda' if torch.cuda.is_available() else 'cpu'}.json"
    out.write_text(json.dumps({"benchmark": "traj_loss", "device": dev_name, "threads": torch.get_num_threads(),
                               "torch": torch.__version__, "commit": commit, "extension": extension_info().get("loaded"),
                               "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
