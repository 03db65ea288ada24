"""Running a stage under ``torchrun``: the process group, who writes, and how a failure ends every rank.

``torchrun --nproc-per-node K -m mtt_fast <command> ...`` starts K processes with ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK`` set. :func:`init` (called by the CLI, or by a Python user before a
stage) joins them into one process group: ``nccl`` when the ranks compute on CUDA, ``gloo`` on
CPUs (``backend=`` / ``$MTT_FAST_DIST_BACKEND`` override). Without ``WORLD_SIZE`` (or with 1)
nothing here does anything and every stage runs exactly as a single process.

Rules every stage follows:

* Rank 0 owns the run directory: it alone checks it, locks it, writes ``config.yaml``,
  checkpoints and results, and broadcasts what it read (a resume state) to the others. A rank
  may write a file of its own only when it is that file's one writer (an expert's shard).
* Work that is independent (experts, evaluation cells, sweep points) is sharded with
  :func:`shard`; an unrolled student step is split over ranks by image owner and its gradient
  all-reduced (:mod:`mtt_fast.match`), so every rank holds the same student at every step.
* A :class:`~mtt_fast.errors.UserError` on any rank is published in the rendezvous store; a
  watcher thread on every rank sees it within a fraction of a second, rank 0 prints the one
  line, and every rank exits with status 2, so no rank hangs in a collective waiting for a
  rank that is gone. A rank killed outright is torchrun's to handle (``--max-restarts``): it
  stops the group and restarts it, and the stages resume from their last checkpoint.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta

import torch
import torch.distributed as dist

from mtt_fast.errors import UserError

_ERROR_KEY = "mtt_fast/error"
_ACK_KEY = "mtt_fast/error_ack"
_state = {"solo": 0, "watcher": None, "reported": False}
_stop_watching = threading.Event()


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun set it (1 when not launched by torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise UserError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} is not a number") from None


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Ranks that share the current work (1 inside :func:`solo` and without torchrun)."""
    if _state["solo"] or not initialized():
        return 1
    return dist.get_world_size()


def rank() -> int:
    """This process's rank among :func:`world_size` (0 inside :func:`solo`)."""
    if _state["solo"] or not initialized():
        return 0
    return dist.get_rank()


def global_rank() -> int:
    """The rank in the whole group, also inside :func:`solo` (who may print, who writes shared files)."""
    return dist.get_rank() if initialized() else 0


def active() -> bool:
    """True when the current work is split over more than one rank."""
    return world_size() > 1


def is_main() -> bool:
    """True on the one rank that writes the run directory and prints."""
    return rank() == 0


def init(backend: str | None = None, device_type: str | None = None) -> bool:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1; returns whether one is active.

    Args:
        backend: ``nccl`` | ``gloo`` (default ``$MTT_FAST_DIST_BACKEND``, else nccl when CUDA is
            visible and ``device_type`` is not ``cpu``, else gloo).
        device_type: the device the stage will compute on, if known (``cpu`` forces gloo).
    """
    if env_world_size() <= 1 or initialized():
        return initialized()
    if not dist.is_available():
        raise UserError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    backend = backend or os.environ.get("MTT_FAST_DIST_BACKEND") or None
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and device_type != "cpu" else "gloo"
    if backend not in ("nccl", "gloo"):
        raise UserError(f"--dist-backend {backend}: choose nccl (CUDA) or gloo (CPU)")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise UserError("--dist-backend nccl needs CUDA GPUs; use gloo on CPUs")
        torch.cuda.set_device(local_rank() % torch.cuda.device_count())
    timeout = timedelta(minutes=float(os.environ.get("MTT_FAST_DIST_TIMEOUT_MIN", "60")))
    # torchrun's store outlives a restart of the group (--max-restarts): the ranks of a new
    # attempt must not read the addresses the dead attempt left there, so each attempt keys
    # its group (and our error flag) under a prefix of its own
    store, rank_, world = next(dist.rendezvous("env://", timeout=timeout))
    store = dist.PrefixStore(f"mtt_fast/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", store)
    dist.init_process_group(backend, store=store, rank=rank_, world_size=world, timeout=timeout)
    _start_watcher()
    atexit.register(shutdown)
    return True


def shutdown() -> None:
    """Leave the process group (idempotent; registered at exit). The watcher stops first: it must
    not ask a store that is being destroyed."""
    _stop_watching.set()
    watcher = _state["watcher"]
    if watcher is not None and watcher is not threading.current_thread():
        watcher.join(timeout=2.0)
    if initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def device_for(device: torch.device) -> torch.device:
    """This rank's device: ``cuda`` becomes ``cuda:LOCAL_RANK`` under torchrun."""
    if device.type == "cuda" and device.index is None and initialized():
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return device


