"""Benchmark: fused DSA op (csrc/dsa) vs the pure-PyTorch reference DSA.

Times forward + backward (``y = apply(x, params)``, then ``dL/dx`` for a fixed random
upstream gradient) of ``impl="reference"`` and ``impl="fused"``, medians over repeats in
one process, for batches 256x3x32x32, 100x1x28x28 and 32x3x224x224, with the MTT default
strategy ``color_crop_cutout_flip_scale_rotate``:

* mode "M": all six groups in one call;
* reference and fused calls alternate (one each per round, medians over the rounds), so
  drift on a shared machine hits both alike;
* mode "S": one group per call (the MTT default); the time reported is the MEAN over the six
  groups of the per-group medians, i.e. the expected time of one call (each group is drawn
  with probability 1/6); the per-group times are in the JSON.

Mode M rows also split one fused call (``breakdown``: host pack, the two ops alone,
autograd).

On CUDA the timing uses CUDA events after warm-up, and the forward alone is also timed to
report the fraction of memory bandwidth it reaches: (bytes of x read + bytes of y written)
/ time, over the same for a device-to-device copy of x measured in the same run.

Writes benchmarks/results/dsa_{cpu,cuda}.json (device, torch version, threads, git commit).
Run: ``python benchmarks/bench_dsa.py [--device auto|cpu|cuda|all]``; ``auto`` (default)
is CUDA when a GPU is visible, else the CPU (so a GPU run does not overwrite the CPU
results of the 2-core machine; ``all`` runs both).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch
from _meta import median_seconds, source_commit

from mtt_fast.augment import DEFAULT_STRATEGY, DSAConfig, apply, parse_strategy, sample_params
from mtt_fast.augment.fused import clear_pack_cache, pack
from mtt_fast.ops import extension_info

SHAPES = [(256, 3, 32, 32), (100, 1, 28, 28), (32, 3, 224, 224)]


def _timer(device: str):
    """A function ``time(fn, repeats) -> median seconds`` for the device."""
    if device == "cuda":

        def run(fn, repeats: int) -> float:
            for _ in range(3):
                fn()
            torch.cuda.synchronize()
            out = []
            for _ in range(repeats):
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                out.append(start.elapsed_time(end) / 1e3)
            return statistics.median(out)

        return run

    return median_seconds


def _repeats(device: str, numel: int) -> int:
    if device == "cuda":
        return 50
    return 41 if numel <= 1_000_000 else 9


def _pair(timer, ref_fn, fused_fn, repeats: int) -> tuple[float, float]:
    """Medians of the reference and the fused call, timed alternately (rounds of 1) so that
    drift on a shared machine affects both alike."""
    ref, fused = [], []
    for _ in range(repeats):
        ref.append(timer(ref_fn, 1))
        fused.append(timer(fused_fn, 1))
    return statistics.median(ref), statistics.median(fused)


def _fwd_bwd(x, params, grad, impl):
    """Forward + backward. For the fused op, parameters live on the host as the library
    samples them, and the pack cache is cleared so every call pays for packing too."""
    if impl == "fused":
        params = params.to("cpu")

    def fn():
        if impl == "fused":
            clear_pack_cache()
        xr = x.detach().requires_grad_(True)
        y = apply(xr, params, impl=impl)
        torch.autograd.grad(y, xr, grad)

    return fn


def bench_device(device: str) -> list[dict]:
    timer = _timer(device)
    groups = parse_strategy(DEFAULT_STRATEGY)
    rows = []
    for shape in SHAPES:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=g).to(device)
        grad = torch.randn(shape, generator=g).to(device)
        numel = x.numel()
        reps = _repeats(device, numel)
        # mode M: the whole strategy in one call
        pm = sample_params(DSAConfig(mode="M"), shape, torch.Generator().manual_seed(1),
                           device=device)
        ref_m, fused_m = _pair(timer, _fwd_bwd(x, pm, grad, "reference"),
                               _fwd_bwd(x, pm, grad, "fused"), reps)
        row_m = {"device": device, "shape": list(shape), "mode": "M",
                 "reference_ms": ref_m * 1e3, "fused_ms": fused_m * 1e3,
                 "speedup": ref_m / fused_m}
        row_m["breakdown"] = _breakdown(x, pm, grad, timer, reps)
        # mode S: each group on its own; the expected call is the mean over groups
        per_group = {}
        for k, op in enumerate(groups):
            ps = sample_params(DSAConfig(strategy=op, mode="S"), shape,
                               torch.Generator().manual_seed(10 + k), device=device)
            t = _pair(timer, _fwd_bwd(x, ps, grad, "reference"), _fwd_bwd(x, ps, grad, "fused"),
                      reps)
            per_group[op] = {"reference_ms": t[0] * 1e3, "fused_ms": t[1] * 1e3,
                             "speedup": t[0] / t[1]}
        ref_s = statistics.mean(v["reference_ms"] for v in per_group.values())
        fused_s = statistics.mean(v["fused_ms"] for v in per_group.values())
        row_s = {"device": device, "shape": list(shape), "mode": "S",
                 "reference_ms": ref_s, "fused_ms": fused_s, "speedup": ref_s / fused_s,
                 "groups": per_group}
        if device == "cuda":
            _bandwidth(x, pm, row_m, timer)
            _bandwidth(x, None, row_s, timer, per_group_shape=shape)
        rows += [row_m, row_s]
    return rows


def _breakdown(x, params, grad, timer, repeats: int) -> dict:
    """Where one fused forward + backward goes (mode M): ``pack_ms`` (host pack, and on
    CUDA the copy to the device), ``ops_ms`` (the forward and backward ops called directly,
    no autograd), ``autograd_ms`` (the same through ``apply`` and ``torch.autograd.grad``
    with the pack cached, minus ``ops_ms``: the autograd engine and the Python around it)."""
    host = params.to("cpu")
    packed, noise, flags = pack(host, x.dtype, x.device)
    fwd, bwd = torch.ops.mtt_fast.dsa_forward.default, torch.ops.mtt_fast.dsa_backward.default

    def pack_fn():
        clear_pack_cache()
        pack(host, x.dtype, x.device)

    def ops_fn():
        fwd(x, packed, noise, flags)
        bwd(grad, packed, flags)

    def cached_fn():
        xr = x.detach().requires_grad_(True)
        torch.autograd.grad(apply(xr, host, impl="fused"), xr, grad)

    times = {pack_fn: [], ops_fn: [], cached_fn: []}
    for _ in range(repeats):  # alternated, as _pair (pack_fn leaves the pack cached)
        for fn, out in times.items():
            out.append(timer(fn, 1))
    pack_s, ops_s, cached_s = (statistics.median(v) for v in times.values())
    return {"pack_ms": pack_s * 1e3, "ops_ms": ops_s * 1e3,
            "autograd_ms": (cached_s - ops_s) * 1e3}


def _bandwidth(x, params, row, timer, per_group_shape=None) -> None:
    """Forward-only fused time and its fraction of a device-to-device copy's bandwidth."""
    nbytes = 2 * x.numel() * x.element_size()  # x read + y written
    y = torch.empty_like(x)
    copy_s = timer(lambda: y.copy_(x), 100)
    copy_bw = nbytes / copy_s
    if params is None:  # mode S: the mean forward time over the groups
        times = []
        for k, op in enumerate(parse_strategy(DEFAULT_STRATEGY)):
            ps = sample_params(DSAConfig(strategy=op, mode="S"), per_group_shape,
                               torch.Generator().manual_seed(10 + k), device=x.device)
            times.append(timer(lambda ps=ps: apply(x, ps, impl="fused"), 100))
        fwd_s = statistics.mean(times)
    else:
        fwd_s = timer(lambda: apply(x, params, impl="fused"), 100)
    row["fused_forward_ms"] = fwd_s * 1e3
    row["copy_ms"] = copy_s * 1e3
    row["copy_GBps"] = copy_bw / 1e9
    row["forward_GBps"] = nbytes / fwd_s / 1e9
    row["bandwidth_fraction"] = (nbytes / fwd_s) / copy_bw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "all"])
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    if args.device == "auto":
        devices = ["cuda"] if cuda else ["cpu"]
    elif args.device == "all":
        devices = ["cpu"] + (["cuda"] if cuda else [])
    else:
        devices = [args.device]
    if "cuda" in devices and not cuda:
        raise SystemExit("--device cuda: no GPU is visible")
    commit = source_commit()
    for dev in devices:
        rows = bench_device(dev)
        hdr = f"{'device':6} {'shape':>16} {'mode':>4} {'reference ms':>13} {'fused ms':>9} {'speedup':>8}"
        if dev == "cuda":
            hdr += f" {'fwd GB/s':>9} {'copy GB/s':>9} {'bw frac':>8}"
        print(hdr)
        for r in rows:
            line = (f"{r['device']:6} {'x'.join(map(str, r['shape'])):>16} {r['mode']:>4} "
                    f"{r['reference_ms']:>13.3f} {r['fused_ms']:>9.3f} {r['speedup']:>8.2f}")
            if dev == "cuda":
                line += (f" {r['forward_GBps']:>9.1f} {r['copy_GBps']:>9.1f}"
                         f" {r['bandwidth_fraction']:>8.2f}")
            print(line)
        print("mode M, one fused call (ms): " + "; ".join(
            f"{'x'.join(map(str, r['shape']))}: pack {r['breakdown']['pack_ms']:.3f}, ops "
            f"{r['breakdown']['ops_ms']:.3f}, autograd {r['breakdown']['autograd_ms']:.3f}"
            for r in rows if "breakdown" in r))
        name = torch.cuda.get_device_name(0) if dev == "cuda" else (platform.processor() or "cpu")
        out = Path(__file__).parent / "results" / f"dsa_{dev}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "benchmark": "dsa", "device": name, "threads": torch.get_num_threads(),
            "torch": torch.__version__, "commit": commit,
            "extension": extension_info().get("loaded"),
            "strategy": DEFAULT_STRATEGY,
            "dtype": "float32", "timing": "cuda events" if dev == "cuda" else "perf_counter",
            "rows": rows}, indent=2) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
