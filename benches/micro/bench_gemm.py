"""The int8 GEMM with its fused dequantization (``gemm_dequant``, what every int8 linear of the
encoder runs after quantizing its input), per kernel, at the linears of a MiniLM-L6 layer.

One call: ``out[t, o] = a_scale[t] * w_scale[o] * (sum_k a[t, k] * w[o, k] - a_zp[t] * colsum[o])
+ bias[o]`` for u8 activations ``a`` [rows, k] and prepacked int8 weights [n, k], one thread, into
a preallocated output. Every kernel must give the portable kernel's bits, and the portable kernel
the formula's (checked in numpy on the first rows).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from _micro import level_params, record_rate, same_bits
from tinyfast._native import kernels

# MiniLM-L6's linears: (k, n) = (input features, outputs).
LINEARS = {
    "qkv": (384, 1152),
    "attn_out": (384, 384),
    "ffn_in": (384, 1536),
    "ffn_out": (1536, 384),
}
# Token rows per call: the [CLS] row alone, one sentence of 64 tokens, 32 sentences of 64.
ROWS = {"rows1": 1, "b1xs64": 64, "b32xs64": 32 * 64}
# Rows of the numpy check of the portable kernel (int64 matmul in numpy is slow).
CHECKED_ROWS = 8


class GemmCase:
    """Inputs of one shape (quantized by the runtime's own quantizer) and the portable result."""

    def __init__(self, rows: int, k: int, n: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        w = rng.normal(0.0, 0.05, (n, k)).astype(np.float32)
        self.w_scales = (np.abs(w).max(axis=1) / 127).astype(np.float32)
        self.codes = np.clip(np.round(w / self.w_scales[:, None]), -127, 127).astype(np.int8)
        self.weights = kernels.PackedInt8Weights(self.codes, self.w_scales)
        self.bias = rng.uniform(-0.5, 0.5, n).astype(np.float32)
        x = (rng.normal(0.0, 2.0, (rows, k)) + 0.3).astype(np.float32)
        self.a = np.empty((rows, k), np.uint8)
        self.a_scales = np.empty(rows, np.float32)
        self.a_zps = np.empty(rows, np.uint8)
        kernels.quantize_rows(x, self.a, self.a_scales, self.a_zps, "portable")
        self.reference = self.run("portable")
        self._check_reference()

    def run(self, level: str) -> np.ndarray:
        out = np.empty((self.a.shape[0], self.weights.n), np.float32)
        self.weights.gemm_dequant(self.a, self.a_scales, self.a_zps, self.bias, out, level)
        return out

    def _check_reference(self) -> None:
        """The portable kernel against the documented formula, in the documented order (f32
        products and sums, no fused multiply-add), on the first rows."""
        r = min(CHECKED_ROWS, self.a.shape[0])
        acc = self.a[:r].astype(np.int64) @ self.codes.astype(np.int64).T
        colsum = self.codes.astype(np.int64).sum(axis=1)
        d = (acc - self.a_zps[:r, None].astype(np.int64) * colsum[None, :]).astype(np.int32)
        scale = self.a_scales[:r, None] * self.w_scales[None, :]
        want = scale * d.astype(np.float32) + self.bias[None, :]
        assert same_bits(self.reference[:r], want), "the portable GEMM is not the formula"


@functools.cache
def gemm_case(rows: int, k: int, n: int) -> GemmCase:
    return GemmCase(rows, k, n, seed=rows * 7919 + k * 31 + n)


@pytest.mark.benchmark(group="gemm_dequant")
@pytest.mark.parametrize("rows_name", list(ROWS))
@pytest.mark.parametrize("linear", list(LINEARS))
@pytest.mark.parametrize("kernel", level_params())
def test_gemm_dequant(benchmark, kernel: str, linear: str, rows_name: str) -> None:
    (k, n), rows = LINEARS[linear], ROWS[rows_name]
    case = gemm_case(rows, k, n)
    out = np.full((rows, n), np.nan, np.float32)
    args = (case.a, case.a_scales, case.a_zps, case.bias, out, kernel)
    benchmark.extra_info.update(kernel=kernel, linear=linear, rows=rows, k=k, n=n, threads=1)
    benchmark(case.weights.gemm_dequant, *args)
    assert same_bits(out, case.reference), f"{kernel} differs from the portable kernel"
    record_rate(benchmark, 2 * rows * k * n / 1e9, "gop")