@contextlib.contextmanager
def solo() -> Iterator[None]:
    """Run the enclosed work as a single process (a sweep point owned by this rank alone)."""
    _state["solo"] += 1
    try:
        yield
    finally:
        _state["solo"] -= 1


# -- collectives (no-ops without a group) ----------------------------------------------
def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """``obj`` from rank ``src`` on every rank (pickled: only ever our own state, never a user's file)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj) -> list:
    """Every rank's ``obj``, in rank order."""
    if not active():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (and return it)."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """``t`` of rank ``src`` into ``t`` on every rank (in place; same shape and dtype everywhere)."""
    if active():
        dist.broadcast(t, src=src)
    return t


def shard(items: Sequence) -> list:
    """This rank's share of independent work items: ``items[rank::world]``."""
    return list(items[rank()::world_size()])


def split_bounds(n: int, world: int, rank: int) -> tuple[int, int]:
    """``[lo, hi)``: rank ``rank``'s contiguous slice of ``n`` items over ``world`` ranks (the
    slices' sizes differ by at most one, the larger ones first)."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def owner_ranges(n: int) -> list[tuple[int, int]]:
    """Every rank's :func:`split_bounds` of ``n`` items, in rank order."""
    return [split_bounds(n, world_size(), r) for r in range(world_size())]


@contextlib.contextmanager
def local_leader_first() -> Iterator[None]:
    """Rank 0 of each node does the enclosed work first (fills a node-local cache), then the rest."""
    if not active():
        yield
        return
    if local_rank() != 0:
        dist.barrier()
    yield
    if local_rank() == 0:
        dist.barrier()


def main_only(log: Callable[[str], None]) -> Callable[[str], None]:
    """``log`` on the main rank, nothing elsewhere (one copy of each message)."""
    if global_rank() == 0:
        return log
    return lambda msg: None


# -- one user error ends every rank ------------------------------------------------------
def _store():
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()


def fail_all(message: str, echo: Callable[[str], None]) -> None:
    """End this rank for a user error, and make every other rank end with the same line.

    Rank 0 prints ``message``; another rank publishes it, waits (a few seconds at most) until
    rank 0 has printed it, and exits; the watcher threads make the remaining ranks exit with
    status 2 instead of waiting in a collective forever.
    """
    if not initialized():
        echo(message)
        sys.exit(2)
    _state["reported"] = True
    me = global_rank()
    try:
        store = _store()
        store.set(_ERROR_KEY, f"{me}\n{message}")
        if me == 0:
            echo(message)
            store.set(_ACK_KEY, "1")
        else:
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                if store.check([_ACK_KEY]):
                    break
                time.sleep(0.05)
            else:
                echo(message)  # rank 0 is gone: say it here
    except Exception:  # noqa: BLE001 - the store itself may be gone; the line must still appear
        echo(message)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(2)


def _start_watcher() -> None:
    """A daemon thread that ends this rank when another rank has published a user error."""
    def watch() -> None:
        store = _store()
        while not _stop_watching.wait(0.2):
            try:
                if not store.check([_ERROR_KEY]):
                    continue
                raw = store.get(_ERROR_KEY).decode()
            except Exception:  # noqa: BLE001 - the store went away: torchrun is tearing the group down
                return
            if _state["reported"]:
                return  # this rank is reporting it itself
            _, _, message = raw.partition("\n")
            if global_rank() == 0:
                print(f"error: {message}", file=sys.stderr, flush=True)
                with contextlib.suppress(Exception):
                    store.set(_ACK_KEY, "1")
            sys.stdout.flush()
            os._exit(2)

    t = threading.Thread(target=watch, name="mtt-fast-error-watcher", daemon=True)
    t.start()
    _state["watcher"] = t
