"""The int8 scheme of docs/bundle.md in numpy: the one Python definition of it.

Export quantizes weights with it and the reference forward quantizes activations with it. Every
step is float32 with a true division, exactly as the Rust runtime's scalar reference
(rust/core/src/quant.rs), so both give the same codes and scales bit for bit; the golden vectors in
tests/golden/quantization.json hold both to that.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "ACT_QMAX",
    "WEIGHT_QMAX",
    "activation_residual",
    "int8_linear",
    "quantize_activations",
    "quantize_weights",
    "round_half_away",
    "weight_residual",
]

WEIGHT_QMAX = np.float32(127)
ACT_QMAX = np.float32(255)
# A scale below the smallest normal float32 would make x / scale lose exactness (or overflow).
_MIN_SCALE = np.finfo(np.float32).tiny


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Round to nearest, ties away from zero, in ``x``'s own dtype (numpy's rint rounds ties to
    even; ``floor(|x| + 0.5)`` would round 0.49999997 up in float32)."""
    whole = np.trunc(x)
    frac = x - whole  # exact in binary floating point
    return np.where(np.abs(frac) >= 0.5, whole + np.sign(x), whole).astype(x.dtype)


def _check_finite(x: np.ndarray, what: str) -> None:
    bad = np.argwhere(~np.isfinite(x))
    if len(bad):
        row, col = (int(i) for i in bad[0])
        raise ValueError(f"{what} [{row}, {col}] is {x[row, col]}; the int8 scheme needs finite "
                         "values")


def quantize_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 per output row of ``w`` [out, in]: ``(codes int8, scales float32)``.

    ``scale = max(amax / 127, tiny)`` (an all-zero row gets scale 1 and codes 0), ``q =
    clamp(round_half_away(w / scale), -127, 127)``; -128 never occurs."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"weights must be a matrix, got shape {w.shape}")
    _check_finite(w, "weight")
    amax = np.abs(w).max(axis=1, initial=np.float32(0))
    scale = np.maximum(amax / WEIGHT_QMAX, _MIN_SCALE)
    scale = np.where(amax > 0, scale, np.float32(1)).astype(np.float32)
    q = np.clip(round_half_away(w / scale[:, None]), -WEIGHT_QMAX, WEIGHT_QMAX)
    return q.astype(np.int8), scale


def quantize_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row u8 codes of ``x`` [T, K] with their scale [T] (float32) and zero point [T] (int64).

    The row's range is widened to include 0 so that 0 is exact: ``scale = max((hi - lo) / 255,
    tiny)`` (``hi / 255 - lo / 255`` when the difference overflows), ``zp = clamp(round(-lo /
    scale), 0, 255)``, ``q = clamp(round(x / scale) + zp, 0, 255)``; an all-zero row gets scale 1,
    zero point 0."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"activations must be a matrix, got shape {x.shape}")
    _check_finite(x, "activation")
    lo = np.minimum(x.min(axis=1, initial=np.float32(0)), np.float32(0))
    hi = np.maximum(x.max(axis=1, initial=np.float32(0)), np.float32(0))
    with np.errstate(over="ignore"):
        span = hi - lo
    scale = np.where(np.isfinite(span), span / ACT_QMAX, hi / ACT_QMAX - lo / ACT_QMAX)
    scale = np.maximum(scale, _MIN_SCALE)
    zero = (lo == 0) & (hi == 0)
    scale = np.where(zero, np.float32(1), scale).astype(np.float32)
    zp = np.clip(round_half_away(-lo / scale), 0, ACT_QMAX)
    zp = np.where(zero, np.float32(0), zp)
    q = np.clip(round_half_away(x / scale[:, None]) + zp[:, None], 0, ACT_QMAX)
    return q.astype(np.uint8), scale, zp.astype(np.int64)


def weight_residual(weight: np.ndarray, codes: np.ndarray, scales: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """The int8 codes and scales (as ``quantize_weights``) of what rounding ``weight`` [out, in]
    to ``codes`` with ``scales`` left over: ``weight - codes * scales``."""
    w = np.asarray(weight, dtype=np.float32)
    left = w - codes.astype(np.float32) * np.asarray(scales, dtype=np.float32)[:, None]
    return quantize_weights(left)


def activation_residual(x: np.ndarray, q: np.ndarray, scale: np.ndarray, zp: np.ndarray
                        ) -> np.ndarray:
    """What ``quantize_activations`` left over of ``x``: ``x - (q - zp) * scale`` per row, in
    float32 as the runtime computes it (the integer difference is exact; one product and one
    subtraction per element)."""
    steps = (q.astype(np.float32) - zp.astype(np.float32)[:, None]) * scale[:, None]
    return (np.asarray(x, dtype=np.float32) - steps).astype(np.float32)


def _dequant_product(q: np.ndarray, s: np.ndarray, zp: np.ndarray, w: np.ndarray,
                     scale: np.ndarray, col_sums: np.ndarray) -> np.ndarray:
    """``s[t] * scale[o] * (q @ w^T - zp[t] * col_sums[o])`` in float64, exact integer sums."""
    acc = q.astype(np.int64) @ w.T - zp[:, None] * col_sums[None, :]
    return s.astype(np.float64)[:, None] * scale.astype(np.float64)[None, :] * acc


def int8_linear(
    x: np.ndarray, weight: np.ndarray, scale: np.ndarray, bias: np.ndarray,
    col_sums: np.ndarray | None = None,
    residual: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """``y[t,o] = s[t] * scale[o] * (sum_k q[t,k] * qw[o,k] - zp[t] * sum_k qw[o,k]) + bias[o]``.

    ``x`` [T, K] float32 activations, ``weight`` [O, K] int8 codes. The sums are exact integers
    (int64); ``col_sums`` (sum_k qw[o, k]) may be passed precomputed, as the runtime prepacks it.

    ``residual`` (residual weight codes, their scales) adds the two correction terms of
    docs/bundle.md, "Residual layers": the input's codes times the residual weights, and the
    codes of the input's own quantization residual times the weights.
    """
    q, s, zp = quantize_activations(x)
    w = weight.astype(np.int64)
    if col_sums is None:
        col_sums = w.sum(axis=1)
    y = _dequant_product(q, s, zp, w, scale, col_sums) + bias
    if residual is not None:
        rw = residual[0].astype(np.int64)
        y += _dequant_product(q, s, zp, rw, residual[1], rw.sum(axis=1))
        q2, s2, zp2 = quantize_activations(activation_residual(x, q, s, zp))
        y += _dequant_product(q2, s2, zp2, w, scale, col_sums)
    return y.astype(np.float32)
