"""How the report writes numbers, times, paths and tables: one rule each, so the same figure reads
the same in every section. A value that is missing or not a finite number is written "-"."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = [
    "MISSING",
    "accuracy",
    "code",
    "count",
    "duration",
    "flops",
    "is_number",
    "megabytes",
    "number",
    "points",
    "rate",
    "share",
    "speed",
    "stage_status",
    "table",
    "times",
]

MISSING = "-"


def is_number(value: Any) -> bool:
    """A finite int or float (JSON numbers; booleans, NaN and infinities are not figures)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and \
        math.isfinite(value)


def number(value: Any, spec: str) -> str:
    return format(value, spec) if is_number(value) else MISSING


def accuracy(fraction: Any) -> str:
    """An accuracy or F1 in [0, 1] as a percentage: ``91.28%``."""
    return f"{100 * fraction:.2f}%" if is_number(fraction) else MISSING


def share(part: Any, whole: Any) -> str:
    """``part`` as a percentage of ``whole``, one decimal: ``98.0%``."""
    if not is_number(part) or not is_number(whole) or whole == 0:
        return MISSING
    return f"{100 * part / whole:.1f}%"


def points(fraction_difference: Any) -> str:
    """A difference of two accuracies in percentage points, signed: ``-0.34 points``."""
    if not is_number(fraction_difference):
        return MISSING
    return f"{100 * fraction_difference:+.2f} points"


def count(n: Any, noun: str) -> str:
    """``1 thread``, ``2 threads``, ``1,000 rows``."""
    if not is_number(n):
        return f"{MISSING} {noun}s"
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def speed(value: Any) -> str:
    return f"{value:g}" if is_number(value) else MISSING


def flops(relative: Any) -> str:
    """FLOPs relative to the full model (1 = every layer for every row)."""
    return number(relative, ".3f")


def rate(rows_per_second: Any) -> str:
    return number(rows_per_second, ",.1f")


def times(ratio: Any) -> str:
    """A speed-up (or slow-down) factor: ``3.21x``."""
    return f"{ratio:.2f}x" if is_number(ratio) else MISSING


def megabytes(size_bytes: Any) -> str:
    """Bytes in MB (10^6, as ``tinyfast bench`` writes sizes)."""
    return f"{size_bytes / 1e6:.1f} MB" if is_number(size_bytes) else MISSING


def duration(seconds: Any) -> str:
    """Wall time as ``m:ss`` under an hour, ``h:mm:ss`` from one hour on."""
    if not is_number(seconds) or seconds < 0:
        return MISSING
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def stage_status(info: dict[str, Any]) -> str:
    """A stage's line of ``summary.json``'s ``stages`` in words: ``ran``, ``ran (resumed)``,
    ``skipped (unchanged)``, ``off in the recipe``, ``off (no corpus given)``. A resumed stage's
    wall time counts only the invocation that finished it."""
    status = info.get("status")
    if status == "ran":
        return "ran (resumed)" if info.get("resumed") else "ran"
    if status == "skipped":
        return "skipped (unchanged; resumed when it ran)" if info.get("resumed") \
            else "skipped (unchanged)"
    if status == "off":
        reason = str(info.get("reason") or "").strip()
        if not reason:
            return "off"
        return reason if reason.startswith("off") else f"off ({reason})"
    return str(status)


def code(text: Any) -> str:
    """``text`` as inline code; a backtick inside gets a longer fence."""
    text = str(text)
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _cell(text: Any) -> str:
    # A pipe would end the cell and a newline the row.
    return str(text).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence[Any]],
          right: Sequence[bool] | None = None) -> str:
    """A GitHub markdown table; ``right[i]`` right-aligns column ``i`` (numbers)."""
    right = right or [False] * len(header)
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "| " + " | ".join("---:" if r else "---" for r in right) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
