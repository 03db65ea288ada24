"""``mtt-fast selftest``: every compiled op family's parity check afresh, and micro-benchmarks.

The checks and the cached verdicts that ``auto`` consults live in :mod:`mtt_fast.ops.verify`;
this module sits above the op families and the augmentation (it times DSA through
:func:`mtt_fast.augment.apply`), so importing it also registers the DSA check.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import mtt_fast.augment  # noqa: F401 - registers the dsa parity check
from mtt_fast.ops import _load, reference
from mtt_fast.ops.verify import (
    _SEED,
    FAMILIES,
    VerificationWarning,
    _isolated,
    _norm_device,
    _rand,
    build_hash,
    device_name,
    verify,
)


def _op_module(family: str):
    from mtt_fast.ops import block, dsa, traj_loss

    return {"traj_loss": traj_loss, "block": block, "dsa": dsa}[family]


def available(family: str, device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether the compiled ``family`` can run at all on this device and dtype (no check)."""
    return bool(_op_module(family).fused_available(device, dtype))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_ms(fn: Callable[[], Any], device: torch.device, reps: int, budget_s: float = 3.0) -> float:
    fn()  # warm-up
    _sync(device)
    times = []
    t_end = time.perf_counter() + budget_s
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() > t_end:
            break
    times.sort()
    return 1000 * times[len(times) // 2]


def _bench_cases(family: str, device: torch.device, dtype: torch.dtype, big: bool):
    gen = torch.Generator().manual_seed(_SEED)
    if family == "traj_loss":
        n = 4_000_000 if big else 1_000_000
        a, b, c = (_rand(gen, n).to(device, dtype).requires_grad_(True) for _ in range(3))

        def run(fn):
            return lambda: torch.autograd.grad(fn(a, b, c), (a, b, c))

        return f"P={n}, forward+backward", run(torch.ops.mtt_fast.traj_loss.default), run(reference.traj_loss)
    if family == "block":
        shape = (256, 128, 16, 16) if big else (32, 128, 16, 16)
        x = _rand(gen, *shape).to(device, dtype).requires_grad_(True)
        w = (torch.rand(shape[1], generator=gen, dtype=torch.float64) + 0.5).to(device, dtype).requires_grad_(True)
        bias = (0.1 * _rand(gen, shape[1])).to(device, dtype).requires_grad_(True)

        def run(fn):
            return lambda: torch.autograd.grad(fn(x, w, bias).square().sum(), (x, w, bias))

        fused = lambda x_, w_, b_: torch.ops.mtt_fast.convblock_forward.default(x_, w_, b_, 1e-5)[0]
        return (f"x {'x'.join(map(str, shape))}, forward+backward", run(fused),
                run(lambda x_, w_, b_: reference.convblock(x_, w_, b_, 1e-5)))
    from mtt_fast.augment import DSAConfig, apply, sample_params

    shape = (256, 3, 32, 32) if big else (64, 3, 32, 32)
    p = sample_params(DSAConfig(), shape, gen, dtype=torch.float64)
    x = _rand(gen, *shape).to(device, dtype).requires_grad_(True)

    def run(impl):
        return lambda: torch.autograd.grad(apply(x, p, impl=impl).square().sum(), x)

    return f"x {'x'.join(map(str, shape))} (default strategy), forward+backward", run("fused"), run("reference")


def bench(family: str, device: torch.device | str, dtype: torch.dtype = torch.float32, reps: int = 10) -> dict[str, Any]:
    """Median ms of the compiled op and of its reference, forward + backward, one shape."""
    device = _norm_device(device)
    with _isolated(device):
        what, fused, ref = _bench_cases(family, device, dtype, big=device.type == "cuda")
        fused_ms, ref_ms = _time_ms(fused, device, reps), _time_ms(ref, device, reps)
    return {"family": family, "device": str(device), "dtype": str(dtype).removeprefix("torch."), "shape": what,
            "fused_ms": fused_ms, "reference_ms": ref_ms, "speedup": ref_ms / fused_ms if fused_ms > 0 else None}


def _git_commit() -> str | None:
    import subprocess

    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                           text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


def selftest(device: torch.device | str, dtypes=(torch.float32, torch.float64), *, benchmark: bool = False,
             families=FAMILIES) -> dict[str, Any]:
    """Run every family's check on ``device`` for each dtype, ignoring (and refreshing) the cache.

    Returns a dict: ``torch_version``, ``device``, ``device_name``, ``build_hash``,
    ``git_commit``, ``extension_loaded``, ``results`` (a row per family and dtype: the
    :class:`Verdict` fields, or ``verdict`` ``"unavailable"`` with ``reason`` where the op
    cannot run), ``bench`` (rows of :func:`bench`, when asked), ``failed`` (the families
    that failed) and ``passed``.
    """
    device = _norm_device(device)
    rows = []
    failed: list[str] = []
    for family in families:
        for dtype in dtypes:
            if not available(family, device, dtype):
                mod = _op_module(family)
                why = mod.unavailable_reason(device, dtype) if hasattr(mod, "unavailable_reason") else "not compiled"
                rows.append({"family": family, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
                             "verdict": "unavailable", "reason": why})
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", VerificationWarning)  # the table says it
                v = verify(family, device, dtype, refresh=True)
            rows.append({**v.to_json(), "verdict": "pass" if v.passed else "FAIL"})
            if not v.passed and family not in failed:
                failed.append(family)
    bench_rows = []
    if benchmark:
        for family in families:
            if available(family, device, torch.float32):
                bench_rows.append(bench(family, device))
    return {"torch_version": torch.__version__, "device": str(device), "device_name": device_name(device),
            "build_hash": build_hash(), "git_commit": _git_commit(), "extension_loaded": _load.loaded(),
            "results": rows, "bench": bench_rows, "failed": failed, "passed": not failed}


def _fmt_err(v: Any) -> str:
    if v is None:
        return "-"
    v = float(v)
    return f"{v:.2e}" if math.isfinite(v) else "inf"


def format_table(report: dict[str, Any]) -> str:
    """The selftest report as a plain-text table (and the benchmark table when present)."""
    head = ("family", "dtype", "device", "max abs err", "max rel err", "verdict", "seconds")
    lines = [(f"selftest on {report['device']} ({report['device_name']}), torch {report['torch_version']}, "
              f"build {report['build_hash'][:12] or '-'}")]
    body = []
    for r in report["results"]:
        if r["verdict"] == "unavailable":
            body.append((r["family"], r["dtype"], r["device"], "-", "-", "unavailable", "-"))
        else:
            verdict = r["verdict"] + (" (forced)" if r.get("forced") else "") + (f" ({r['error']})" if r.get("error") else "")
            body.append((r["family"], r["dtype"], r["device"], _fmt_err(r["max_abs_err"]), _fmt_err(r["max_rel_err"]),
                         verdict, f"{r['seconds']:.3f}"))
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
    for row in [head, *body]:
        lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    for r in report["results"]:
        if r["verdict"] == "unavailable":
            lines.append(f"{r['family']} {r['dtype']}: {r['reason']}")
    if report.get("bench"):
        lines.append("")
        bhead = ("family", "shape", "fused ms", "reference ms", "speedup")
        bbody = [(b["family"], b["shape"], f"{b['fused_ms']:.2f}", f"{b['reference_ms']:.2f}",
                  f"{b['speedup']:.2f}x" if b["speedup"] else "-") for b in report["bench"]]
        bw = [max(len(str(x[i])) for x in [bhead, *bbody]) for i in range(len(bhead))]
        for row in [bhead, *bbody]:
            lines.append("  ".join(str(c).ljust(w) for c, w in zip(row, bw)).rstrip())
    return "\n".join(lines)
