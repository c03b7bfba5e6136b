"""Which early-exit speed to run: the largest one that loses at most a set share of accuracy
against speed 0 (every row through the whole model)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["ACCURACY_TOLERANCE_POINTS", "chosen_point"]

#: Accuracy, in percentage points below speed 0, the chosen speed may lose.
ACCURACY_TOLERANCE_POINTS = 0.5
# Accuracies are ratios of row counts: a loss of exactly 0.5 points can come out a hair above it.
_ROUNDING = 1e-9


def chosen_point(points: Sequence[dict[str, Any]],
                 tolerance_points: float = ACCURACY_TOLERANCE_POINTS) -> dict[str, Any] | None:
    """The point (of ``speed_curve``) of the largest speed whose ``accuracy`` is within
    ``tolerance_points`` percentage points of speed 0's; None when no point has speed 0 and an
    accuracy (a regression task's curve has none)."""
    base = next((p for p in points if p.get("speed") == 0.0 and "accuracy" in p), None)
    if base is None:
        return None
    within = [p for p in points if p is base or "accuracy" in p
              and 100 * (base["accuracy"] - p["accuracy"]) <= tolerance_points + _ROUNDING]
    return max(within, key=lambda p: p["speed"])
