"""When the fused ops launch their Triton kernels: on CUDA tensors, and on CPU tensors under
Triton's interpreter (``TRITON_INTERPRET=1``, how the kernels are tested on machines without a
GPU). Everywhere else an op runs its pure-torch path.

Triton reads ``TRITON_INTERPRET`` when a kernel is decorated, so the variable must be set before
the first ``tinyfast.kernels`` module is imported."""

from __future__ import annotations

import functools
import os

import torch


@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# The kernels accumulate in float32: float64 inputs keep the torch path's precision.
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def launches_triton(*tensors: torch.Tensor) -> bool:
    """True when an op on ``tensors`` runs its Triton kernel rather than its torch path."""
    if not triton_available():
        return False
    if not all(t.dtype in _KERNEL_DTYPES or not t.is_floating_point() for t in tensors):
        return False
    if all(t.is_cuda for t in tensors):
        return True
    return interpreting() and all(t.device.type == "cpu" for t in tensors)
