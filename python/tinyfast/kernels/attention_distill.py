"""``tinyfast::attention_distill_loss``: TinyBERT's attention-score loss fused with the scores.

The unfused loss materialises both models' pre-softmax scores, [B, H, L, L] each, and keeps them for
the backward pass; that is most of a distillation step's memory at long sequence lengths. The fused
op reads only the queries and keys, [B, H, L, d], and rebuilds the scores tile by tile in the
forward and again in the backward pass, so they never exist in full: the torch path holds
``QUERY_ROWS`` rows of them at a time, a Triton program one tile.

Three implementations live here, side by side:

- ``attention_distill_loss_reference``: the definition. Full scores, then ``masked_score_mse``,
  the one masked mean that ``tinyfast.distill.losses.attention_mse`` also uses.
- the torch path of the op (CPU without the Triton interpreter): blocks of ``QUERY_ROWS`` query
  rows at a time against all keys.
- the Triton path (CUDA, or CPU under ``TRITON_INTERPRET=1``): flash-style kernels, one program per
  (batch, head, block of rows), looping over the other side's blocks; fp32 accumulation.

Padded tokens are handled once, at the inputs: their query and key rows are replaced by zeros
(``torch.where`` or masked loads, so inf or NaN there never propagates). A zero row scores exactly
zero against everything in both models, so padded (query, key) pairs add nothing to the sum and get
a zero gradient without masking the score tiles themselves.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from tinyfast.errors import ConfigError
from tinyfast.kernels._dtypes import compute_dtype
from tinyfast.kernels._triton import interpreting, launches_triton, triton_available

__all__ = [
    "QUERY_ROWS",
    "attention_distill_loss",
    "attention_distill_loss_backward",
    "attention_distill_loss_reference",
    "masked_score_mse",
    "pair_count",
]

# Query rows per tile of the torch path: a tile holds B * H * QUERY_ROWS * L scores.
QUERY_ROWS = 128
# Rows (and keys) per Triton program on CUDA.
TRITON_BLOCK = 64


def pair_count(real: Tensor, heads: int) -> Tensor:
    """The loss's denominator ``H * sum_b n_b^2``: every head times every real (query, key) pair.

    At least ``heads``, so an all-padding batch gives 0 rather than 0/0.
    """
    tokens = real.sum(dim=-1)
    return (tokens * tokens).sum().clamp_min(1) * heads


def masked_score_mse(student_scores: Tensor, teacher_scores: Tensor, real: Tensor) -> Tensor:
    """``sum (s - t)^2 m_q m_k / (H * sum_b n_b^2)`` over [B, H, L, L] scores, ``real`` [B, L] bool.

    The masked mean of TinyBERT's attention loss, shared by the unfused ``attention_mse`` and this
    module's reference. Scores at padded pairs may be inf or NaN: ``torch.where`` drops them and
    passes a zero gradient there (multiplying by the mask would give NaN). The teacher is detached.
    """
    pair = (real.unsqueeze(2) & real.unsqueeze(1)).unsqueeze(1)  # [B, 1, Lq, Lk]
    dtype = compute_dtype(student_scores)
    diff = student_scores.to(dtype) - teacher_scores.detach().to(dtype)
    diff = torch.where(pair, diff, diff.new_zeros(()))
    return diff.square().sum() / pair_count(real, student_scores.shape[1])


def check_head_counts(student_heads: int, teacher_heads: int) -> None:
    """Scores are compared head by head: the attention loss needs equal head counts."""
    if student_heads != teacher_heads:
        raise ConfigError(
            f"the attention loss needs as many heads in the student as in the teacher: student has "
            f"{student_heads}, teacher has {teacher_heads} (change the student's number of heads "
            "or turn the attention loss off)"
        )


def _check_inputs(
    q_s: Tensor, k_s: Tensor, q_t: Tensor, k_t: Tensor, attention_mask: Tensor
) -> None:
    for name, x in (("q_s", q_s), ("k_s", k_s), ("q_t", q_t), ("k_t", k_t)):
        if x.dim() != 4:
            raise ConfigError(
                f"{name} must be [batch, heads, length, head_dim], got {tuple(x.shape)}"
            )
    if q_s.shape != k_s.shape or q_t.shape != k_t.shape:
        raise ConfigError(
            f"queries and keys differ in shape: student {tuple(q_s.shape)} and {tuple(k_s.shape)}, "
            f"teacher {tuple(q_t.shape)} and {tuple(k_t.shape)}"
        )
    check_head_counts(q_s.shape[1], q_t.shape[1])
    if q_s.shape[0] != q_t.shape[0] or q_s.shape[2] != q_t.shape[2]:
        raise ConfigError(
            f"student and teacher differ in batch or length: student {tuple(q_s.shape)}, "
            f"teacher {tuple(q_t.shape)}"
        )
    batch, length = q_s.shape[0], q_s.shape[2]
    if attention_mask.dim() != 2 or tuple(attention_mask.shape) != (batch, length):
        raise ConfigError(
            f"attention_mask has shape {tuple(attention_mask.shape)}, expected ({batch}, {length})"
        )


def _real_rows(x: Tensor, real: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` [B, H, L, d] in ``dtype``, padded tokens' rows zeroed (their garbage never leaks)."""
    return torch.where(real[:, None, :, None], x.to(dtype), 0)


