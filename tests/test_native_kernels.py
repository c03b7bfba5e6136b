"""``tinyfast._native.kernels``, the single-kernel bindings of the micro-benchmarks: every level
this CPU runs gives the portable level's bits, and bad arguments are ValueErrors (never a panic)."""

from __future__ import annotations

import numpy as np
import pytest
from tinyfast._native import kernels

import tinyfast

LEVELS = tinyfast.cpu_capabilities()["kernels"]


def quantize(x: np.ndarray, level: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows, k = x.shape
    q, s, z = np.empty((rows, k), np.uint8), np.empty(rows, np.float32), np.empty(rows, np.uint8)
    kernels.quantize_rows(x, q, s, z, level)
    return q, s, z


def quantized(rows: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return quantize(np.random.default_rng(seed).normal(size=(rows, k)).astype(np.float32),
                    "portable")


def weights(n: int, k: int) -> kernels.PackedInt8Weights:
    codes = np.random.default_rng(1).integers(-127, 128, (n, k), dtype=np.int8)
    return kernels.PackedInt8Weights(codes, np.full(n, 0.01, np.float32))


def test_import_paths_and_levels_agree() -> None:
    import tinyfast._native.kernels as by_import

    assert by_import is kernels
    x = np.random.default_rng(2).normal(size=(5, 37)).astype(np.float32)
    q, s, z = quantize(x, "portable")
    w = weights(19, 37)
    assert (w.n, w.k) == (19, 37)
    bias = np.linspace(-1, 1, 19, dtype=np.float32)
    want = np.empty((5, 19), np.float32)
    w.gemm_dequant(q, s, z, bias, want, "portable")
    attention = kernels.SelfAttention([3, 1, 6], 24, 2)
    assert (attention.tokens, attention.width, attention.heads, attention.threads) == (10, 24, 2, 1)
    qkv = np.random.default_rng(3).normal(size=(10, 72)).astype(np.float32)
    want_ctx = np.empty((10, 24), np.float32)
    attention.run(qkv, want_ctx, "portable")
    for level in LEVELS:
        got_q, got_s, got_z = quantize(x, level)
        assert np.array_equal(got_q, q) and np.array_equal(got_s, s) and np.array_equal(got_z, z)
        got = np.empty_like(want)
        w.gemm_dequant(q, s, z, bias, got, level)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), level
        ctx = np.empty_like(want_ctx)
        attention.run(qkv, ctx, level)
        assert np.array_equal(ctx.view(np.uint32), want_ctx.view(np.uint32)), level


def test_bad_arguments_are_value_errors() -> None:
    q, s, z = quantized(4, 8)
    w = weights(3, 8)
    out = np.empty((4, 3), np.float32)
    attention = kernels.SelfAttention([2, 2], 8, 2)
    qkv, ctx = np.zeros((4, 24), np.float32), np.empty((4, 8), np.float32)
    nan = np.full((2, 3), np.nan, np.float32)
    calls = {
        "unknown kernel": lambda: w.gemm_dequant(q, s, z, None, out, "sse9"),
        "has shape": lambda: w.gemm_dequant(q[:, :7], s, z, None, out, "portable"),
        "a_scales": lambda: w.gemm_dequant(q, s[:3], z, None, out, "portable"),
        "bias": lambda: w.gemm_dequant(q, s, z, np.zeros(2, np.float32), out, "portable"),
        "out has shape": lambda: w.gemm_dequant(q, s, z, None, out[:, :2], "portable"),
        "C-contiguous": lambda: w.gemm_dequant(q, s, z, None, np.empty((3, 4), np.float32).T,
                                               "portable"),
        "-127..=127": lambda: kernels.PackedInt8Weights(np.full((1, 2), -128, np.int8),
                                                        np.ones(1, np.float32)),
        "finite and > 0": lambda: kernels.PackedInt8Weights(np.zeros((1, 2), np.int8),
                                                            np.zeros(1, np.float32)),
        "not a finite": lambda: kernels.quantize_rows(nan, np.empty((2, 3), np.uint8),
                                                      np.empty(2, np.float32),
                                                      np.empty(2, np.uint8), "portable"),
        "multiple of heads": lambda: kernels.SelfAttention([2], 10, 3),
        "threads": lambda: kernels.SelfAttention([2], 12, 3, threads=100_000),
        "tokens in all": lambda: kernels.SelfAttention([1 << 40], 12, 3),
        "qkv has shape": lambda: attention.run(qkv[:3], ctx, "portable"),
        "out has shape ": lambda: attention.run(qkv, ctx[:, :4], "portable"),
    }
    for what, call in calls.items():
        with pytest.raises(ValueError, match=what.strip().replace(".", r"\.")):
            call()
    missing = [level for level in ("avx512-vnni", "avx2") if level not in LEVELS]
    for level in missing:
        with pytest.raises(ValueError, match="not available on this CPU"):
            attention.run(qkv, ctx, level)
