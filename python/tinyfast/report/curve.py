"""The int8 speed curve of the evaluate stage (``OUT/evaluate/curve.json``): per speed, the
task's metrics, where rows leave the model, the FLOPs that costs and the rows per second of one
pass over the dev set."""

from __future__ import annotations

from typing import Any

from tinyfast.exits import METRIC_COLUMNS, chosen_point
from tinyfast.report.formatting import (
    accuracy,
    code,
    count,
    flops,
    is_number,
    number,
    rate,
    share,
    speed,
    table,
)
from tinyfast.report.inputs import CURVE, Outputs

__all__ = ["exit_shares", "curve_section"]

# Metrics in [0, 1] written as percentages; the others (pearson, spearman, MSE) as they are.
_PERCENT_METRICS = {"accuracy", "macro_f1"}


def exit_shares(point: dict[str, Any]) -> dict[int, float]:
    """Layer -> share of rows that left after it (JSON keeps the layers as strings)."""
    recorded = point.get("exit_share")
    shares = {}
    for layer, value in (recorded if isinstance(recorded, dict) else {}).items():
        try:
            at = int(layer)
        except ValueError:
            continue  # not a layer number: nothing to place it under
        if is_number(value):
            shares[at] = value
    return shares


def _metric(key: str, value: Any) -> str:
    return accuracy(value) if key in _PERCENT_METRICS else number(value, ".4f")


def curve_section(outputs: Outputs) -> str:
    title = "## Int8 speed curve"
    curve = outputs.curve
    if curve is None:
        return f"{title}\n\n_No data ({outputs.why_missing('evaluate', CURVE)})._"
    points = outputs.points()
    if not points:
        return f"{title}\n\n_No data: {CURVE} holds no points._"
    chosen = chosen_point(points)
    metrics = [(key, name) for key, name in METRIC_COLUMNS if any(key in p for p in points)]
    layers = sorted({layer for p in points for layer in exit_shares(p)})
    num_layers = curve.get("num_layers")
    of_layers = f" (of {num_layers})" if is_number(num_layers) else ""
    header = ["speed", *(name for _, name in metrics), f"mean exit layer{of_layers}",
              *(f"exit after L{layer}" for layer in layers), "relative FLOPs", "rows/s"]
    rows = []
    for p in points:
        shares = exit_shares(p)
        mark = " (chosen)" if p is chosen else ""
        rows.append([f"{speed(p['speed'])}{mark}", *(_metric(k, p.get(k)) for k, _ in metrics),
                     number(p.get("mean_exit_layer"), ".2f"),
                     *(share(shares.get(layer, 0.0), 1) for layer in layers),
                     flops(p.get("relative_flops")), rate(p.get("rows_per_second"))])
    body = table(header, rows, [i > 0 for i in range(len(header))])
    about = [f"Bundle {code(curve.get('bundle'))} on {code(curve.get('data'))}"]
    for key, noun in (("rows", "row"), ("threads", "thread")):
        if is_number(curve.get(key)):
            about.append(count(curve[key], noun))
    note = (", ".join(about) + ". Rows/s: one pass over the dev set, tokenization included "
            "(the contenders below are the careful measurement).")
    return f"{title}\n\n{note}\n\n{body}"
