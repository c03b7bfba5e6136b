"""The per-token activation quantizer (the runtime's ``quantize_rows``) per instruction-set level:
each f32 row [k] becomes u8 codes with its own scale and zero point, as every int8 linear does to
its input before the GEMM. One thread, into preallocated outputs.

Every level must give the portable level's bits, and the portable codes must dequantize back to
the input within one step.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from _micro import level_params, record_rate, same_bits
from tinyfast._native import kernels

# Token rows per call (as bench_gemm) and row widths: the hidden size (input of qkv, attn_out,
# ffn_in) and the ffn width (input of ffn_out) of MiniLM-L6.
ROWS = {"rows1": 1, "b1xs64": 64, "b32xs64": 32 * 64}
WIDTHS = (384, 1536)


def quantize(x: np.ndarray, level: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows, k = x.shape
    q, scales, zps = np.empty((rows, k), np.uint8), np.empty(rows, np.float32), \
        np.empty(rows, np.uint8)
    kernels.quantize_rows(x, q, scales, zps, level)
    return q, scales, zps


@functools.cache
def case(rows: int, k: int) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Inputs like a layer's (mean off zero, a few large values) and the portable result."""
    rng = np.random.default_rng(rows * 31 + k)
    x = (rng.normal(0.0, 2.0, (rows, k)) + 0.3).astype(np.float32)
    x[:, :: max(1, k // 8)] *= 4.0
    reference = quantize(x, "portable")
    q, scales, zps = reference
    back = (q.astype(np.float64) - zps[:, None]) * scales[:, None]
    assert np.all(np.abs(back - x) <= scales[:, None] * 1.0001), "portable quantizer is off"
    return x, reference


@pytest.mark.benchmark(group="quantize_rows")
@pytest.mark.parametrize("k", WIDTHS)
@pytest.mark.parametrize("rows_name", list(ROWS))
@pytest.mark.parametrize("kernel", level_params())
def test_quantize_rows(benchmark, kernel: str, rows_name: str, k: int) -> None:
    rows = ROWS[rows_name]
    x, reference = case(rows, k)
    q, scales, zps = np.zeros((rows, k), np.uint8), np.zeros(rows, np.float32), \
        np.zeros(rows, np.uint8)
    benchmark.extra_info.update(kernel=kernel, rows=rows, k=k, threads=1)
    benchmark(kernels.quantize_rows, x, q, scales, zps, kernel)
    for got, want, what in zip((q, scales, zps), reference, ("codes", "scales", "zero points"),
                               strict=True):
        assert same_bits(got, want), f"{kernel}: {what} differ from the portable level's"
    record_rate(benchmark, rows * k / 1e6, "mvalues")
