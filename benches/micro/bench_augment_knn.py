"""The augmentation's neighbour search (``WordVectors.nearest`` over tinyfast-augment's index):
the 15 nearest of 50,000 random unit vectors of 100 dimensions, by cosine, for 1,000 queries, per
search kernel at 1 and 2 threads. One call includes what the binding does per call (scaling the
queries, starting its thread pool), as the augmenter pays it.

Checked on the first queries against numpy (float64): the returned scores are the true top-15
similarities and belong to the returned rows.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from _micro import record_rate
from tinyfast._native import WordVectors

WORDS, DIM, QUERIES, K = 50_000, 100, 1_000, 15
KERNELS = ("avx512", "avx2", "portable")
THREADS = (1, 2)
CHECKED_QUERIES = 20


def unit_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@functools.cache
def index() -> tuple[WordVectors, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    vectors = unit_rows(rng, WORDS)
    words = [f"w{i}" for i in range(WORDS)]
    return WordVectors.from_arrays(words, vectors), vectors, unit_rows(rng, QUERIES)


@pytest.mark.benchmark(group="augment_nearest")
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("kernel", KERNELS)
def test_nearest(benchmark, kernel: str, threads: int) -> None:
    vectors, values, queries = index()
    try:
        vectors.nearest(queries[:1], 1, kernel=kernel)
    except ValueError as e:  # the kernel needs instructions this CPU lacks
        pytest.skip(str(e))
    benchmark.extra_info.update(kernel=kernel, threads=threads, words=WORDS, dim=DIM,
                                queries=QUERIES, k=K)
    rows, scores = benchmark(vectors.nearest, queries, K, threads=threads, kernel=kernel)
    assert rows.shape == scores.shape == (QUERIES, K)
    sims = queries[:CHECKED_QUERIES].astype(np.float64) @ values.T.astype(np.float64)
    top = -np.sort(-sims, axis=1)[:, :K]
    np.testing.assert_allclose(scores[:CHECKED_QUERIES], top, atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(sims, rows[:CHECKED_QUERIES], axis=1),
                               scores[:CHECKED_QUERIES], atol=1e-5)
    record_rate(benchmark, QUERIES / 1e3, "kqueries")
