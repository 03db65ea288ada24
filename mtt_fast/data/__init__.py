"""Datasets (pg, crc, folder, npz, fashion-mnist), bag-disjoint splits, transforms, stats.

    bundle = load_dataset("crc", "/data/tcga", res=64, seed=0)
    x, y = next(bundle.split("train").batches(256, generator=torch.Generator().manual_seed(0)))

Attributes are imported lazily (PEP 562) so that `mtt_fast.data.imageio`, used by the
cache-building worker processes, loads without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "load_dataset": "mtt_fast.data.load",
    "load_dataset_from_meta": "mtt_fast.data.load",
    "dataset_names": "mtt_fast.data.load",
    "DatasetBundle": "mtt_fast.data.dataset",
    "ImageSplit": "mtt_fast.data.dataset",
    "dataset_stats": "mtt_fast.data.stats",
    "format_stats": "mtt_fast.data.stats",
    "ExpertTransform": "mtt_fast.data.transforms",
    "NORMALIZATION_PRESETS": "mtt_fast.data.normalization",
    "default_cache_dir": "mtt_fast.data.cache",
    "DataWarning": "mtt_fast.data.source",
}

__all__ = [
    "NORMALIZATION_PRESETS",
    "DataWarning",
    "DatasetBundle",
    "ExpertTransform",
    "ImageSplit",
    "dataset_names",
    "dataset_stats",
    "default_cache_dir",
    "format_stats",
    "load_dataset",
    "load_dataset_from_meta",
]

if TYPE_CHECKING:
    from mtt_fast.data.cache import default_cache_dir as default_cache_dir
    from mtt_fast.data.dataset import DatasetBundle as DatasetBundle
    from mtt_fast.data.dataset import ImageSplit as ImageSplit
    from mtt_fast.data.load import dataset_names as dataset_names
    from mtt_fast.data.load import load_dataset as load_dataset
    from mtt_fast.data.load import load_dataset_from_meta as load_dataset_from_meta
    from mtt_fast.data.normalization import NORMALIZATION_PRESETS as NORMALIZATION_PRESETS
    from mtt_fast.data.source import DataWarning as DataWarning
    from mtt_fast.data.stats import dataset_stats as dataset_stats
    from mtt_fast.data.stats import format_stats as format_stats
    from mtt_fast.data.transforms import ExpertTransform as ExpertTransform


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mtt_fast.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