def attention_distill_loss_reference(
    q_s: Tensor,
    k_s: Tensor,
    q_t: Tensor,
    k_t: Tensor,
    attention_mask: Tensor,
    scale_s: float,
    scale_t: float,
) -> Tensor:
    """The definition of the loss: full scores ``q k^T * scale`` of both models, masked mean.

    Plain autograd through [B, H, L, L] tensors; the fused op must agree with it.
    """
    _check_inputs(q_s, k_s, q_t, k_t, attention_mask)
    real = attention_mask.to(q_s.device) != 0
    dtype = compute_dtype(q_s)
    student = _real_rows(q_s, real, dtype) @ _real_rows(k_s, real, dtype).transpose(-1, -2)
    teacher = _real_rows(q_t, real, dtype) @ _real_rows(k_t, real, dtype).transpose(-1, -2)
    return masked_score_mse(student * scale_s, teacher.detach() * scale_t, real)


# --------------------------------------------------------------------------------------------
# The torch path: blocks of query rows


def _diff_tiles(
    q_s: Tensor, k_s: Tensor, q_t: Tensor, k_t: Tensor, scale_s: float, scale_t: float
) -> Iterator[tuple[slice, Tensor]]:
    """Score differences ``S_s - S_t`` for QUERY_ROWS query rows at a time, [B, H, rows, L].

    Inputs are already in the compute dtype with padded rows zeroed, so padded pairs are 0.
    """
    length = q_s.shape[2]
    keys_s, keys_t = k_s.transpose(-1, -2), k_t.transpose(-1, -2)
    for start in range(0, length, QUERY_ROWS):
        rows = slice(start, min(start + QUERY_ROWS, length))
        diff = torch.matmul(q_s[:, :, rows], keys_s).mul_(scale_s)
        diff.sub_(torch.matmul(q_t[:, :, rows], keys_t).mul_(scale_t))
        yield rows, diff


