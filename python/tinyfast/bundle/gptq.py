"""Error-compensating rounding of a weight matrix to the bundle's int8 codes (GPTQ: Frantar et
al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers", 2023).

Plain rounding makes each weight's error independently; over inputs whose features are
correlated, the errors of one output add up. GPTQ rounds the columns (input features) one at a
time and moves each column's rounding error onto the columns not yet rounded, weighted by the
inputs' second moments ``H = sum_t x_t x_t^T``, so the error of ``x @ W^T`` over those inputs
shrinks. The scales stay the int8 scheme's own (``quantize_weights``) and every code is still in
``-127..127``: the runtime and the bundle format do not change, only which code a weight gets.
With uncorrelated inputs (diagonal ``H``) the codes are exactly ``quantize_weights``'s.
"""

from __future__ import annotations

import numpy as np

from tinyfast.bundle.quantize import WEIGHT_QMAX, quantize_weights, round_half_away

__all__ = ["DEFAULT_DAMP", "quantize_weights_gptq"]

# Added to H's diagonal, as a share of its mean: keeps the inverse well conditioned when some
# features barely vary over the calibration inputs (the GPTQ paper's 1%).
DEFAULT_DAMP = 0.01


def _inverse_factor(hessian: np.ndarray, damp: float) -> np.ndarray:
    """The upper Cholesky factor ``U`` of ``(H + damp * mean(diag H) * I)^-1`` (``U^T U``)."""
    h = np.array(hessian, dtype=np.float64)
    diag = np.diag(h).copy()
    dead = diag <= 0
    # A feature that never varied carries no information about the error's cost: weight 1.
    h[dead, :] = 0
    h[:, dead] = 0
    h[dead, dead] = 1
    diag = np.diag(h)
    h[np.diag_indices_from(h)] += damp * float(diag.mean())
    try:
        lower = np.linalg.cholesky(h)
        inv_lower = np.linalg.inv(lower)
        return np.linalg.cholesky(inv_lower.T @ inv_lower).T
    except np.linalg.LinAlgError:
        raise ValueError("the input second moments are not positive definite") from None


def quantize_weights_gptq(
    w: np.ndarray, hessian: np.ndarray, damp: float = DEFAULT_DAMP
) -> tuple[np.ndarray, np.ndarray]:
    """``(codes int8 [out, in], scales float32 [out])`` of ``w`` [out, in] rounded by GPTQ over
    inputs with second moments ``hessian`` [in, in]; the scales are ``quantize_weights(w)``'s."""
    w = np.asarray(w, dtype=np.float32)
    if w.ndim != 2:
        raise ValueError(f"weights must be a matrix, got shape {w.shape}")
    cols = w.shape[1]
    hessian = np.asarray(hessian)
    if hessian.shape != (cols, cols):
        raise ValueError(f"input second moments have shape {hessian.shape}, expected "
                         f"({cols}, {cols})")
    if not np.isfinite(hessian).all():
        raise ValueError("input second moments hold NaN or infinite values")
    if not 0 < damp < 1:
        raise ValueError(f"damp must be in (0, 1), got {damp}")
    _, scales = quantize_weights(w)  # also checks w is finite
    factor = _inverse_factor(hessian, damp)
    work = w.astype(np.float64)
    codes = np.empty(w.shape, dtype=np.int8)
    for i in range(cols):
        # The column as float32, divided as quantize_weights divides: an untouched column gets
        # exactly its codes.
        column = work[:, i].astype(np.float32)
        q = np.clip(round_half_away(column / scales), -WEIGHT_QMAX, WEIGHT_QMAX)
        codes[:, i] = q.astype(np.int8)
        err = (work[:, i] - q.astype(np.float64) * scales) / factor[i, i]
        work[:, i + 1:] -= np.outer(err, factor[i, i + 1:])
    return codes, scales
