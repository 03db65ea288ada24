"""Peak-memory readings for logs and benchmarks: CUDA allocator peak or the process's peak RSS."""

from __future__ import annotations

import sys

import torch


def process_peak_rss_mib() -> float | None:
    """Peak resident set size of this process so far, in MiB (None where the OS lacks it)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def proc_status_bytes(key: str) -> int | None:
    """A memory line of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ...) in bytes; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def child_peak_rss_mib() -> float | None:
    """This process's peak RSS for a benchmark child: ``VmHWM``, which unlike ``ru_maxrss`` does not
    inherit the parent's peak across fork + exec (falls back to :func:`process_peak_rss_mib`)."""
    hwm = proc_status_bytes("VmHWM")
    return hwm / 2**20 if hwm is not None else process_peak_rss_mib()


def peak_memory(device: torch.device | str) -> dict:
    """``{"peak_mem_mib": ...}`` (CUDA: allocator peak since the last reset) or ``{"peak_rss_mib": ...}``."""
    device = torch.device(device)
    if device.type == "cuda":
        return {"peak_mem_mib": torch.cuda.max_memory_allocated(device) / 2**20}
    rss = process_peak_rss_mib()
    return {} if rss is None else {"peak_rss_mib": rss}


def format_peak_memory(rec: dict, short: bool = False) -> str:
    """A readable form of :func:`peak_memory`'s entry in ``rec``."""
    if "peak_mem_mib" in rec:
        v = rec["peak_mem_mib"]
        return f"{v:.0f}MiB" if short else f"peak CUDA memory {v:.0f} MiB (allocator peak of the iteration)"
    if "peak_rss_mib" in rec:
        v = rec["peak_rss_mib"]
        return f"{v:.0f}MiB rss" if short else f"peak resident memory {v:.0f} MiB (whole process so far)"
    return "n/a" if short else "peak memory unknown"
