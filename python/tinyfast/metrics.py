"""Task metrics from predictions and gold labels: accuracy and macro F1 for classification;
Pearson, Spearman and MSE for regression. Needs numpy alone, so the runtime's evaluation (no
torch) and the trainers share one definition."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["classification_metrics", "main_metric", "regression_metrics", "task_metrics"]


def classification_metrics(logits: np.ndarray, labels: Sequence[int]) -> dict[str, float]:
    labels_arr = np.asarray(labels)
    pred = logits.argmax(axis=1)
    f1s = []
    for c in range(logits.shape[1]):
        tp = np.sum((pred == c) & (labels_arr == c))
        fp = np.sum((pred == c) & (labels_arr != c))
        fn = np.sum((pred != c) & (labels_arr == c))
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": float(np.mean(pred == labels_arr)), "macro_f1": float(np.mean(f1s))}


def regression_metrics(predictions: np.ndarray, labels: Sequence[float]) -> dict[str, float]:
    pred = np.asarray(predictions, dtype=np.float64).reshape(-1)
    gold = np.asarray(labels, dtype=np.float64)
    return {
        "pearson": _pearson(pred, gold),
        "spearman": _pearson(_ranks(pred), _ranks(gold)),
        "mse": float(np.mean((pred - gold) ** 2)),
    }


def task_metrics(task: str, logits: np.ndarray, labels: Sequence[Any]) -> dict[str, float]:
    if task == "regression":
        return regression_metrics(logits, labels)
    return classification_metrics(logits, labels)


def main_metric(task: str) -> str:
    """The metric that picks the best checkpoint."""
    return "pearson" if task == "regression" else "accuracy"


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    # Average ranks for ties, as Spearman's coefficient defines them.
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    for value in np.unique(x):
        tied = x == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks
