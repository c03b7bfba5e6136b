"""``tinyfast::soft_cross_entropy``: the soft cross-entropy (or KL) of K student heads against one
teacher, as one custom op with a Triton kernel and its pure-torch reference.

For each head k, ``mean_b( -sum_c softmax(z_T/T)_c log_softmax(z_S[k]/T)_c )``: TinyBERT's
prediction loss (K = 1) and FastBERT's self-distillation of every branch at once (K = branches).
With ``kl=True`` it is ``KL(teacher || head)``, the soft cross-entropy minus the teacher's entropy:
the same gradient, a more readable log. The teacher is a constant: it never receives a gradient.

Why fused: the torch path materialises the log-softmax of the student ([K, B, C]) and of the
teacher, their product, and reads them again for the sums. The kernel reads each student row and
its teacher row twice (log-sum-exp, then the sum; for rows of a few thousand classes the second
read should come from the cache, untested: no GPU here) and writes one float per row. The
backward is a second kernel that recomputes both softmaxes from the logits and writes the gradient
rows: one more read of the logits instead of keeping a [K, B, C] gradient alive from the forward
(which logging-only calls, such as ``kl=True`` under ``torch.no_grad``, would pay for nothing).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tinyfast.kernels._dtypes import compute_dtype
from tinyfast.kernels._triton import launches_triton

try:
    import triton
    import triton.language as tl
except ImportError:  # torch builds without Triton: the torch path only
    triton = None

__all__ = ["soft_cross_entropy", "soft_cross_entropy_reference"]

# Largest block of classes one program loads at a time; longer rows loop over blocks.
MAX_BLOCK = 4096


def _check(student: Tensor, teacher: Tensor, temperature: float) -> None:
    """Raise a one-line ValueError for inputs the loss is not defined on."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(
            f"soft_cross_entropy: temperature must be finite and > 0, got {temperature}"
        )
    if student.dim() != 3:
        raise ValueError(
            "soft_cross_entropy: student logits must be [heads, batch, classes], got shape "
            f"{tuple(student.shape)}"
        )
    if teacher.dim() != 2 or tuple(teacher.shape) != tuple(student.shape[1:]):
        raise ValueError(
            f"soft_cross_entropy: teacher logits {tuple(teacher.shape)} do not match the student's "
            f"[batch, classes] {tuple(student.shape[1:])}"
        )
    if student.shape[0] < 1 or student.shape[2] < 1:
        raise ValueError(
            "soft_cross_entropy: needs at least one head and one class, got student shape "
            f"{tuple(student.shape)}"
        )
    if not (student.dtype.is_floating_point and teacher.dtype.is_floating_point):
        raise ValueError(
            f"soft_cross_entropy: logits must be floating point, got {student.dtype} and "
            f"{teacher.dtype}"
        )
    if student.device != teacher.device:
        raise ValueError(
            f"soft_cross_entropy: student on {student.device}, teacher on {teacher.device}"
        )


def soft_cross_entropy_reference(
    student: Tensor, teacher: Tensor, temperature: float = 1.0, kl: bool = False
) -> Tensor:
    """The definition the kernel is tested against: [K] losses, in float32 (float64 for float64).

    Plain torch ops, so autograd through it gives the reference gradient.
    """
    _check(student, teacher, temperature)
    dtype = compute_dtype(student)
    log_p = torch.log_softmax(teacher.detach().to(dtype) / temperature, dim=-1)
    log_q = torch.log_softmax(student.to(dtype) / temperature, dim=-1)
    p = log_p.exp()
    rows = (p * (log_p - log_q)).sum(dim=-1) if kl else -(p * log_q).sum(dim=-1)
    return rows.mean(dim=-1)


