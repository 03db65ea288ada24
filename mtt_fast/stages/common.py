"""What every stage shares: the dataset options, the device, the DSA settings."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from mtt_fast import distributed
from mtt_fast.augment import DSAConfig
from mtt_fast.errors import UserError
from mtt_fast.runtime import retain_freed_memory


@dataclass
class DataOptions:
    """Which dataset a stage reads (``--dataset``, ``--data-root``, ``--res``, ...)."""

    dataset: str
    data_root: str | None = None
    res: int | None = None
    normalization: str = "auto"
    options: dict = field(default_factory=dict)
    cache_dir: str | None = None


def load_bundle(data: DataOptions, *, seed: int, progress: bool, check_splits: bool = True):
    """The dataset with its train/val/test split (split drawn from ``seed``); ``check_splits``
    False only to look at a dataset (``data stats``): every stage needs every class in every split.
    Under torchrun each node's first rank decodes into the cache before the others read it."""
    from mtt_fast.data import load_dataset

    with distributed.local_leader_first():
        return load_dataset(data.dataset, data.data_root, data.res, seed=seed, options=data.options,
                            cache_dir=data.cache_dir, normalization=data.normalization, progress=progress,
                            check_splits=check_splits)


def bundle_from_meta(meta: dict, data_root: str | None, progress: bool):
    """The dataset a store or synset recorded (``data_root``: where it lives now, if it moved)."""
    from mtt_fast.data import load_dataset_from_meta

    with distributed.local_leader_first():
        return load_dataset_from_meta(meta, root=data_root, progress=progress)


def quiet_unless_main(log: Callable[[str], None], progress: bool) -> tuple[Callable[[str], None], bool]:
    """Under torchrun only rank 0 prints messages and progress bars (one copy of each)."""
    return distributed.main_only(log), progress and distributed.global_rank() == 0


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` -> cuda when a GPU is visible, else cpu; a clear error for a missing GPU.

    Under torchrun (``WORLD_SIZE`` > 1) this is also where a stage joins the process group
    (:func:`mtt_fast.distributed.init`, gloo for cpu, nccl for cuda) and where ``cuda`` becomes
    this rank's GPU (``cuda:LOCAL_RANK``). And where the process starts keeping freed CPU
    memory for reuse (:func:`mtt_fast.runtime.retain_freed_memory`).
    """
    retain_freed_memory()
    if isinstance(name, torch.device):
        dev = name
    elif name == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(name)
        except RuntimeError:
            raise UserError(f"--device {name}: not a device (use auto, cpu, cuda or cuda:N)") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA GPU is visible to PyTorch")
    if distributed.env_world_size() > 1:
        distributed.init(device_type=dev.type)
        dev = distributed.device_for(dev)
    return dev


def dsa_dict(strategy: str | None = None, mode: str | None = None) -> dict:
    """DSA settings as stored in configs; ``strategy`` ``none`` (or empty) disables DSA."""
    d = DSAConfig()
    strategy = d.strategy if strategy is None else strategy
    return asdict(DSAConfig(strategy="" if strategy in ("none", "") else strategy, mode=d.mode if mode is None else mode))


def at_least_one(**values: int) -> None:
    """A :class:`UserError` naming the first option (``--name``) below 1."""
    for name, v in values.items():
        if v is not None and v < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1 (got {v})")


def positive(**values: float | None) -> None:
    """A :class:`UserError` naming the first option (``--name``) that is not a finite number > 0
    (None: not set, fine)."""
    for name, v in values.items():
        if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise UserError(f"--{name.replace('_', '-')} must be a positive finite number (got {v})")


def parse_lr_grid(text: str | None) -> list[float | None] | None:
    """``--lr-grid 'default,0.001,0.01'`` -> ``[None, 0.001, 0.01]`` (None: the default rate); empty: None."""
    if not text or not text.strip():
        return None
    out: list[float | None] = []
    for tok in (t.strip() for t in text.split(",")):
        if tok.lower() == "default":
            out.append(None)
            continue
        try:
            out.append(float(tok))
        except ValueError:
            raise UserError(f"--lr-grid: {tok!r} is neither a number nor 'default'") from None
    return out
