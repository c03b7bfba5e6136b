"""The fused distillation ops (``tinyfast::`` custom ops of tinyfast.kernels), forward + backward
on CPU tensors, next to the plain-torch reference formula each is tested against, at the sizes
of a small distillation step, torch on one thread.

On the CPU an op runs its torch path (its Triton kernel needs a GPU, or Triton's interpreter under
``TRITON_INTERPRET=1``, whose times measure the interpreter); ``extra_info["path"]`` records which
ran. benches/kernels_speed.py times the Triton kernels where there is a GPU. Checked once: the op
and the reference agree on the value and the gradient.

- ``attention_distill_loss``: TinyBERT's attention-score MSE from queries and keys (8 sentences
  of 128 tokens, a quarter of them padding; 12 heads; student heads of 26, teacher heads of 32 as
  TinyBERT-4 from MiniLM-L6), gradient for the student's queries and keys;
- ``soft_cross_entropy``: 5 branch heads against one teacher, 256 rows of 1,000 classes;
- ``exit_entropy``: softmax and normalized entropy of 4,096 rows of 6 classes, gradient through
  the entropy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

IMPLS = ("op", "reference")


def attention_case(torch: Any) -> tuple[Callable, Callable, dict[str, Any]]:
    from tinyfast.kernels.attention_distill import (
        attention_distill_loss,
        attention_distill_loss_reference,
    )

    batch, heads, length, d_s, d_t = 8, 12, 128, 26, 32
    gen = torch.Generator().manual_seed(0)
    q_s, k_s = (torch.randn(batch, heads, length, d_s, generator=gen).requires_grad_()
                for _ in range(2))
    q_t, k_t = (torch.randn(batch, heads, length, d_t, generator=gen) for _ in range(2))
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[::4, length * 3 // 4:] = 0
    mask[1::4, length // 2:] = 0
    args = (q_s, k_s, q_t, k_t, mask, d_s**-0.5, d_t**-0.5)

    def run(loss_fn: Callable) -> Callable:
        def step() -> tuple[Any, ...]:
            loss = loss_fn(*args)
            return (loss, *torch.autograd.grad(loss, (q_s, k_s)))
        return step

    shape = dict(batch=batch, heads=heads, length=length, d_student=d_s, d_teacher=d_t)
    return run(attention_distill_loss), run(attention_distill_loss_reference), \
        dict(shape=shape, probe=q_s)


def soft_ce_case(torch: Any) -> tuple[Callable, Callable, dict[str, Any]]:
    from tinyfast.kernels.soft_cross_entropy import (
        soft_cross_entropy,
        soft_cross_entropy_reference,
    )

    heads, rows, classes, temperature = 5, 256, 1000, 2.0
    gen = torch.Generator().manual_seed(1)
    student = torch.randn(heads, rows, classes, generator=gen).requires_grad_()
    teacher = torch.randn(rows, classes, generator=gen)

    def run(loss_fn: Callable) -> Callable:
        def step() -> tuple[Any, ...]:
            losses = loss_fn(student, teacher, temperature)
            return (losses, *torch.autograd.grad(losses.sum(), (student,)))
        return step

    shape = dict(heads=heads, rows=rows, classes=classes, temperature=temperature)
    return run(soft_cross_entropy), run(soft_cross_entropy_reference), \
        dict(shape=shape, probe=student)


def exit_entropy_case(torch: Any) -> tuple[Callable, Callable, dict[str, Any]]:
    from tinyfast.kernels.exit_entropy import exit_entropy, exit_entropy_reference

    rows, classes, speed = 4096, 6, 0.3
    gen = torch.Generator().manual_seed(2)
    logits = (torch.randn(rows, classes, generator=gen) * 3).requires_grad_()

    def run(fn: Callable) -> Callable:
        def step() -> tuple[Any, ...]:
            probs, uncertainty, exits = fn(logits, speed)
            return (probs, uncertainty, exits,
                    *torch.autograd.grad(uncertainty.sum(), (logits,)))
        return step

    shape = dict(rows=rows, classes=classes, speed=speed)
    return run(exit_entropy), run(exit_entropy_reference), dict(shape=shape, probe=logits)


CASES = {
    "attention_distill_loss": attention_case,
    "soft_cross_entropy": soft_ce_case,
    "exit_entropy": exit_entropy_case,
}


@pytest.fixture(scope="module")
def cases(one_torch_thread) -> dict[str, tuple[Callable, Callable, dict[str, Any]]]:
    """Each op's (fused step, reference step, description), built once; checked to agree."""
    torch = one_torch_thread
    built = {name: make(torch) for name, make in CASES.items()}
    for name, (op, ref, _) in built.items():
        agree(torch, op(), ref(), name)
    return built


def agree(torch: Any, got: tuple[Any, ...], want: tuple[Any, ...], name: str) -> None:
    """Values and gradients of two steps agree (exit flags exactly)."""
    for a, b in zip(got, want, strict=True):
        if a.dtype == torch.bool:
            assert torch.equal(a, b), f"{name}: exit flags differ"
        else:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=f"{name}: values differ")


@pytest.mark.benchmark(group="distill_ops")
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op_name", list(CASES))
def test_forward_backward(benchmark, cases, one_torch_thread, op_name: str, impl: str) -> None:
    from tinyfast.kernels._triton import launches_triton

    op, ref, info = cases[op_name]
    step = op if impl == "op" else ref
    path = "reference formula (plain torch autograd)"
    if impl == "op":
        path = "triton interpreter" if launches_triton(info["probe"]) else "torch path"
    benchmark.extra_info.update(op=op_name, impl=impl, path=path, device="cpu",
                                torch_threads=one_torch_thread.get_num_threads(), **info["shape"])
    result = benchmark(step)
    # The timed step's own result, against the other implementation.
    agree(one_torch_thread, result, (ref if impl == "op" else op)(), op_name)