def _backward_reference(
    grad: Tensor, student: Tensor, teacher: Tensor, temperature: float
) -> Tensor:
    """d loss_k / d z_S[k, b] = (softmax(z_S[k, b] / T) - softmax(z_T[b] / T)) / (T B), for CE
    and KL alike (the teacher's entropy is a constant)."""
    dtype = compute_dtype(student)
    q = torch.softmax(student.to(dtype) / temperature, dim=-1)
    p = torch.softmax(teacher.to(dtype) / temperature, dim=-1)
    scale = grad.to(dtype) / (temperature * student.shape[1])
    return ((q - p) * scale[:, None, None]).to(student.dtype)


if triton is not None:

    @triton.jit
    def row_logsumexp(row_ptr, classes, inv_t, BLOCK: tl.constexpr):
        """log-sum-exp of one row of logits / T, in float32, by an online max over blocks."""
        offsets = tl.arange(0, BLOCK)
        m = float("-inf")
        z = 0.0
        for start in range(0, classes, BLOCK):
            cols = start + offsets
            x = tl.load(row_ptr + cols, mask=cols < classes, other=float("-inf"))
            x = x.to(tl.float32) * inv_t
            new_m = tl.maximum(m, tl.max(x, axis=0))
            z = z * tl.exp(m - new_m) + tl.sum(tl.exp(x - new_m), axis=0)
            m = new_m
        return m + tl.log(z)

    @triton.jit
    def _forward_kernel(
        student_ptr, teacher_ptr, rows_ptr, batch, classes, inv_t,
        KL: tl.constexpr, BLOCK: tl.constexpr,
    ):
        """One program per (k, b): the row's soft cross-entropy (or KL), summed over classes."""
        row = tl.program_id(0).to(tl.int64)
        s_row = student_ptr + row * classes
        t_row = teacher_ptr + (row % batch) * classes
        lse_s = row_logsumexp(s_row, classes, inv_t, BLOCK)
        lse_t = row_logsumexp(t_row, classes, inv_t, BLOCK)
        offsets = tl.arange(0, BLOCK)
        total = 0.0
        for start in range(0, classes, BLOCK):
            cols = start + offsets
            inside = cols < classes
            s = tl.load(s_row + cols, mask=inside, other=0.0).to(tl.float32) * inv_t
            t = tl.load(t_row + cols, mask=inside, other=0.0).to(tl.float32) * inv_t
            log_q = s - lse_s
            log_p = t - lse_t
            p = tl.exp(log_p)
            if KL:
                term = p * (log_p - log_q)
            else:
                term = -p * log_q
            total += tl.sum(tl.where(inside, term, 0.0), axis=0)
        tl.store(rows_ptr + row, total)

    @triton.jit
    def _backward_kernel(
        grad_ptr, student_ptr, teacher_ptr, out_ptr, batch, classes, inv_t, scale,
        BLOCK: tl.constexpr,
    ):
        """One program per (k, b): grad_k * (softmax(z_S/T) - softmax(z_T/T)) * scale."""
        row = tl.program_id(0).to(tl.int64)
        s_row = student_ptr + row * classes
        t_row = teacher_ptr + (row % batch) * classes
        lse_s = row_logsumexp(s_row, classes, inv_t, BLOCK)
        lse_t = row_logsumexp(t_row, classes, inv_t, BLOCK)
        g = tl.load(grad_ptr + row // batch).to(tl.float32) * scale
        offsets = tl.arange(0, BLOCK)
        for start in range(0, classes, BLOCK):
            cols = start + offsets
            inside = cols < classes
            s = tl.load(s_row + cols, mask=inside, other=0.0).to(tl.float32) * inv_t
            t = tl.load(t_row + cols, mask=inside, other=0.0).to(tl.float32) * inv_t
            d = g * (tl.exp(s - lse_s) - tl.exp(t - lse_t))
            tl.store(out_ptr + row * classes + cols, d.to(out_ptr.dtype.element_ty), mask=inside)


def _block(classes: int, block: int | None) -> int:
    return block if block is not None else min(triton.next_power_of_2(classes), MAX_BLOCK)


def _forward_triton(
    student: Tensor, teacher: Tensor, temperature: float, kl: bool, block: int | None = None
) -> Tensor:
    """Launch the forward kernel; ``block`` (a power of two) overrides the class block size."""
    heads, batch, classes = student.shape
    student, teacher = student.contiguous(), teacher.contiguous()
    rows = torch.empty(heads * batch, device=student.device, dtype=torch.float32)
    if rows.numel():
        with torch.cuda.device(student.device.index if student.is_cuda else -1):
            _forward_kernel[(heads * batch,)](
                student, teacher, rows, batch, classes, 1.0 / temperature,
                KL=kl, BLOCK=_block(classes, block),
            )
    return rows.view(heads, batch).mean(dim=1)


def _backward_triton(
    grad: Tensor, student: Tensor, teacher: Tensor, temperature: float, block: int | None = None
) -> Tensor:
    """Launch the backward kernel: the student's gradient, in the student's dtype."""
    heads, batch, classes = student.shape
    student, teacher = student.contiguous(), teacher.contiguous()
    grad = grad.to(torch.float32).contiguous()
    out = torch.empty_like(student)
    if out.numel():
        with torch.cuda.device(student.device.index if student.is_cuda else -1):
            _backward_kernel[(heads * batch,)](
                grad, student, teacher, out, batch, classes, 1.0 / temperature,
                1.0 / (temperature * batch), BLOCK=_block(classes, block),
            )
    return out


@torch.library.custom_op("tinyfast::soft_cross_entropy", mutates_args=())
def _soft_cross_entropy_op(
    student: Tensor, teacher: Tensor, temperature: float = 1.0, kl: bool = False
) -> Tensor:
    _check(student, teacher, temperature)
    if launches_triton(student, teacher):
        return _forward_triton(student, teacher, temperature, kl)
    return soft_cross_entropy_reference(student, teacher, temperature, kl)


@_soft_cross_entropy_op.register_fake
def _(student: Tensor, teacher: Tensor, temperature: float = 1.0, kl: bool = False) -> Tensor:
    _check(student, teacher, temperature)
    return student.new_empty((student.shape[0],), dtype=compute_dtype(student))


@torch.library.custom_op("tinyfast::soft_cross_entropy_backward", mutates_args=())
def _soft_cross_entropy_backward_op(
    grad: Tensor, student: Tensor, teacher: Tensor, temperature: float
) -> Tensor:
    if launches_triton(student, teacher):
        return _backward_triton(grad, student, teacher, temperature)
    # Contiguous in, contiguous out: the strides register_fake promises.
    return _backward_reference(grad, student.contiguous(), teacher, temperature)


@_soft_cross_entropy_backward_op.register_fake
def _(grad: Tensor, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    return torch.empty_like(student, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs: tuple, output: Tensor) -> None:
    student, teacher, temperature, _ = inputs
    ctx.save_for_backward(student, teacher)
    ctx.temperature = temperature


def _backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None, None]:
    student, teacher = ctx.saved_tensors
    grad_student = None
    if ctx.needs_input_grad[0]:
        grad_student = _soft_cross_entropy_backward_op(grad, student, teacher, ctx.temperature)
    return grad_student, None, None, None


_soft_cross_entropy_op.register_autograd(_backward, setup_context=_setup_context)


def soft_cross_entropy(
    student: Tensor, teacher: Tensor, temperature: float = 1.0, kl: bool = False
) -> Tensor:
    """[K] soft cross-entropies (or ``KL(teacher || head)``) of student logits [K, B, C] against
    teacher logits [B, C] at temperature T, each averaged over the batch and summed over classes.

    Runs the Triton kernel on CUDA (and under ``TRITON_INTERPRET=1`` on the CPU), the torch
    reference elsewhere. The result is float32 for half inputs; only the student gets a gradient.
    """
    return _soft_cross_entropy_op(student, teacher, float(temperature), bool(kl))
