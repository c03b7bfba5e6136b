"""Predictions of a classifier over a tokenized split, and the dev evaluation of the trainers.
The metrics themselves are ``tinyfast.metrics`` (numpy only)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from tinyfast.data.batching import predict_batched
from tinyfast.metrics import task_metrics


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
    (logits,) = predict_batched(forward, dataset, lengths, batch_size=batch_size, device=device,
                                pad_id=pad_id, progress=progress)
    return logits


def classifier_logits(model: nn.Module) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """A ``forward`` for predict_logits from a Hugging Face sequence classifier."""
    return lambda batch: model(**batch).logits


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
