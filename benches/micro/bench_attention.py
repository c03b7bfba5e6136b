"""One layer's multi-head self-attention (the runtime's kernel, as the encoder calls it on the
fused qkv output) per instruction-set level, MiniLM-L6's width (384, 12 heads of 64), one
sentence of 16, 64 or 128 tokens, one thread, into a preallocated output.

Scores, softmax and the weighted values only: the qkv projection before it and the output
projection after it are GEMMs (bench_gemm.py). Every level must give the portable level's bits
(the runtime defines them so), and the portable level the definition's values (numpy, f64).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from _micro import level_params, record_rate, same_bits
from tinyfast._native import kernels

WIDTH, HEADS = 384, 12
SEQ_LENS = (16, 64, 128)
THREADS = 1


def reference(qkv: np.ndarray) -> np.ndarray:
    """softmax(q k^T / sqrt(d)) v per head, in float64."""
    t, d = qkv.shape[0], WIDTH // HEADS
    q, k, v = (qkv[:, i * WIDTH:(i + 1) * WIDTH].astype(np.float64).reshape(t, HEADS, d)
               .transpose(1, 0, 2) for i in range(3))
    s = q @ k.transpose(0, 2, 1) / np.sqrt(d)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return (p @ v).transpose(1, 0, 2).reshape(t, WIDTH)


@functools.cache
def case(seq: int) -> tuple[kernels.SelfAttention, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seq)
    qkv = rng.normal(0.0, 1.0, (seq, 3 * WIDTH)).astype(np.float32)
    attention = kernels.SelfAttention([seq], WIDTH, HEADS, threads=THREADS)
    want = np.empty((seq, WIDTH), np.float32)
    attention.run(qkv, want, "portable")
    np.testing.assert_allclose(want, reference(qkv), rtol=1e-4, atol=1e-5)
    return attention, qkv, want


@pytest.mark.benchmark(group="attention")
@pytest.mark.parametrize("seq", SEQ_LENS)
@pytest.mark.parametrize("kernel", level_params())
def test_self_attention(benchmark, kernel: str, seq: int) -> None:
    attention, qkv, want = case(seq)
    out = np.full((seq, WIDTH), np.nan, np.float32)
    benchmark.extra_info.update(kernel=kernel, batch=1, seq=seq, width=WIDTH, heads=HEADS,
                                threads=THREADS)
    benchmark(attention.run, qkv, out, kernel)
    assert same_bits(out, want), f"{kernel} differs from the portable level"
    # q k^T and p v: 2 * seq * seq * width multiply-adds.
    record_rate(benchmark, 4 * seq * seq * WIDTH / 1e9, "gop")
