"""Helpers shared by the micro-benchmark files: instruction-set levels as parameters, bit-exact
comparison, and throughput figures written next to the timings."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import tinyfast

# Every level the runtime has, fastest first (the names of `tinyfast info`).
ALL_LEVELS = ("avx512-vnni", "avx2", "portable")


def available_levels() -> list[str]:
    return list(tinyfast.cpu_capabilities()["kernels"])


def level_params() -> list[Any]:
    """One parameter per level; those this CPU lacks are skipped, saying why."""
    here = available_levels()
    params = []
    for level in ALL_LEVELS:
        reason = (f"this CPU does not run the {level} kernels (it runs {', '.join(here)}; "
                  "see `tinyfast info`)")
        params.append(pytest.param(level, id=level,
                                   marks=pytest.mark.skipif(level not in here, reason=reason)))
    return params


def same_bits(got: np.ndarray, want: np.ndarray) -> bool:
    """Equal bit for bit (so -0.0 differs from 0.0 and NaN equals the same NaN)."""
    return got.shape == want.shape and got.dtype == want.dtype and \
        np.array_equal(got.view(np.uint8), want.view(np.uint8))


def record_rate(benchmark: Any, amount: float, unit: str) -> None:
    """``amount`` of ``unit`` per call, and the rate at the fastest call (``<unit>_per_s``) once
    timings exist (not with --benchmark-disable)."""
    benchmark.extra_info[unit] = amount
    stats = getattr(benchmark, "stats", None)
    if stats is not None and stats.stats.min > 0:
        benchmark.extra_info[f"{unit}_per_s_at_min"] = round(amount / stats.stats.min, 3)