def _prepared(
    q_s: Tensor, k_s: Tensor, q_t: Tensor, k_t: Tensor, real: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dtype = compute_dtype(q_s)
    return (
        _real_rows(q_s, real, dtype),
        _real_rows(k_s, real, dtype),
        _real_rows(q_t, real, dtype),
        _real_rows(k_t, real, dtype),
    )


def _torch_forward(
    q_s: Tensor, k_s: Tensor, q_t: Tensor, k_t: Tensor, real: Tensor, scale_s: float, scale_t: float
) -> Tensor:
    q_s, k_s, q_t, k_t = _prepared(q_s, k_s, q_t, k_t, real)
    total = q_s.new_zeros(())
    for _, diff in _diff_tiles(q_s, k_s, q_t, k_t, scale_s, scale_t):
        total += diff.square_().sum()
    return total / pair_count(real, q_s.shape[1])


def _torch_backward(
    grad: Tensor,
    q_s: Tensor,
    k_s: Tensor,
    q_t: Tensor,
    k_t: Tensor,
    real: Tensor,
    scale_s: float,
    scale_t: float,
) -> tuple[Tensor, Tensor]:
    """dQ_s = D K_s * c and dK_s = D^T Q_s * c, c = grad * 2 scale_s / count, tile by tile."""
    q_dtype, k_dtype = q_s.dtype, k_s.dtype
    q_s, k_s, q_t, k_t = _prepared(q_s, k_s, q_t, k_t, real)
    grad_q = torch.empty_like(q_s)
    grad_k = torch.zeros_like(k_s)
    for rows, diff in _diff_tiles(q_s, k_s, q_t, k_t, scale_s, scale_t):
        torch.matmul(diff, k_s, out=grad_q[:, :, rows])
        grad_k += diff.transpose(-1, -2) @ q_s[:, :, rows]
    coef = grad.to(q_s.dtype) * (2.0 * scale_s) / pair_count(real, q_s.shape[1])
    return (grad_q * coef).to(q_dtype), (grad_k * coef).to(k_dtype)


# --------------------------------------------------------------------------------------------
# The Triton path

if triton_available():
    import triton
    import triton.language as tl

    @triton.jit
    def _load_rows(
        base,
        offs,
        keep,
        stride_l,
        stride_d,
        width,
        WIDTH: tl.constexpr,
        UPCAST: tl.constexpr,
    ):
        """Rows ``offs`` of one [L, width] matrix padded to WIDTH columns; rows not kept are 0."""
        cols = tl.arange(0, WIDTH)
        mask = keep[:, None] & (cols[None, :] < width)
        ptrs = base + offs[:, None] * stride_l + cols[None, :] * stride_d
        tile = tl.load(ptrs, mask=mask, other=0)
        if UPCAST:
            tile = tile.to(tl.float32)
        return tile

    @triton.jit
    def _real_at(real_ptr, batch, offs, length):
        """Whether tokens ``offs`` of row ``batch`` are real (and inside the sequence)."""
        inside = offs < length
        return (tl.load(real_ptr + batch * length + offs, mask=inside, other=0) != 0) & inside

    @triton.jit
    def _diff_tile(qs, ks, qt, kt, scale_s, scale_t):
        """``S_s - S_t`` of one [M, N] tile, accumulated in fp32."""
        s = tl.dot(qs, tl.trans(ks), input_precision="ieee", out_dtype=tl.float32)
        t = tl.dot(qt, tl.trans(kt), input_precision="ieee", out_dtype=tl.float32)
        return s * scale_s - t * scale_t

    @triton.jit
    def _forward_kernel(
        qs_ptr, ks_ptr, qt_ptr, kt_ptr, real_ptr, partial_ptr,
        heads, length, width_s, width_t, scale_s, scale_t,
        sqs_b, sqs_h, sqs_l, sqs_d, sks_b, sks_h, sks_l, sks_d,
        sqt_b, sqt_h, sqt_l, sqt_d, skt_b, skt_h, skt_l, skt_d,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        WIDTH_S: tl.constexpr, WIDTH_T: tl.constexpr, UPCAST: tl.constexpr,
    ):
        """Sum of squared score differences of one block of query rows against every key."""
        block = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // heads
        h = bh % heads
        offs_m = block * BLOCK_M + tl.arange(0, BLOCK_M)
        real_m = _real_at(real_ptr, b, offs_m, length)
        qs = _load_rows(qs_ptr + b * sqs_b + h * sqs_h, offs_m, real_m, sqs_l, sqs_d, width_s,
                        WIDTH_S, UPCAST)
        qt = _load_rows(qt_ptr + b * sqt_b + h * sqt_h, offs_m, real_m, sqt_l, sqt_d, width_t,
                        WIDTH_T, UPCAST)
        acc = tl.zeros([BLOCK_M], dtype=tl.float32)
        for start in range(0, length, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            real_n = _real_at(real_ptr, b, offs_n, length)
            ks = _load_rows(ks_ptr + b * sks_b + h * sks_h, offs_n, real_n, sks_l, sks_d, width_s,
                            WIDTH_S, UPCAST)
            kt = _load_rows(kt_ptr + b * skt_b + h * skt_h, offs_n, real_n, skt_l, skt_d, width_t,
                            WIDTH_T, UPCAST)
            diff = _diff_tile(qs, ks, qt, kt, scale_s, scale_t)
            acc += tl.sum(diff * diff, axis=1)
        tl.store(partial_ptr + bh * tl.num_programs(0) + block, tl.sum(acc, axis=0))

    @triton.jit
    def _grad_q_kernel(
        qs_ptr, ks_ptr, qt_ptr, kt_ptr, real_ptr, coef_ptr, out_ptr,
        heads, length, width_s, width_t, scale_s, scale_t,
        sqs_b, sqs_h, sqs_l, sqs_d, sks_b, sks_h, sks_l, sks_d,
        sqt_b, sqt_h, sqt_l, sqt_d, skt_b, skt_h, skt_l, skt_d,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        WIDTH_S: tl.constexpr, WIDTH_T: tl.constexpr, UPCAST: tl.constexpr,
    ):
        """dQ_s of one block of query rows: ``coef * sum over key blocks of D K_s``."""
        block = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // heads
        h = bh % heads
        offs_m = block * BLOCK_M + tl.arange(0, BLOCK_M)
        real_m = _real_at(real_ptr, b, offs_m, length)
        qs = _load_rows(qs_ptr + b * sqs_b + h * sqs_h, offs_m, real_m, sqs_l, sqs_d, width_s,
                        WIDTH_S, UPCAST)
        qt = _load_rows(qt_ptr + b * sqt_b + h * sqt_h, offs_m, real_m, sqt_l, sqt_d, width_t,
                        WIDTH_T, UPCAST)
        acc = tl.zeros([BLOCK_M, WIDTH_S], dtype=tl.float32)
        for start in range(0, length, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            real_n = _real_at(real_ptr, b, offs_n, length)
            ks = _load_rows(ks_ptr + b * sks_b + h * sks_h, offs_n, real_n, sks_l, sks_d, width_s,
                            WIDTH_S, UPCAST)
            kt = _load_rows(kt_ptr + b * skt_b + h * skt_h, offs_n, real_n, skt_l, skt_d, width_t,
                            WIDTH_T, UPCAST)
            diff = _diff_tile(qs, ks, qt, kt, scale_s, scale_t)
            acc += tl.dot(diff, ks.to(tl.float32), input_precision="ieee", out_dtype=tl.float32)
        cols = tl.arange(0, WIDTH_S)
        out = out_ptr + (bh * length + offs_m[:, None]) * width_s + cols[None, :]
        mask = (offs_m[:, None] < length) & (cols[None, :] < width_s)
        tl.store(out, acc * tl.load(coef_ptr), mask=mask)

    @triton.jit
    def _grad_k_kernel(
        qs_ptr, ks_ptr, qt_ptr, kt_ptr, real_ptr, coef_ptr, out_ptr,
        heads, length, width_s, width_t, scale_s, scale_t,
        sqs_b, sqs_h, sqs_l, sqs_d, sks_b, sks_h, sks_l, sks_d,
        sqt_b, sqt_h, sqt_l, sqt_d, skt_b, skt_h, skt_l, skt_d,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        WIDTH_S: tl.constexpr, WIDTH_T: tl.constexpr, UPCAST: tl.constexpr,
    ):
        """dK_s of one block of keys: ``coef * sum over query blocks of D^T Q_s``."""
        block = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // heads
        h = bh % heads
        offs_n = block * BLOCK_N + tl.arange(0, BLOCK_N)
        real_n = _real_at(real_ptr, b, offs_n, length)
        ks = _load_rows(ks_ptr + b * sks_b + h * sks_h, offs_n, real_n, sks_l, sks_d, width_s,
                        WIDTH_S, UPCAST)
        kt = _load_rows(kt_ptr + b * skt_b + h * skt_h, offs_n, real_n, skt_l, skt_d, width_t,
                        WIDTH_T, UPCAST)
        acc = tl.zeros([BLOCK_N, WIDTH_S], dtype=tl.float32)
        for start in range(0, length, BLOCK_M):
            offs_m = start + tl.arange(0, BLOCK_M)
            real_m = _real_at(real_ptr, b, offs_m, length)
            qs = _load_rows(qs_ptr + b * sqs_b + h * sqs_h, offs_m, real_m, sqs_l, sqs_d, width_s,
                            WIDTH_S, UPCAST)
            qt = _load_rows(qt_ptr + b * sqt_b + h * sqt_h, offs_m, real_m, sqt_l, sqt_d, width_t,
                            WIDTH_T, UPCAST)
            diff = _diff_tile(qs, ks, qt, kt, scale_s, scale_t)
            acc += tl.dot(tl.trans(diff), qs.to(tl.float32), input_precision="ieee",
                          out_dtype=tl.float32)
        cols = tl.arange(0, WIDTH_S)
        out = out_ptr + (bh * length + offs_n[:, None]) * width_s + cols[None, :]
        mask = (offs_n[:, None] < length) & (cols[None, :] < width_s)
        tl.store(out, acc * tl.load(coef_ptr), mask=mask)


def _kernel_args(
    q_s: Tensor, k_s: Tensor, q_t: Tensor, k_t: Tensor, scale_s: float, scale_t: float, block: int
) -> tuple[list[Tensor], list[int | float], dict[str, int | bool]]:
    """The kernels' shared arguments: the four tensors (each pair in one dtype), then sizes, scales
    and strides, then the compile-time constants."""
    if q_s.dtype != k_s.dtype:
        q_s, k_s = q_s.to(compute_dtype(q_s)), k_s.to(compute_dtype(q_s))
    if q_t.dtype != k_t.dtype:
        q_t, k_t = q_t.to(compute_dtype(q_t)), k_t.to(compute_dtype(q_t))
    heads, length, width_s = q_s.shape[1:]
    width_t = q_t.shape[3]
    strides = [s for x in (q_s, k_s, q_t, k_t) for s in x.stride()]
    scalars: list[int | float] = [heads, length, width_s, width_t, scale_s, scale_t, *strides]
    consts: dict[str, int | bool] = {
        "BLOCK_M": block,
        "BLOCK_N": block,
        "WIDTH_S": max(16, triton.next_power_of_2(width_s)),
        "WIDTH_T": max(16, triton.next_power_of_2(width_t)),
        # The interpreter multiplies bfloat16 tiles as their raw 16-bit integers: widen first.
        "UPCAST": interpreting(),
    }
    return [q_s, k_s, q_t, k_t], scalars, consts


def _triton_forward(
    q_s: Tensor,
    k_s: Tensor,
    q_t: Tensor,
    k_t: Tensor,
    real: Tensor,
    scale_s: float,
    scale_t: float,
    block: int = TRITON_BLOCK,
) -> Tensor:
    tensors, scalars, consts = _kernel_args(q_s, k_s, q_t, k_t, scale_s, scale_t, block)
    batch, heads, length = q_s.shape[:3]
    blocks = triton.cdiv(length, block)
    partial = torch.empty(batch * heads * blocks, dtype=torch.float32, device=q_s.device)
    real_i32 = real.to(torch.int32).contiguous()
    _forward_kernel[(blocks, batch * heads)](*tensors, real_i32, partial, *scalars, **consts)
    return partial.sum() / pair_count(real, heads)


def _triton_backward(
    grad: Tensor,
    q_s: Tensor,
    k_s: Tensor,
    q_t: Tensor,
    k_t: Tensor,
    real: Tensor,
    scale_s: float,
    scale_t: float,
    block: int = TRITON_BLOCK,
) -> tuple[Tensor, Tensor]:
    tensors, scalars, consts = _kernel_args(q_s, k_s, q_t, k_t, scale_s, scale_t, block)
    batch, heads, length, width_s = q_s.shape
    # On the device, so the backward never waits for the host.
    coef = (grad.float() * (2.0 * scale_s) / pair_count(real, heads)).reshape(1)
    real_i32 = real.to(torch.int32).contiguous()
    # One program per block of query rows (dQ) or of keys (dK), per (batch, head).
    grid = (triton.cdiv(length, block), batch * heads)
    grad_q = torch.empty(batch, heads, length, width_s, dtype=torch.float32, device=q_s.device)
    grad_k = torch.empty_like(grad_q)
    _grad_q_kernel[grid](*tensors, real_i32, coef, grad_q, *scalars, **consts)
    _grad_k_kernel[grid](*tensors, real_i32, coef, grad_k, *scalars, **consts)
    return grad_q.to(q_s.dtype), grad_k.to(k_s.dtype)


# --------------------------------------------------------------------------------------------
# The ops


def _loss_impl(
    q_s: Tensor,
    k_s: Tensor,
    q_t: Tensor,
    k_t: Tensor,
    attention_mask: Tensor,
    scale_s: float,
    scale_t: float,
) -> Tensor:
    """TinyBERT's attention loss from queries and keys, without materialising the scores.

    Student ``q_s, k_s`` [B, H, L, d_s], teacher ``q_t, k_t`` [B, H, L, d_t], ``attention_mask``
    [B, L] (nonzero = real token); scores are ``q k^T * scale``. Equals
    ``attention_distill_loss_reference``; the teacher gets no gradient.
    """
    _check_inputs(q_s, k_s, q_t, k_t, attention_mask)
    real = attention_mask.to(q_s.device) != 0
    if launches_triton(q_s, k_s, q_t, k_t):
        return _triton_forward(q_s, k_s, q_t, k_t, real, scale_s, scale_t)
    return _torch_forward(q_s, k_s, q_t, k_t, real, scale_s, scale_t)


attention_distill_loss = torch.library.custom_op(
    "tinyfast::attention_distill_loss", _loss_impl, mutates_args=()
)
attention_distill_loss.__doc__ = _loss_impl.__doc__


@attention_distill_loss.register_fake
def _(
    q_s: Tensor,
    k_s: Tensor,
    q_t: Tensor,
    k_t: Tensor,
    attention_mask: Tensor,
    scale_s: float,
    scale_t: float,
) -> Tensor:
    _check_inputs(q_s, k_s, q_t, k_t, attention_mask)
    return q_s.new_empty((), dtype=compute_dtype(q_s))


def _loss_backward_impl(
    grad: Tensor,
    q_s: Tensor,
    k_s: Tensor,
    q_t: Tensor,
    k_t: Tensor,
    attention_mask: Tensor,
    scale_s: float,
    scale_t: float,
) -> tuple[Tensor, Tensor]:
    """Gradients of ``attention_distill_loss`` for ``q_s`` and ``k_s``, recomputing the scores.

    An op of its own so torch.compile and opcheck see the backward as one opaque call too.
    """
    real = attention_mask.to(q_s.device) != 0
    if launches_triton(q_s, k_s, q_t, k_t):
        return _triton_backward(grad, q_s, k_s, q_t, k_t, real, scale_s, scale_t)
    return _torch_backward(grad, q_s, k_s, q_t, k_t, real, scale_s, scale_t)


attention_distill_loss_backward = torch.library.custom_op(
    "tinyfast::attention_distill_loss_backward", _loss_backward_impl, mutates_args=()
)
attention_distill_loss_backward.__doc__ = _loss_backward_impl.__doc__


@attention_distill_loss_backward.register_fake
def _(
    grad: Tensor,
    q_s: Tensor,
    k_s: Tensor,
    q_t: Tensor,
    k_t: Tensor,
    attention_mask: Tensor,
    scale_s: float,
    scale_t: float,
) -> tuple[Tensor, Tensor]:
    return torch.empty_like(q_s), torch.empty_like(k_s)


def _setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: Tensor) -> None:
    q_s, k_s, q_t, k_t, attention_mask, scale_s, scale_t = inputs
    ctx.save_for_backward(q_s, k_s, q_t, k_t, attention_mask)
    ctx.scales = (scale_s, scale_t)


def _backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:
    q_s, k_s, q_t, k_t, attention_mask = ctx.saved_tensors
    grad_q, grad_k = attention_distill_loss_backward(
        grad, q_s, k_s, q_t, k_t, attention_mask, *ctx.scales
    )
    # The teacher is frozen; the mask and scales are not differentiable.
    return grad_q, grad_k, None, None, None, None, None


attention_distill_loss.register_autograd(_backward, setup_context=_setup_context)
