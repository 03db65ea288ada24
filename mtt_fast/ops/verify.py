"""Verify-on-first-use: a compiled op family runs under ``impl="auto"`` only after it matched
its spec (:mod:`mtt_fast.ops.reference`) on that device, dtype and build.

The check (:func:`run_check`) feeds small seeded random inputs to the compiled op and to its
reference on the same device and dtype, and compares values and first derivatives (the
block also its double backward: MTT differentiates through the student's gradient; the DSA
family also the host-side packing op ``dsa_pack`` against its float64 reference). An output
passes when ``max|fused - ref| <= tol * max|ref|`` with ``tol`` 1e-4 (float32) or 1e-10
(float64), the tolerances of tests/ops.

:func:`verified` is what ``auto`` asks (through :func:`mtt_fast.ops.impl.fused_selected`, the
one place ``auto`` is decided). In a process it checks each (family, device, dtype) at most
once; the verdict is kept on disk under ``<cache dir>/ops-verify/`` (the cache dir is
``$MTT_FAST_CACHE`` or ``~/.cache/mtt-fast``), one JSON file per key: the family, the dtype,
the device's name (``torch.cuda.get_device_name`` or ``cpu <processor>``), the torch version
and the sha256 of the loaded ``mtt_fast._C`` library, so another build, torch or device is
verified again. A cache dir that cannot be written only costs a check per process.

On a failure ``auto`` takes the reference path and one :class:`VerificationWarning` names
the family, device and the largest error; ``impl="fused"`` still runs the op, with the same
warning when a failing verdict is known. Set ``MTT_FAST_VERIFY_FORCE_FAIL=dsa,block`` (or
``all``) to make the named checks fail (their compiled outputs are perturbed before the
comparison); such verdicts are marked ``forced`` and trusted only while the variable names
the family. ``mtt-fast selftest`` runs every check afresh (:func:`selftest`).

The checks draw from their own ``torch.Generator`` under ``torch.random.fork_rng``: they never
change the global RNG state or any run's generator.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mtt_fast.ops import _load, reference

__all__ = [
    "FAMILIES",
    "FORCE_FAIL_ENV",
    "TOLERANCE",
    "Verdict",
    "VerificationWarning",
    "build_hash",
    "cache_dir",
    "cached_verdicts",
    "device_name",
    "format_cached",
    "known_failure",
    "reset",
    "run_check",
    "verified",
    "verify",
    "warn_if_failed",
]

#: The compiled op families, in the order selftest reports them.
FAMILIES = ("traj_loss", "block", "dsa")

#: Relative tolerance (to the largest magnitude of the reference output) per dtype.
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10}

#: Comma-separated families whose check is made to fail (``all`` for every one): the test hook.
FORCE_FAIL_ENV = "MTT_FAST_VERIFY_FORCE_FAIL"

#: Folder under the cache dir holding one JSON verdict per key.
CACHE_SUBDIR = "ops-verify"
CACHE_FORMAT = "mtt-fast/ops-verify"

_SEED = 20250601


class VerificationWarning(RuntimeWarning):
    """A compiled op family failed its parity check (``auto`` runs its reference instead)."""


@dataclass
class Verdict:
    """The outcome of one parity check."""

    family: str
    device: str  # "cpu", "cuda:0"
    device_name: str
    dtype: str  # "float32"
    passed: bool
    max_abs_err: float
    max_rel_err: float
    seconds: float
    worst: str = ""  # the output with the largest relative error
    error: str | None = None  # an exception raised by the check, if any
    forced: bool = False  # made to fail by MTT_FAST_VERIFY_FORCE_FAIL
    when: str = ""  # UTC, ISO 8601
    torch_version: str = ""
    build_hash: str = ""
    details: dict[str, list[float]] = field(default_factory=dict)  # output -> [abs, rel]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("max_abs_err", "max_rel_err"):  # JSON has no inf/nan
            if not math.isfinite(d[k]):
                d[k] = str(d[k])
        d["details"] = {n: [v if math.isfinite(v) else str(v) for v in ab] for n, ab in d["details"].items()}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Verdict:
        names = set(cls.__dataclass_fields__)
        d = {k: v for k, v in d.items() if k in names}
        for k in ("max_abs_err", "max_rel_err", "seconds"):
            d[k] = float(d[k])
        return cls(**d)

    def line(self) -> str:
        """The one-line warning for a failed verdict."""
        why = f"raised {self.error}" if self.error else (
            f"max rel err {self.max_rel_err:.3g} (in {self.worst}; tolerance {_tol_of(self.dtype):g}), "
            f"max abs err {self.max_abs_err:.3g}")
        forced = f" [forced by {FORCE_FAIL_ENV}]" if self.forced else ""
        return (f"mtt_fast: the compiled {self.family} op failed its parity check against "
                f"mtt_fast.ops.reference on {self.device} ({self.device_name}), {self.dtype}: {why}{forced}; "
                "impl 'auto' uses the reference path (run `mtt-fast selftest` for details)")


def _tol_of(dtype_name: str) -> float:
    return TOLERANCE.get(getattr(torch, dtype_name, None), 1e-4)


# --------------------------------------------------------------------------------------
# keys: device, build, cache location
# --------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """``$MTT_FAST_CACHE``, else ``~/.cache/mtt-fast`` (as ``mtt_fast.data.cache.default_cache_dir``)."""
    return Path(os.environ.get("MTT_FAST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mtt-fast"))


def _norm_device(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def device_name(device: torch.device | str) -> str:
    """The device's model: ``torch.cuda.get_device_name`` for CUDA, ``cpu <processor>`` else."""
    device = _norm_device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"cpu {platform.processor() or platform.machine() or 'unknown'}".strip()
    return device.type


