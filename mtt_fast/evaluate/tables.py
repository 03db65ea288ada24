"""The results table of one or more evaluations (``results.md``), as the paper prints it."""

from __future__ import annotations

import math

METRIC_NAMES = {"accuracy": "Accuracy (%)", "auc": "AUC (%)", "balanced_accuracy": "Balanced acc. (%)"}


def pm(mean: float, std: float) -> str:
    """``mean ± std`` with one decimal (the paper's style); ``-`` for NaN."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{mean:.1f} ± {std:.1f}"


def results_markdown(rows: list[tuple[str, dict]], *, archs: list[str] | None = None) -> str:
    """One row per (label, results.json content), one column per architecture.

    The headline metric (accuracy, or AUC for a binary task) comes first, then balanced
    accuracy, so an imbalanced test set cannot hide behind a high accuracy.

    Args:
        rows: ``(label, results.json content)`` pairs.
        archs: the architecture columns, in order (default: every architecture found). The
            Average column averages these columns only (the paper's Tables 2-3 pass the
            unseen architectures).
    """
    if not rows:
        return ""
    if archs is None:
        archs = []
        for _, r in rows:
            archs += [a for a in r["results"] if a not in archs]
    metric = rows[0][1]["metric"]
    out = []
    for m in (metric, "balanced_accuracy"):
        out.append(f"### {METRIC_NAMES.get(m, m)} on the {rows[0][1]['split']} split "
                   f"({rows[0][1]['dataset']}, mean ± std over repeats)\n")
        avg = len(archs) > 1
        out.append("| Synset | Img/Cls | " + " | ".join(archs) + (" | Average |" if avg else " |"))
        out.append("|---" * (len(archs) + 2 + avg) + "|")
        for label, r in rows:
            cells, means, stds = [], [], []
            for a in archs:
                if a in r["results"]:
                    mu, sd = r["results"][a]["mean"][m], r["results"][a]["std"][m]
                    cells.append(pm(mu, sd))
                    means.append(mu)
                    stds.append(sd)
                else:
                    cells.append("-")
            line = f"| {label} | {r.get('ipc', '-')} | " + " | ".join(cells)
            if avg:
                ok = len(means) == len(archs)
                line += " | " + (pm(sum(means) / len(means), sum(stds) / len(stds)) if ok else "-")
            out.append(line + " |")
        out.append("")
    return "\n".join(out)
