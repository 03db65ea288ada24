"""What decides a run's last bits besides its settings: torch, threads, the CPU kernels' ISA.

The same seed gives the same bits only with the same torch build, thread count and CPU
instruction set (torch's multi-threaded convolution weight gradients and sums reduce in an
order that depends on the thread count; its kernels differ per instruction set). Stores,
synsets, evaluation results and checkpoints record :func:`runtime`, and a resume on another
thread count says so.
"""

from __future__ import annotations

import torch


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
    diffs = [f"{k} {recorded[k]} then, {now[k]} now" for k in ("torch", "threads", "cpu_capability", "device")
             if k in recorded and recorded[k] != now[k]]
    return "; ".join(diffs) or None
