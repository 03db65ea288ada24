"""Loading the compiled core ``mtt_fast._C``, never crashing when it is missing.

Importing ``mtt_fast._C`` loads the shared library built from ``csrc/``; its
``TORCH_LIBRARY(mtt_fast, m)`` block then defines the ops in ``torch.ops.mtt_fast`` and its
``TORCH_LIBRARY_IMPL`` blocks register the CPU (and, in a CUDA build, CUDA) kernels.

If the import fails (not built, built against another torch, ...) the package runs on the
pure-PyTorch reference path and :data:`LOAD_ERROR` keeps the reason. Setting the
environment variable ``MTT_FAST_DISABLE_EXT=1`` skips loading on purpose (to test or
compare against the reference path).
"""

from __future__ import annotations

import os
from types import ModuleType

import torch

NAMESPACE = "mtt_fast"

_C: ModuleType | None = None
LOAD_ERROR: str | None = None

if os.environ.get("MTT_FAST_DISABLE_EXT", "").strip().lower() in ("1", "true", "yes", "on"):
    LOAD_ERROR = "disabled by MTT_FAST_DISABLE_EXT=1"
else:
    try:
        from mtt_fast import _C  # loads the library, which registers the ops
    except Exception as exc:  # noqa: BLE001  (ImportError, OSError: undefined symbol, ...)
        _C = None
        LOAD_ERROR = f"{type(exc).__name__}: {exc}"


def loaded() -> bool:
    """True when ``mtt_fast._C`` imported and its ops are in ``torch.ops.mtt_fast``."""
    return _C is not None


def qualname(op: str) -> str:
    """``"traj_loss"`` -> ``"mtt_fast::traj_loss"``."""
    return f"{NAMESPACE}::{op}"


def built_with_cuda() -> bool:
    """Whether the loaded library holds CUDA kernels (False when nothing is loaded)."""
    if not loaded():
        return False
    return bool(torch.ops.mtt_fast.built_with_cuda())


def op_names() -> list[str]:
    """Every op of the library, as ``"mtt_fast::name"``, sorted ([] when not loaded)."""
    if not loaded():
        return []
    try:
        names = torch._C._dispatch_get_all_op_names()
    except Exception:  # noqa: BLE001  (private API moved)
        return []
    return sorted(n for n in names if n.startswith(NAMESPACE + "::"))


def has_kernel(op: str, device_type: str) -> bool:
    """Whether ``mtt_fast::op`` has a compiled kernel for ``device_type`` ("cpu", "cuda").

    A CPU-only build registers no CUDA kernel, so CUDA tensors must take the reference path.
    """
    if not loaded():
        return False
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(device_type)
    if key is None:
        return False
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(qualname(op), key))
    except Exception:  # noqa: BLE001  (private API moved: fall back on the build flag)
        return device_type == "cpu" or built_with_cuda()


def compiled_devices(op: str, registered: bool = True) -> frozenset[str]:
    """Device types ("cpu", "cuda") with a compiled kernel for ``mtt_fast::op`` (fixed at import)."""
    return frozenset(d for d in ("cpu", "cuda") if registered and has_kernel(op, d))


def unavailable_reason(what: str, device: torch.device | str, dtype: torch.dtype, *, devices: frozenset[str],
                       dtypes, registered: bool = True) -> str:
    """One line saying why the compiled op family ``what`` cannot run on this device and dtype.

    Shared by every op family's ``fused_available`` / ``unavailable_reason``.
    """
    device = torch.device(device)
    if not loaded():
        return (f"the compiled extension mtt_fast._C is not loaded ({LOAD_ERROR}); rebuild with "
                "`pip install --no-build-isolation -e .`")
    if not registered:
        return f"the loaded mtt_fast._C has no {what} ops (rebuild: pip install --no-build-isolation -e .)"
    if dtype not in dtypes:
        return f"only float32 and float64 are compiled for {what}, got {dtype}"
    if device.type not in devices:
        return (f"mtt_fast._C has no {what} kernel for device '{device.type}' (compiled for: "
                f"{', '.join(sorted(devices)) or 'nothing'}; built_with_cuda={built_with_cuda()})")
    return "available"
