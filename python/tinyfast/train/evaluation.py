"""Predictions and task metrics (accuracy, macro F1; Pearson, Spearman, MSE for regression)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from tinyfast.data.batching import collate


@torch.no_grad()
def predict_logits(
    forward: Callable[[dict[str, torch.Tensor]], torch.Tensor] | nn.Module,
    dataset: Sequence[dict[str, Any]],
    lengths: Sequence[int],
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    pad_id: int = 0,
    progress: str | None = None,
) -> np.ndarray:
    """Logits of every row, in dataset order. Rows are batched by length (less padding) and put
    back in place afterwards. ``forward`` maps a batch to logits ``[B, C]``. ``progress`` names a
    progress bar over the rows (on stderr); None shows none."""
    from tqdm import tqdm

    order = np.argsort(np.asarray(lengths), kind="stable")
    out: np.ndarray | None = None
    bar = tqdm(total=len(order), desc=progress, unit="row", disable=progress is None,
               dynamic_ncols=True)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = collate([dataset[int(i)] for i in rows], pad_id)
        batch.pop("labels", None)
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = forward(batch).float().cpu().numpy()
        if out is None:
            out = np.empty((len(order), logits.shape[1]), dtype=np.float32)
        out[rows] = logits
        bar.update(len(rows))
    bar.close()
    if out is None:
        raise ValueError("cannot predict on an empty dataset")
    return out


def classifier_logits(model: nn.Module) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """A ``forward`` for predict_logits from a Hugging Face sequence classifier."""
    return lambda batch: model(**batch).logits


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


def dev_evaluator(task: str, dev: Any, device: torch.device, pad_id: int, attr: str
                  ) -> Callable[[nn.Module], dict[str, float]]:
    """An ``evaluate`` for train.run: the metrics on ``dev`` (a tokenized split) of the classifier
    held in attribute ``attr`` of the trained module (a Step)."""

    def evaluate(module: nn.Module) -> dict[str, float]:
        model = getattr(module, attr)
        logits = predict_logits(classifier_logits(model), dev.dataset, dev.lengths,
                                device=device, pad_id=pad_id)
        return task_metrics(task, logits, dev.labels)

    return evaluate
