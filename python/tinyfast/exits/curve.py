"""Accuracy, exit layers, FLOPs and time of early-exit inference over a range of speeds, for any
predictor: the int8 runtime (``runtime_predictor``) or the PyTorch early-exit model
(``tinyfast.models.early_exit.EarlyExitClassifier.predictor``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from tinyfast.exits.flops import ModelShape, relative_flops
from tinyfast.exits.speeds import check_speed
from tinyfast.metrics import task_metrics

__all__ = ["METRIC_COLUMNS", "Predict", "format_table", "runtime_predictor", "speed_curve"]

#: ``predict(speed) -> (logits float32 [N, C], exit_layers int [N])`` over the whole data set,
#: rows in input order.
Predict = Callable[[float], tuple[np.ndarray, np.ndarray]]


def speed_curve(predict: Predict, labels: Sequence[Any], lengths: Sequence[int],
                speeds: Iterable[float], shape: ModelShape,
                task: str = "classification") -> list[dict[str, Any]]:
    """One point per speed, in the order given: ``speed``, ``rows``, the task's metrics
    (``accuracy`` and ``macro_f1``; ``pearson``, ``spearman`` and ``mse`` for regression),
    ``mean_exit_layer``, ``exit_share`` (layer -> share of rows, every layer that can answer,
    summing to 1), ``relative_flops`` (see ``tinyfast.exits.flops``), ``seconds`` (wall time of
    the ``predict`` call) and ``rows_per_second``."""
    rows = len(lengths)
    if len(labels) != rows:
        raise ValueError(f"{len(labels)} labels but {rows} lengths")
    points = []
    for speed in speeds:
        speed = check_speed(speed)
        start = time.perf_counter()
        logits, exit_layers = predict(speed)
        seconds = time.perf_counter() - start
        logits, exit_layers = np.asarray(logits), np.asarray(exit_layers)
        if logits.ndim != 2 or len(logits) != rows or exit_layers.shape != (rows,):
            raise ValueError(f"predict({speed}) gave logits {list(logits.shape)} and exit layers "
                             f"{list(exit_layers.shape)} for {rows} rows")
        counts = {layer: int(np.sum(exit_layers == layer)) for layer in shape.answer_layers}
        if sum(counts.values()) != rows:
            unknown = sorted(set(exit_layers.tolist()) - set(shape.answer_layers))
            raise ValueError(f"predict({speed}) answered after layers {unknown}; the model "
                             f"answers after {shape.answer_layers} only")
        points.append({
            "speed": speed,
            "rows": rows,
            **task_metrics(task, logits, labels),
            "mean_exit_layer": float(exit_layers.mean()),
            "exit_share": {layer: n / rows for layer, n in counts.items()},
            "relative_flops": relative_flops(shape, lengths, exit_layers, speed),
            "seconds": seconds,
            "rows_per_second": rows / seconds if seconds > 0 else float("inf"),
        })
    return points


#: (key, column title) of the metrics a curve point may hold, in table order.
METRIC_COLUMNS = (("accuracy", "accuracy"), ("macro_f1", "macro F1"), ("pearson", "pearson"),
                  ("spearman", "spearman"), ("mse", "MSE"))


def format_table(points: Sequence[dict[str, Any]], num_layers: int) -> str:
    """The points as a fixed-width table for a terminal: speed, the task's metrics, mean exit
    layer (of ``num_layers``), the share of rows answered after each layer, relative FLOPs and
    rows per second."""
    if not points:
        return ""
    metrics = [(key, title) for key, title in METRIC_COLUMNS if key in points[0]]
    layers = sorted({int(layer) for p in points for layer in p["exit_share"]})
    header = ["speed", *(title for _, title in metrics), f"exit (of {num_layers})",
              *(f"L{layer}" for layer in layers), "FLOPs", "rows/s"]
    body = []
    for p in points:
        shares = {int(layer): share for layer, share in p["exit_share"].items()}
        body.append([
            f"{p['speed']:g}",
            *(f"{p[key]:.4f}" for key, _ in metrics),
            f"{p['mean_exit_layer']:.2f}",
            *(f"{100 * shares.get(layer, 0.0):.1f}%" for layer in layers),
            f"{p['relative_flops']:.3f}",
            f"{p['rows_per_second']:.1f}",
        ])
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True))
             for row in [header, *body]]
    return "\n".join(lines)


def runtime_predictor(runtime: Any, inputs: Iterable[Any], batch_size: int = 32) -> Predict:
    """``predict(speed)`` over a ``tinyfast.Runtime`` and a list of texts or (text, text) pairs;
    each call tokenizes and classifies every input, so its time is what a user waits for."""
    items = list(inputs)

    def predict(speed: float) -> tuple[np.ndarray, np.ndarray]:
        out = runtime.predict(items, speed=speed, batch_size=batch_size)
        return out.logits, out.exit_layers

    return predict
