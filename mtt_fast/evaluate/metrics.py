"""Classification metrics on a real split: accuracy, balanced accuracy, per-class recall, AUC."""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, recall_score, roc_auc_score
from torch import nn


@torch.no_grad()
def predict_proba(model: nn.Module, split, device: torch.device | str = "cpu", batch_size: int = 500) -> torch.Tensor:
    """Softmax probabilities of ``model`` on every image of ``split`` (``[n, K]``, float64 CPU)."""
    model.eval()
    out = []
    n = len(split)
    for i in range(0, n, batch_size):
        x = split.get(torch.arange(i, min(n, i + batch_size)), device=device)
        out.append(torch.softmax(model(x).double(), dim=1).cpu())
    model.train()
    return torch.cat(out) if out else torch.empty(0, 0, dtype=torch.float64)


def compute_metrics(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """Metrics of predicted probabilities against true labels.

    Args:
        probs: ``[n, K]`` class probabilities.
        labels: ``[n]`` true classes.
        num_classes: K.

    Returns:
        ``accuracy``, ``balanced_accuracy``, ``per_class_recall`` (list of K) and ``auc``
        (binary: ROC-AUC of class 1; K > 2: macro one-vs-rest), all in percent; AUC is NaN
        when a class is missing from ``labels``.
    """
    p = probs.numpy()
    y = labels.cpu().numpy()
    pred = p.argmax(1)
    classes = list(range(num_classes))
    recall = recall_score(y, pred, labels=classes, average=None, zero_division=0)
    auc = math.nan
    present = np.unique(y)
    if len(present) == num_classes and num_classes >= 2:
        if num_classes == 2:
            auc = roc_auc_score(y, p[:, 1])
        else:
            pn = p / np.clip(p.sum(1, keepdims=True), 1e-300, None)
            auc = roc_auc_score(y, pn, multi_class="ovr", average="macro", labels=classes)
    return {
        "accuracy": 100.0 * float((pred == y).mean()),
        "balanced_accuracy": 100.0 * float(balanced_accuracy_score(y, pred)),
        "per_class_recall": [100.0 * float(r) for r in recall],
        "auc": 100.0 * float(auc) if not math.isnan(auc) else math.nan,
    }


def headline_metric(num_classes: int) -> str:
    """The paper's metric for a task: AUC for binary (CRC), accuracy otherwise (PG)."""
    return "auc" if num_classes == 2 else "accuracy"
