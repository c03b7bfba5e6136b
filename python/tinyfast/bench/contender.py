"""What a contender is: a named ``predict`` over raw texts, its answers and its settings.

numpy only: the engines behind a contender (torch, ONNX Runtime, OpenVINO, the tinyfast runtime)
are imported by the modules that build them (``contenders_*``), inside their functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Contender", "Inputs", "Prediction", "Skipped", "from_logits", "softmax"]

#: What a contender classifies in one call: texts, or (text, text) pairs, all of one kind.
Inputs = list[Any]


class Skipped(Exception):
    """A contender that cannot run here (a package is missing, an input it needs was not given).
    Its message is the reason recorded in place of numbers."""


@dataclass
class Prediction:
    labels: np.ndarray  # [rows] int
    probabilities: np.ndarray  # [rows, num_labels] float
    exit_layers: np.ndarray | None = None  # [rows] int, tinyfast only


@dataclass
class Contender:
    name: str
    # One timed call: raw inputs and the longest sequence (tokens) to keep in, answers out.
    predict: Callable[[Inputs, int], Prediction]
    settings: dict[str, Any] = field(default_factory=dict)
    bundle: Path | None = None  # a tinyfast contender's bundle directory


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def from_logits(logits: np.ndarray) -> Prediction:
    probs = softmax(np.asarray(logits).astype(np.float32, copy=False))
    return Prediction(labels=probs.argmax(axis=-1), probabilities=probs)
