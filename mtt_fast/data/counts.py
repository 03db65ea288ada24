"""Images per class of a dataset's training split, from the meta a run directory records."""

from __future__ import annotations

from mtt_fast.data.load import load_dataset_from_meta


def train_class_counts(dataset_meta: dict, progress: bool = False) -> list[int]:
    """Load the dataset a store or synset describes and count its training split's classes.

    Meant as the ``class_counts`` loader of :func:`mtt_fast.report.build.build_report` (which
    never loads data itself), for ``mtt-fast report --load-data``.

    Args:
        dataset_meta: ``DatasetBundle.meta()`` as a synset's ``meta.json`` (key ``dataset``)
            or a trajectory store's ``meta.json`` records it.
        progress: show the data loading's progress bars.

    Returns:
        Images per class of the ``train`` split, in the dataset's class order.

    Raises:
        UserError: the meta is incomplete or the data no longer matches it.
        OSError: the data cannot be read.
    """
    bundle = load_dataset_from_meta(dataset_meta, progress=progress)
    return [int(c) for c in bundle.split("train").class_counts()]
