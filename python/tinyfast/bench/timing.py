"""Timing: contenders take turns round by round, the first of each round rotating, so machine
noise hits all of them alike; the garbage collector stays off while one runs; latency statistics
from the seconds of the calls."""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import numpy as np

from tinyfast.bench.contender import Contender, Prediction
from tinyfast.bench.workload import Workload

__all__ = [
    "collector_paused",
    "latency_ms",
    "latency_stats",
    "predict_pool",
    "rotated",
    "time_round_robin",
]

T = TypeVar("T")


def rotated(items: Sequence[T], round_index: int) -> list[T]:
    """The turn order of round ``round_index``: it starts with item ``round_index mod n``."""
    if not items:
        return []
    k = round_index % len(items)
    return [*items[k:], *items[:k]]


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Collect now, then keep the cyclic garbage collector off for the block."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def predict_pool(contender: Contender, workload: Workload) -> Prediction:
    """The contender's answers on the whole pool, in calls of the workload's batch size."""
    calls = len(workload.texts) // workload.batch
    parts = [contender.predict(workload.call_texts(k), workload.seq_len) for k in range(calls)]
    exits = [p.exit_layers for p in parts]
    return Prediction(
        np.concatenate([p.labels for p in parts]),
        np.concatenate([p.probabilities for p in parts]),
        None if any(e is None for e in exits) else np.concatenate(exits),
    )


def time_round_robin(
    contenders: Sequence[Contender], workload: Workload, warmup: int, repeats: int, calls: int
) -> dict[str, list[float]]:
    """Seconds per call for each contender; round r starts with contender r mod n."""
    if not contenders:
        return {}
    for c in contenders:
        for k in range(warmup):
            c.predict(workload.call_texts(k), workload.seq_len)
    samples: dict[str, list[float]] = {c.name: [] for c in contenders}
    served = dict.fromkeys(samples, 0)  # each contender sees the same sequence of batches
    # Freezing the objects alive now (models, torch, transformers: millions) keeps the
    # collections between blocks cheap.
    gc.collect()
    gc.freeze()
    try:
        for r in range(repeats):
            for c in rotated(contenders, r):
                with collector_paused():
                    for _ in range(calls):
                        texts = workload.call_texts(served[c.name])
                        served[c.name] += 1
                        start = time.perf_counter()
                        c.predict(texts, workload.seq_len)
                        samples[c.name].append(time.perf_counter() - start)
    finally:
        gc.unfreeze()
    return samples


def latency_ms(seconds: Sequence[float], percentiles: Sequence[int] = (50, 90, 99)
               ) -> dict[str, Any]:
    """``p<q>`` for each percentile, mean, min, max and std of the calls, in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    out: dict[str, Any] = {f"p{q}": float(v) for q, v in zip(
        percentiles, np.percentile(ms, list(percentiles)), strict=True)}
    out.update(mean=float(ms.mean()), min=float(ms.min()), max=float(ms.max()),
               std=float(ms.std()))
    return out


def latency_stats(seconds: Sequence[float], rows_per_call: int, gop_per_call: float) -> dict:
    """Per-call latency (p50/p90/p99), rows per second over the calls and effective GOP/s."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    lat = latency_ms(seconds)
    return {
        "calls": int(ms.size),
        "latency_ms": lat,
        "throughput_rows_per_s": rows_per_call * ms.size / (ms.sum() / 1e3),
        "effective_gops": gop_per_call / (lat["mean"] / 1e3),
    }
