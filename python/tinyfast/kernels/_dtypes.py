"""The precision every loss and reduction here accumulates in."""

from __future__ import annotations

import torch


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for half-precision inputs (sums of squares and entropies stay accurate and cannot
    overflow), float64 stays float64."""
    return torch.promote_types(x.dtype, torch.float32)
