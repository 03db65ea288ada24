"""What decides a run's last bits besides its settings: torch, threads, the CPU kernels' ISA.

The same seed gives the same bits only with the same torch build, thread count and CPU
instruction set (torch's multi-threaded convolution weight gradients and sums reduce in an
order that depends on the thread count; its kernels differ per instruction set). Stores,
synsets, evaluation results and checkpoints record :func:`runtime`, and a resume on another
thread count says so.

It also holds :func:`retain_freed_memory`, the process-wide allocator setting every stage
applies on the CPU (it changes speed and resident memory, never a bit of a result).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys

import torch

from mtt_fast.errors import UserError

#: glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
#: The environment variable that turns the setting off: ``MTT_FAST_MALLOC=system``.
MALLOC_ENV = "MTT_FAST_MALLOC"
_retained: bool | None = None


def retain_freed_memory() -> bool:
    """Keep freed CPU memory in this process for reuse instead of returning it to the OS.

    PyTorch's CPU allocator takes every tensor from ``malloc``, and glibc serves each large one
    (above 128 KiB to 32 MiB) from a fresh ``mmap`` and gives it back on free. A distillation
    iteration allocates gigabytes of activations and autograd graphs and frees them again, so
    the next iteration touches all of it afresh: about a million page faults, each zeroing a
    4 KiB page, per iteration of the fmnist setting (N = 10); the profile charged them to the
    convolutions, which then seemed to reach 134 GFLOP/s instead of the 217 they reach on
    reused memory (``benchmarks/results/profile_cpu.md``). With mmap off and trimming off
    (glibc's ``mallopt(M_MMAP_MAX, 0)`` and ``mallopt(M_TRIM_THRESHOLD, -1)``) the heap keeps
    what was freed and the next iteration reuses it without a fault.

    The price: the process's resident memory stays at its peak (a distillation run returns to
    its peak every iteration anyway) plus some fragmentation (up to ~10% measured); another
    program on the machine cannot use that memory until the process ends. The default memory
    budget of ``--engine auto`` counts the retained free memory as available
    (:func:`retained_free_bytes`). Results do not change: PyTorch aligns every CPU tensor to
    64 bytes either way.

    Applied once per process by every stage (:func:`mtt_fast.stages.common.resolve_device`),
    on Linux with glibc. ``MTT_FAST_MALLOC=system`` leaves the allocator as it is.

    Returns:
        whether the setting is in effect.

    Raises:
        UserError: ``MTT_FAST_MALLOC`` is neither ``retain`` nor ``system``.
    """
    global _retained
    if _retained is not None:
        return _retained
    mode = os.environ.get(MALLOC_ENV, "retain").strip().lower() or "retain"
    if mode not in ("retain", "system"):
        raise UserError(f"{MALLOC_ENV}={os.environ[MALLOC_ENV]!r}: expected 'retain' (the default) or 'system'")
    ok = False
    libc = _glibc()
    if mode == "retain" and libc is not None:
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, -1) == 1
    _retained = ok
    return ok


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                     "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """This process's C library when it is glibc on Linux (musl's allocator has no such settings)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version, libc.mallopt  # noqa: B018 - present in glibc only
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if hasattr(libc, "mallinfo2"):  # glibc >= 2.33
        libc.mallinfo2.argtypes, libc.mallinfo2.restype = [], _Mallinfo2
    return libc


def retained_free_bytes() -> int:
    """Bytes this process's heap holds free for reuse (glibc's ``mallinfo2().fordblks``); 0 when
    :func:`retain_freed_memory` is not in effect or the C library cannot say."""
    libc = _glibc()
    if not _retained or libc is None or not hasattr(libc, "mallinfo2"):  # mallinfo2: glibc >= 2.33
        return 0
    return int(libc.mallinfo2().fordblks)


def runtime(device: torch.device | str = "cpu") -> dict:
    """``{"torch", "threads", "cpu_capability", "device"}`` of this process."""
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "device": name}


def differences(recorded: dict | None, device: torch.device | str = "cpu") -> str | None:
    """A phrase naming what differs between ``recorded`` and this process (None: nothing, or unknown)."""
    if not recorded:
        return None
    now = runtime(device)
    diffs = [f"{k} {recorded[k]} then, {now[k]} now" + (f" (`--num-threads {recorded[k]}` restores it)"
                                                         if k == "threads" else "")
             for k in ("torch", "threads", "cpu_capability", "device") if k in recorded and recorded[k] != now[k]]
    return "; ".join(diffs) or None