_BUILD_HASH: dict[str, str] = {}


def build_hash() -> str:
    """sha256 of the loaded ``mtt_fast._C`` library file ("" when nothing is loaded)."""
    path = getattr(_load._C, "__file__", None) if _load.loaded() else None
    if not path:
        return ""
    st = os.stat(path)
    memo_key = f"{path}:{st.st_size}:{st.st_mtime_ns}"
    if memo_key not in _BUILD_HASH:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _BUILD_HASH[memo_key] = h.hexdigest()
    return _BUILD_HASH[memo_key]


def _key(family: str, device: torch.device, dtype: torch.dtype) -> dict[str, str]:
    return {"family": family, "dtype": str(dtype).removeprefix("torch."), "device_name": device_name(device),
            "torch_version": torch.__version__, "build_hash": build_hash()}


def _cache_path(key: dict[str, str], device: torch.device) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / CACHE_SUBDIR / f"{key['family']}-{key['dtype']}-{device.type}-{digest}.json"


def _read_cached(key: dict[str, str], device: torch.device) -> Verdict | None:
    try:
        d = json.loads(_cache_path(key, device).read_text())
        if d.get("format") != CACHE_FORMAT or any(d.get("key", {}).get(k) != v for k, v in key.items()):
            return None
        return Verdict.from_json(d["verdict"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cached(key: dict[str, str], device: torch.device, verdict: Verdict) -> bool:
    """Write the verdict atomically; False (and nothing raised) when the cache dir is not writable."""
    from mtt_fast.io import write_json  # a low-level helper module (imports only mtt_fast.errors)

    try:
        write_json(_cache_path(key, device), {"format": CACHE_FORMAT, "key": key, "verdict": verdict.to_json()})
        return True
    except Exception:  # noqa: BLE001  (OSError, or io's one-line UserError for it): keep it in memory
        return False


def _forced(family: str) -> bool:
    names = {s.strip().lower() for s in os.environ.get(FORCE_FAIL_ENV, "").split(",") if s.strip()}
    return family in names or "all" in names


# --------------------------------------------------------------------------------------
# the checks: (name, fused output, reference output) triples
# --------------------------------------------------------------------------------------
def _rand(gen: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float64)


def _leaves(ts, device, dtype) -> list[Tensor]:
    return [t.to(device=device, dtype=dtype).requires_grad_(True) for t in ts]


def _check_traj_loss(device, dtype, gen) -> list[tuple[str, Tensor, Tensor]]:
    n = 1000
    a, b = _rand(gen, n), _rand(gen, n)
    c = b + 0.5 * _rand(gen, n)
    g = _rand(gen).abs() + 0.5
    out = {}
    for which, fn in (("fused", torch.ops.mtt_fast.traj_loss.default), ("ref", reference.traj_loss)):
        leaves = _leaves((a, b, c), device, dtype)
        loss = fn(*leaves)
        grads = torch.autograd.grad(loss, leaves, g.to(device=device, dtype=dtype))
        out[which] = [loss.detach(), *grads]
    names = ("loss", "d/dstudent", "d/dtarget", "d/dstart")
    return [(n_, f, r) for n_, f, r in zip(names, out["fused"], out["ref"])]


def _block_inputs(gen: torch.Generator, shape) -> tuple[Tensor, Tensor, Tensor]:
    """x, weight, bias with the normalized map away from ReLU's kink (as tests/ops)."""
    for _ in range(100):
        x = _rand(gen, *shape) * 1.5 + 0.3
        w = torch.rand(shape[1], generator=gen, dtype=torch.float64) + 0.5
        w[::2] = -w[::2]
        b = 0.3 * _rand(gen, shape[1])
        z = torch.nn.functional.group_norm(x, shape[1], w, b, 1e-5)
        if z.abs().min() > 2e-3:
            break
    return x, w, b


def _check_block(device, dtype, gen) -> list[tuple[str, Tensor, Tensor]]:
    shape, eps = (2, 4, 7, 6), 1e-5
    x, w, b = _block_inputs(gen, shape)
    gy = _rand(gen, 2, 4, 3, 3)
    rx, rw, rb = _rand(gen, *shape), _rand(gen, 4), _rand(gen, 4)
    out = {}

    def fused(x_, w_, b_):
        return torch.ops.mtt_fast.convblock_forward.default(x_, w_, b_, eps)[0]

    for which, fn in (("fused", fused), ("ref", lambda x_, w_, b_: reference.convblock(x_, w_, b_, eps))):
        xl, wl, bl = _leaves((x, w, b), device, dtype)
        (gl,) = _leaves((gy,), device, dtype)
        y = fn(xl, wl, bl)
        gx, gw, gb = torch.autograd.grad(y, (xl, wl, bl), gl, create_graph=True)
        s = sum((t * r.to(device=device, dtype=dtype)).sum() for t, r in ((gx, rx), (gw, rw), (gb, rb)))
        hg, hx, hw = torch.autograd.grad(s, (gl, xl, wl), allow_unused=True)
        out[which] = [y.detach(), gx.detach(), gw.detach(), gb.detach(), hg, hx, hw]
    names = ("y", "d/dx", "d/dweight", "d/dbias", "dd/dgrad_y", "dd/dx", "dd/dweight")
    return [(n_, f, r) for n_, f, r in zip(names, out["fused"], out["ref"])]


_CHECKS: dict[str, Callable] = {"traj_loss": _check_traj_loss, "block": _check_block}


def register_check(family: str, check: Callable) -> None:
    """Add the parity check of an op family defined above this layer (``dsa``: its parameters are
    sampled and packed by :mod:`mtt_fast.augment`, which registers it when imported)."""
    _CHECKS[family] = check


@contextlib.contextmanager
def _isolated(device: torch.device):
    """Gradients on, autocast off, and the global RNG states restored afterwards."""
    devices = [device.index] if device.type == "cuda" else []
    no_autocast = torch.autocast(device.type, enabled=False) if device.type in ("cpu", "cuda") else contextlib.nullcontext()
    with torch.random.fork_rng(devices=devices), torch.inference_mode(False), torch.enable_grad(), no_autocast:
        yield


def _compare(triples, dtype: torch.dtype, force: bool) -> tuple[bool, float, float, str, dict[str, list[float]]]:
    tol = TOLERANCE[dtype]
    passed, max_abs, max_rel, worst, details = True, 0.0, 0.0, "", {}
    for name, got, want in triples:
        if got is None and want is None:
            continue
        want = torch.zeros_like(got) if want is None else want.detach()
        got = torch.zeros_like(want) if got is None else got.detach()
        got, want = got.to("cpu", torch.float64), want.to("cpu", torch.float64)
        if force:  # the test hook: a compiled output that is clearly wrong
            got = got + (want.abs().max().clamp_min(1.0) if want.numel() else 0)
        if got.shape != want.shape:
            abs_err = rel_err = math.inf
        elif want.numel() == 0:
            abs_err = rel_err = 0.0
        else:
            diff = (got - want).abs().max().item()
            abs_err = diff if math.isfinite(diff) and bool(torch.isfinite(got).all()) else math.inf
            rel_err = abs_err / max(want.abs().max().item(), torch.finfo(dtype).tiny)
        details[name] = [abs_err, rel_err]
        max_abs = max(max_abs, abs_err)
        if rel_err >= max_rel:
            max_rel, worst = rel_err, name
        if not rel_err <= tol:
            passed = False
    return passed, max_abs, max_rel, worst, details


def run_check(family: str, device: torch.device | str, dtype: torch.dtype) -> Verdict:
    """Run the parity check of ``family`` on ``device`` / ``dtype`` now (no cache involved).

    The compiled op must be available there (:func:`available`); an exception raised by the
    check makes it fail (its message is kept in ``error``).
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown op family {family!r}; one of {', '.join(FAMILIES)}")
    if family not in _CHECKS:
        raise ValueError(f"no parity check registered for {family!r} (import mtt_fast.augment first)")
    device = _norm_device(device)
    force = _forced(family)
    t0 = time.perf_counter()
    error = None
    try:
        with _isolated(device):
            gen = torch.Generator().manual_seed(_SEED)
            triples = _CHECKS[family](device, dtype, gen)
            passed, max_abs, max_rel, worst, details = _compare(triples, dtype, force)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    except Exception as exc:  # noqa: BLE001  (a kernel that raises fails its check)
        passed, max_abs, max_rel, worst, details = False, math.inf, math.inf, "", {}
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return Verdict(
        family=family, device=str(device), device_name=device_name(device),
        dtype=str(dtype).removeprefix("torch."), passed=passed, max_abs_err=max_abs, max_rel_err=max_rel,
        seconds=time.perf_counter() - t0, worst=worst, error=error, forced=force,
        when=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        torch_version=torch.__version__, build_hash=build_hash(), details=details,
    )


# --------------------------------------------------------------------------------------
# the gate: at most one check per (family, device, dtype) and process
# --------------------------------------------------------------------------------------
_LOCK = threading.RLock()
_MEMO: dict[tuple[str, Any, torch.dtype], Verdict] = {}
_WARNED: set[tuple[str, str, str]] = set()
_LOOKED_UP: dict[tuple[str, Any, torch.dtype], Verdict | None] = {}  # known_failure: disk read once


def reset() -> None:
    """Forget every in-process verdict and warning (tests; the disk cache is untouched)."""
    with _LOCK:
        _MEMO.clear()
        _WARNED.clear()
        _LOOKED_UP.clear()


def _warn(verdict: Verdict) -> None:
    k = (verdict.family, verdict.device, verdict.dtype)
    if k in _WARNED:
        return
    _WARNED.add(k)
    warnings.warn(verdict.line(), VerificationWarning, stacklevel=_caller_level())


def _caller_level() -> int:
    """The stacklevel of the first frame outside mtt_fast/ops (the code that asked for the op)."""
    here = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(2), 2  # 1 = _warn's caller
    while frame is not None and os.path.dirname(os.path.abspath(frame.f_code.co_filename)) == here:
        frame, level = frame.f_back, level + 1
    return level


def verify(family: str, device: torch.device | str, dtype: torch.dtype, *, refresh: bool = False) -> Verdict:
    """The verdict for ``family`` on ``device`` / ``dtype``: from this process, the disk cache,
    or a check run now (then cached). ``refresh=True`` always runs the check (selftest).

    Warns once per (family, device, dtype) and process when the verdict is a failure.
    """
    raw = (family, device, dtype)
    with _LOCK:
        if not refresh and raw in _MEMO:
            return _MEMO[raw]
        dev = _norm_device(device)
        memo_key = (family, str(dev), dtype)
        verdict = None if refresh else _MEMO.get(memo_key)
        if verdict is None:
            key = _key(family, dev, dtype)
            forced = _forced(family)
            if not refresh and not forced:
                verdict = _read_cached(key, dev)
                if verdict is not None and verdict.forced:  # only trusted while forcing
                    verdict = None
            if verdict is None:
                verdict = run_check(family, dev, dtype)
                _write_cached(key, dev, verdict)
        _MEMO[raw] = _MEMO[memo_key] = verdict
        _LOOKED_UP.pop(raw, None)
        if not verdict.passed:
            _warn(verdict)
        return verdict


def verified(family: str, device: torch.device | str, dtype: torch.dtype) -> bool:
    """Whether ``impl="auto"`` may run the compiled ``family`` here: it passed its parity check.

    The caller has already established that the op is available on this device and dtype.
    Under ``torch.compile`` the answer is taken at trace time, as a constant.
    """
    if torch.compiler.is_compiling():
        return _verified_at_trace_time(family, device, dtype)
    v = _MEMO.get((family, device, dtype))  # the hot path: one dict lookup
    if v is None:
        v = verify(family, device, dtype)
    return v.passed


@torch.compiler.assume_constant_result
def _verified_at_trace_time(family: str, device, dtype) -> bool:
    return verify(family, device, dtype).passed


@torch.compiler.assume_constant_result
def _warn_at_trace_time(family: str, device, dtype) -> bool:
    warn_if_failed(family, device, dtype)
    return True


def known_failure(family: str, device: torch.device | str, dtype: torch.dtype) -> Verdict | None:
    """A failing verdict already known (this process or the disk cache) without running a check."""
    raw = (family, device, dtype)
    v = _MEMO.get(raw)
    if v is not None:
        return None if v.passed else v
    if raw in _LOOKED_UP:
        return _LOOKED_UP[raw]
    with _LOCK:
        dev = _norm_device(device)
        v = _MEMO.get((family, str(dev), dtype))
        if v is None:
            v = _read_cached(_key(family, dev, dtype), dev)
            if v is not None and v.forced and not _forced(family):
                v = None
        found = v if v is not None and not v.passed else None
        _LOOKED_UP[raw] = found
        return found


def warn_if_failed(family: str, device: torch.device | str, dtype: torch.dtype) -> None:
    """For ``impl="fused"``: the op runs as asked, with the warning of a known failing verdict."""
    if torch.compiler.is_compiling():
        _warn_at_trace_time(family, device, dtype)
        return
    v = known_failure(family, device, dtype)
    if v is not None:
        _warn(v)


# --------------------------------------------------------------------------------------
# cached verdicts (mtt-fast info)
# --------------------------------------------------------------------------------------
def cached_verdicts(root: str | Path | None = None) -> list[dict[str, Any]]:
    """Every verdict on disk: dicts with the key fields, ``passed``, ``when``, ``forced`` and
    ``current`` (made with the loaded build and this torch), sorted by family, device, dtype."""
    folder = (Path(root) if root is not None else cache_dir()) / CACHE_SUBDIR
    rows = []
    try:
        files = sorted(folder.glob("*.json"))
    except OSError:
        return []
    cur = {"torch_version": torch.__version__, "build_hash": build_hash()}
    for f in files:
        try:
            d = json.loads(f.read_text())
            if d.get("format") != CACHE_FORMAT:
                continue
            key, v = d["key"], d["verdict"]
            rows.append({**key, "device": v.get("device", ""), "passed": bool(v["passed"]),
                         "when": v.get("when", ""), "forced": bool(v.get("forced", False)),
                         "max_rel_err": v.get("max_rel_err"),
                         "current": all(key.get(k) == val for k, val in cur.items()), "path": str(f)})
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    order = {f: i for i, f in enumerate(FAMILIES)}
    rows.sort(key=lambda r: (order.get(r["family"], 99), r["device_name"], r["dtype"], r["when"]))
    return rows


def format_cached(rows: list[dict[str, Any]] | None = None) -> list[str]:
    """One line per cached verdict (``mtt-fast info``)."""
    rows = cached_verdicts() if rows is None else rows
    out = []
    for r in rows:
        flags = ("" if r["current"] else "  (other build or torch)") + ("  (forced)" if r["forced"] else "")
        out.append(f"  {r['family']:<9} {r['device_name']}  {r['dtype']:<7}  "
                   f"{'pass' if r['passed'] else 'FAIL'}  {r['when']}{flags}")
    return out
