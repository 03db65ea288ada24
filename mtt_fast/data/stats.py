"""Dataset statistics (`mtt-fast data stats`): class counts, imbalance, bags, mean/std."""

from __future__ import annotations

from typing import Any

from mtt_fast.data.dataset import DatasetBundle
from mtt_fast.data.load import train_mean_std


def dataset_stats(
    bundle: DatasetBundle, *, compute_mean_std: bool = True, progress: bool = False
) -> dict[str, Any]:
    """Summarize a loaded dataset.

    Returns a JSON-serializable dict: name, root, res, channels, classes, the normalization
    in use, per split {images, class_counts, imbalance_ratio (max/min class count, None when
    a class is absent), bags, bags_per_class (by the bag's majority class)}, left_out (what
    the reader skipped: pg unknown subtypes and slides without patches, ...), and the
    train split's own per-channel mean/std in [0, 1] units (computed, cached for file
    datasets; skipped with compute_mean_std=False).
    """
    splits: dict[str, Any] = {}
    for sname, sp in bundle.splits.items():
        counts = sp.class_counts()
        bag_votes: dict[str, list[int]] = {}
        for b, y in zip(sp.bags, sp.labels.tolist()):
            bag_votes.setdefault(b, [0] * bundle.num_classes)[y] += 1
        bag_class = [max(range(len(v)), key=lambda i: (v[i], -i)) for v in bag_votes.values()]
        bags_per_class = [bag_class.count(c) for c in range(bundle.num_classes)]
        present = [c for c in counts if c > 0]
        ratio = None
        if len(present) == bundle.num_classes and present:
            ratio = round(max(counts) / min(counts), 4)
        splits[sname] = {
            "images": len(sp),
            "class_counts": dict(zip(bundle.classes, counts)),
            "imbalance_ratio": ratio,
            "bags": len(bag_votes),
            "bags_per_class": dict(zip(bundle.classes, bags_per_class)),
        }
    out: dict[str, Any] = {
        "name": bundle.name,
        "root": bundle.root,
        "res": bundle.res,
        "channels": bundle.channels,
        "classes": list(bundle.classes),
        "seed": bundle.seed,
        "normalization": {
            "mode": bundle.normalization,
            "mean": list(bundle.mean),
            "std": list(bundle.std),
        },
        "splits": splits,
        "left_out": bundle.left_out,
    }
    if compute_mean_std:
        tr = bundle.split("train")
        mean, std = train_mean_std(tr.store, tr.store_index, bundle.cache_path, progress)
        out["train_mean"], out["train_std"] = list(mean), list(std)
    return out


def _fmt_floats(v: Any) -> str:
    return "(" + ", ".join(f"{x:.4f}" for x in v) + ")"


def format_stats(stats: dict[str, Any]) -> str:
    """Render `dataset_stats` output as a plain-text table."""
    classes = stats["classes"]
    names = list(stats["splits"])
    lines = [
        f"dataset {stats['name']}  root {stats['root']}",
        f"images {stats['channels']}x{stats['res']}x{stats['res']}  classes {len(classes)}  seed {stats['seed']}",
        "",
    ]
    w0 = max([len("imbalance (max/min)")] + [len(c) + 9 for c in classes])
    header = f"{'':<{w0}}" + "".join(f"{n:>14}" for n in names)
    lines.append(header)
    lines.append("-" * len(header))

    def row(label: str, vals: list[Any]) -> None:
        lines.append(f"{label:<{w0}}" + "".join(f"{v!s:>14}" for v in vals))

    sp = stats["splits"]
    row("images", [sp[n]["images"] for n in names])
    for c in classes:
        row(f"  {c}", [sp[n]["class_counts"][c] for n in names])
    row(
        "imbalance (max/min)",
        [
            ("inf" if sp[n]["imbalance_ratio"] is None else f"{sp[n]['imbalance_ratio']:.2f}")
            for n in names
        ],
    )
    row("bags", [sp[n]["bags"] for n in names])
    for c in classes:
        row(f"  {c} bags", [sp[n]["bags_per_class"][c] for n in names])
    lines.append("")
    norm = stats["normalization"]
    lines.append(
        f"normalization {norm['mode']}: mean {_fmt_floats(norm['mean'])} std {_fmt_floats(norm['std'])}"
    )
    if "train_mean" in stats:
        lines.append(
            f"train split:   mean {_fmt_floats(stats['train_mean'])} std {_fmt_floats(stats['train_std'])}"
        )
    left = {k: v for k, v in stats.get("left_out", {}).items() if v}
    if left:
        lines.append("left out:")
        for k, v in left.items():
            if isinstance(v, dict):
                for kk, vv in v.items():
                    lines.append(f"  {k}: {kk}: {vv}")
            elif isinstance(v, list):
                lines.append(f"  {k}: {', '.join(map(str, v))}")
            else:
                lines.append(f"  {k}: {v}")
    return "\n".join(lines)
