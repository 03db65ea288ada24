"""The report's PNG figures (matplotlib, Agg canvas; no pyplot global state).

Each function draws one figure and writes it atomically to ``path``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from mtt_fast.io import atomic_target
from mtt_fast.report.tables import METRIC_NAMES
from mtt_fast.synth.synset import grid_row_labels, label_rows

COLORS = ["#7f7f7f", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2"]


def _save(fig: Figure, path: str | Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_target(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return Path(path)


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (same length as ``y``)."""
    if window <= 1 or len(y) < 2:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    out = np.empty_like(y)
    for i in range(len(y)):
        lo = max(0, i + 1 - window)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def _val(d: dict, key: str) -> float:
    v = d.get(key)
    return np.nan if v is None else float(v)


def plot_curves(metrics: list[dict], metric: str, title: str, path: str | Path,
                loss_label: str = "matching loss\n(normalized distance)") -> Path | None:
    """Validation metric, matching loss and ``syn_lr`` against the distillation iteration.

    Args:
        metrics: the run's ``metrics.jsonl`` records (evaluation lines hold ``val``/``val_std``,
            step lines hold ``loss``/``syn_lr``).
        metric: the headline metric key (``accuracy`` or ``auc``).
        loss_label: the y label of the loss panel (DD's loss is not a matching distance).

    Returns:
        ``path``, or None when the run has neither evaluations nor steps.
    """
    evals = [r for r in metrics if isinstance(r.get("val"), dict)]
    steps = [r for r in metrics if "loss" in r]
    if not evals and not steps:
        return None
    fig = Figure(figsize=(7.5, 8.5))
    ax1, ax2, ax3 = fig.subplots(3, 1, sharex=True)
    if evals:
        it = np.array([r["iteration"] for r in evals], dtype=float)
        for key, style, color, lw in ((metric, "-o", COLORS[2], 3.0), ("balanced_accuracy", "--s", COLORS[1], 1.2)):
            y = np.array([_val(r["val"], key) for r in evals], float)
            if np.all(np.isnan(y)):
                continue
            sd = np.array([(r.get("val_std") or {}).get(key) or 0.0 for r in evals], float)
            ax1.plot(it, y, style, color=color, lw=lw, ms=4, label=f"{METRIC_NAMES.get(key, key)}")
            if np.any(sd > 0):
                ax1.fill_between(it, y - sd, y + sd, color=color, alpha=0.15)
        y = np.array([_val(r["val"], metric) for r in evals], float)
        if not np.all(np.isnan(y)):
            b = int(np.nanargmax(y))
            ax1.plot([it[b]], [y[b]], "*", color="k", ms=13, zorder=5, label=f"best: {y[b]:.1f} at it. {int(it[b])}")
        ax1.legend(loc="lower right", fontsize=8)
    else:
        ax1.text(0.5, 0.5, "no validation evaluations recorded", ha="center", va="center", transform=ax1.transAxes)
    ax1.set_ylabel("validation (%)")
    ax1.set_title(title)
    ax1.grid(alpha=0.3)
    if steps:
        it = np.array([r["iteration"] for r in steps], dtype=float)
        loss = np.array([r["loss"] for r in steps], dtype=float)
        w = max(1, len(loss) // 20)
        ax2.plot(it, loss, color=COLORS[1], alpha=0.35 if w > 1 else 1.0, lw=0.8 if w > 1 else 1.5, label="per iteration")
        if w > 1:
            ax2.plot(it, _smooth(loss, w), color=COLORS[1], lw=2, label=f"moving average ({w} it.)")
        ax2.legend(loc="upper right", fontsize=8)
        lr = np.array([r.get("syn_lr", np.nan) for r in steps], dtype=float)
        ax3.plot(it, lr, color=COLORS[3], lw=1.5)
        ax3.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3), useOffset=False)
    else:
        for ax in (ax2, ax3):
            ax.text(0.5, 0.5, "no distillation steps recorded", ha="center", va="center", transform=ax.transAxes)
    ax2.set_ylabel(loss_label)
    ax3.set_ylabel("learned syn_lr")
    ax3.set_xlabel("distillation iteration")
    for ax in (ax2, ax3):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_recall(classes: list[str], series: list[tuple[str, list[float], float | None]], title: str,
                path: str | Path) -> Path:
    """Per-class recall on real test data of networks trained on each synset (grouped bars).

    Args:
        classes: the K class names.
        series: ``(label, recall per class [K] in percent, balanced accuracy or None)``.
    """
    k, n = len(classes), max(1, len(series))
    fig = Figure(figsize=(max(8.5, 0.75 * k * max(1, n / 2) + 4), 4.5))
    ax = fig.subplots()
    x = np.arange(k)
    width = 0.8 / n
    for i, (label, recall, bal) in enumerate(series):
        lab = label if bal is None else f"{label} (balanced acc. {bal:.1f})"
        ax.bar(x - 0.4 + width * (i + 0.5), recall, width, label=lab, color=COLORS[i % len(COLORS)])
    ax.set_xticks(x)
    ax.set_xticklabels(classes, rotation=30 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_ylim(0, 105)
    ax.set_ylabel("recall on the test split (%)")
    ax.set_xlabel("true class")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return _save(fig, path)


def plot_counts(classes: list[str], real: list[int] | None, real_source: str,
                synsets: list[tuple[str, list[int]]], title: str, path: str | Path) -> Path:
    """Images per class: the real training split (left) beside each distilled set (right)."""
    k = len(classes)
    fig = Figure(figsize=(max(9.0, 0.9 * k + 4), 4.5))
    axes = fig.subplots(1, 2 if real is not None else 1, squeeze=False)[0]
    x = np.arange(k)
    rot, ha = (30, "right") if k > 4 else (0, "center")
    if real is not None:
        ax = axes[0]
        ax.bar(x, real, color=COLORS[0])
        present = [c for c in real if c > 0]
        ratio = f"{max(real) / min(real):.2f}" if len(present) == k and present else "inf"
        ax.set_title(f"real training split: {sum(real)} images, imbalance {ratio}\n({real_source})", fontsize=9)
        ax.set_ylabel("images")
        ax.set_xticks(x)
        ax.set_xticklabels(classes, rotation=rot, ha=ha)
        ax.grid(axis="y", alpha=0.3)
    ax = axes[-1]
    n = max(1, len(synsets))
    width = 0.8 / n
    for i, (label, counts) in enumerate(synsets):
        ax.bar(x - 0.4 + width * (i + 0.5), counts, width, label=label, color=COLORS[(i + 1) % len(COLORS)])
    ax.set_title("distilled sets", fontsize=9)
    ax.set_ylabel("images")
    ax.set_xticks(x)
    ax.set_xticklabels(classes, rotation=rot, ha=ha)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_grid(grid_png: str | Path, classes: list[str], title: str, path: str | Path, pad: int = 2) -> Path:
    """A synset's ``grid.png`` (one row per class, see ``mtt_fast.synth.save_grid``) under a title.

    Grids written since the rows carry their class names are shown as they are; an older,
    unlabelled grid gets the names written beside its rows by the same function
    (:func:`mtt_fast.synth.synset.label_rows`).
    """
    img = np.asarray(Image.open(grid_png).convert("RGB"))
    if grid_row_labels(grid_png) is None:
        img = label_rows(img, classes, pad=pad)
    h, w = img.shape[:2]
    scale = 1.0 if h > 400 else 2.0
    fig = Figure(figsize=(max(3.0, w / 100 * scale) + 0.4, max(2.0, h / 100 * scale) + 0.6))
    ax = fig.subplots()
    ax.imshow(img, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_visible(False)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
