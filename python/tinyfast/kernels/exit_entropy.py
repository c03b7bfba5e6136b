"""``tinyfast::exit_entropy``: FastBERT's exit test on branch logits, as one custom op with a Triton
kernel and its pure-torch reference.

From logits [N, C] and a speed in [0, 1] it returns the probabilities softmax(logits), the
uncertainty entropy(p) / ln C in [0, 1], and the exit flags uncertainty < speed (speed 0 never
exits, speed 1 exits unless the distribution is uniform). The reference below is the definition of
FastBERT's uncertainty in tinyfast: ``models.branches.normalized_entropy`` calls this op.

Why fused: one kernel reads each row of logits (twice, the second read from the cache) and writes
the probabilities, one float and one flag per row; the torch path runs a log-softmax, an exp, a
product, a sum and a comparison, each a pass over memory. The backward (uncertainty and
probabilities w.r.t. the logits, for training-time regularisers) is a few torch ops.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tinyfast.kernels._dtypes import compute_dtype
from tinyfast.kernels._triton import launches_triton
from tinyfast.kernels.soft_cross_entropy import MAX_BLOCK, row_logsumexp

try:
    import triton
    import triton.language as tl
except ImportError:  # torch builds without Triton: the torch path only
    triton = None

__all__ = ["exit_entropy", "exit_entropy_reference"]



def _check(logits: Tensor, speed: float) -> None:
    """Raise a one-line ValueError for inputs the exit test is not defined on."""
    if not 0.0 <= speed <= 1.0:  # False for NaN too
        raise ValueError(f"exit_entropy: speed must be in [0, 1], got {speed}")
    if logits.dim() != 2:
        raise ValueError(
            f"exit_entropy: logits must be [rows, classes], got shape {tuple(logits.shape)}"
        )
    if logits.shape[1] < 2:
        raise ValueError(f"exit_entropy: needs at least 2 classes, got {logits.shape[1]}")
    if not logits.dtype.is_floating_point:
        raise ValueError(f"exit_entropy: logits must be floating point, got {logits.dtype}")


def exit_entropy_reference(logits: Tensor, speed: float) -> tuple[Tensor, Tensor, Tensor]:
    """The definition: (softmax in the logits' dtype, entropy / ln C in float32 or float64, flags).

    Plain torch ops, so autograd through it gives the reference gradient.
    """
    _check(logits, speed)
    log_p = torch.log_softmax(logits.to(compute_dtype(logits)), dim=-1)
    p = log_p.exp()
    # p * log p is 0 where p underflows to 0: log_softmax stays finite there.
    uncertainty = -(p * log_p).sum(dim=-1) / math.log(logits.shape[1])
    return p.to(logits.dtype), uncertainty, uncertainty < speed


if triton is not None:

    @triton.jit
    def _exit_entropy_kernel(
        logits_ptr, probs_ptr, uncertainty_ptr, exits_ptr, classes, inv_log_c, speed,
        BLOCK: tl.constexpr,
    ):
        """One program per row: probabilities, normalized entropy and the exit flag."""
        row = tl.program_id(0).to(tl.int64)
        x_row = logits_ptr + row * classes
        p_row = probs_ptr + row * classes
        lse = row_logsumexp(x_row, classes, 1.0, BLOCK)
        offsets = tl.arange(0, BLOCK)
        entropy = 0.0
        for start in range(0, classes, BLOCK):
            cols = start + offsets
            inside = cols < classes
            log_p = tl.load(x_row + cols, mask=inside, other=0.0).to(tl.float32) - lse
            p = tl.exp(log_p)
            tl.store(p_row + cols, p.to(probs_ptr.dtype.element_ty), mask=inside)
            entropy += tl.sum(tl.where(inside, -p * log_p, 0.0), axis=0)
        uncertainty = entropy * inv_log_c
        tl.store(uncertainty_ptr + row, uncertainty)
        tl.store(exits_ptr + row, uncertainty < speed)


def _exit_entropy_triton(
    logits: Tensor, speed: float, block: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Launch the kernel; ``block`` (a power of two) overrides the class block size."""
    rows, classes = logits.shape
    logits = logits.contiguous()
    probs = torch.empty_like(logits)
    uncertainty = torch.empty(rows, device=logits.device, dtype=torch.float32)
    exits = torch.empty(rows, device=logits.device, dtype=torch.bool)
    if rows:
        if block is None:
            block = min(triton.next_power_of_2(classes), MAX_BLOCK)
        with torch.cuda.device(logits.device.index if logits.is_cuda else -1):
            _exit_entropy_kernel[(rows,)](
                logits, probs, uncertainty, exits, classes, 1.0 / math.log(classes), speed,
                BLOCK=block,
            )
    return probs, uncertainty, exits


@torch.library.custom_op("tinyfast::exit_entropy", mutates_args=())
def _exit_entropy_op(logits: Tensor, speed: float) -> tuple[Tensor, Tensor, Tensor]:
    _check(logits, speed)
    if launches_triton(logits):
        return _exit_entropy_triton(logits, speed)
    return exit_entropy_reference(logits.contiguous(), speed)


@_exit_entropy_op.register_fake
def _(logits: Tensor, speed: float) -> tuple[Tensor, Tensor, Tensor]:
    _check(logits, speed)
    rows = logits.shape[0]
    return (
        logits.new_empty(logits.shape),
        logits.new_empty((rows,), dtype=compute_dtype(logits)),
        logits.new_empty((rows,), dtype=torch.bool),
    )


def _setup_context(ctx, inputs: tuple, output: tuple) -> None:
    ctx.save_for_backward(inputs[0])
    ctx.mark_non_differentiable(output[2])


def _backward(
    ctx, grad_probs: Tensor | None, grad_uncertainty: Tensor | None, _grad_exits: Tensor | None
) -> tuple[Tensor, None]:
    """Recomputed in the compute dtype from the saved logits, with p = softmax(z), H = entropy:
    d p_i / d z_j = p_i (delta_ij - p_j); d H / d z_j = -p_j (log p_j + H); u = H / ln C."""
    (logits,) = ctx.saved_tensors
    dtype = compute_dtype(logits)
    log_p = torch.log_softmax(logits.to(dtype), dim=-1)
    p = log_p.exp()
    grad = torch.zeros_like(p)
    if grad_probs is not None:
        g = grad_probs.to(dtype)
        grad = grad + p * (g - (g * p).sum(dim=-1, keepdim=True))
    if grad_uncertainty is not None:
        entropy = -(p * log_p).sum(dim=-1, keepdim=True)
        g = grad_uncertainty.to(dtype).unsqueeze(-1) / math.log(logits.shape[1])
        grad = grad - g * p * (log_p + entropy)
    return grad.to(logits.dtype), None


_exit_entropy_op.register_autograd(_backward, setup_context=_setup_context)


def exit_entropy(logits: Tensor, speed: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """FastBERT's exit test for logits [N, C]: (probabilities [N, C] in the logits' dtype,
    uncertainty [N] = entropy / ln C in float32 (float64 for float64), exits [N] bool).

    Runs the Triton kernel on CUDA (and under ``TRITON_INTERPRET=1`` on the CPU), the torch
    reference elsewhere. Gradients flow from the probabilities and the uncertainty to the logits.
    """
    return _exit_entropy_op(logits, float(speed))
