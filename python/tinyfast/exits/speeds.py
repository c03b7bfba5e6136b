"""The speed of FastBERT's early exit, checked once for every engine.

The rule, the same as the Rust runtime's and ``tinyfast.bundle.ReferenceModel``'s: a row leaves
after the first branch whose normalized entropy (entropy of the softmax / ln C) is ``< speed``,
otherwise the model's own head answers. ``speed`` lies in [0, 1]; 0 never exits (the branches do
not even run), 1 exits at the first branch unless its distribution is exactly uniform.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from tinyfast.errors import ConfigError

__all__ = ["check_speed", "parse_speeds"]


def check_speed(speed: Any) -> float:
    """``speed`` as a float in [0, 1]; a one-line ``ConfigError`` naming the value otherwise
    (NaN, infinities, booleans, strings and anything else that is not a real number)."""
    if isinstance(speed, bool) or not isinstance(speed, numbers.Real):
        raise ConfigError(f"speed must be a number in [0, 1], got {speed!r}")
    value = float(speed) + 0.0  # -0.0 becomes 0.0
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ConfigError(f"speed must be a finite number in [0, 1], got {value!r}")
    return value


def parse_speeds(text: str) -> list[float]:
    """``"0,0.1,0.2"`` -> ``[0.0, 0.1, 0.2]``: sorted, duplicates dropped, each one checked.
    An empty item or one that is not a number is a one-line ``ConfigError`` naming it."""
    if not isinstance(text, str):
        raise ConfigError(f"speeds must be a comma-separated string, got {text!r}")
    speeds: set[float] = set()
    for i, item in enumerate(text.split(","), 1):
        stripped = item.strip()
        if not stripped:
            raise ConfigError(f"speed {i} of {text!r} is empty (give numbers in [0, 1] separated "
                              "by commas, e.g. 0,0.1,0.2)")
        try:
            value = float(stripped)
        except ValueError:
            raise ConfigError(f"speed {stripped!r} (item {i} of {text!r}) is not a number"
                              ) from None
        try:
            speeds.add(check_speed(value))
        except ConfigError:
            raise ConfigError(f"speed {stripped!r} (item {i} of {text!r}) must be a finite "
                              "number in [0, 1]") from None
    return sorted(speeds)
