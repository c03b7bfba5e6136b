"""Per-feature smoothing of an int8 linear's input (SmoothQuant: Xiao et al., "SmoothQuant:
Accurate and Efficient Post-Training Quantization for Large Language Models", 2023).

BERT's hidden states carry a few features tens of times larger than the rest. The runtime
quantizes activations per token, so one such feature sets the whole token's step and the others
lose most of their precision. Multiplying the input by ``m`` feature-wise (and dividing the
weight's columns by it, which leaves ``x @ W^T`` unchanged in exact arithmetic) shrinks the large
features and moves their range into the weights, whose scales are per output channel.
``m_j = max|W[:, j]|^(1 - alpha) / max|x_j|^alpha``: SmoothQuant's rule with migration strength
``alpha``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEFAULT_ALPHA", "smoothing_factors"]

DEFAULT_ALPHA = 0.5


def smoothing_factors(input_amax: np.ndarray, weight: np.ndarray,
                      alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """Factors ``m`` [in] (float32, finite, > 0) for a linear of ``weight`` [out, in] whose
    inputs reached ``input_amax`` [in] (max |x_j| over calibration tokens). A feature that never
    moved, or whose weights are all zero, keeps factor 1."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    a = np.asarray(input_amax, dtype=np.float64)
    w = np.abs(np.asarray(weight, dtype=np.float64)).max(axis=0)
    if a.shape != w.shape:
        raise ValueError(f"input maxima have shape {a.shape}, the weight has {w.shape[0]} inputs")
    if not (np.isfinite(a).all() and (a >= 0).all()):
        raise ValueError("input maxima must be finite and >= 0")
    live = (a > 0) & (w > 0)
    m = np.ones_like(a)
    m[live] = w[live] ** (1 - alpha) / a[live] ** alpha
    m = m.astype(np.float32)
    # Factors that would overflow or vanish in float32 are left out rather than stored.
    bad = ~np.isfinite(m) | (m <= 0)
    m[bad] = 1
    return m
