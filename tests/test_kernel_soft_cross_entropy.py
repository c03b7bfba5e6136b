"""tinyfast::soft_cross_entropy: the reference against hand-computed values, the op's torch path
and its Triton kernels (run by Triton's interpreter in a subprocess) against the reference, the
op's registration (opcheck) and torch.compile."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")

from tinyfast.distill import losses  # noqa: E402
from tinyfast.kernels.soft_cross_entropy import (  # noqa: E402
    soft_cross_entropy,
    soft_cross_entropy_reference,
)
from triton_compile import compile_for_ampere  # noqa: E402

LN2, LN3 = math.log(2), math.log(3)


def hand_example() -> tuple[torch.Tensor, torch.Tensor]:
    """B = 2, C = 3, T = 2, two heads: head 0 is a real student, head 1 copies the teacher.

    z / T is the log of unnormalised probabilities, so every softmax is a simple fraction:
    teacher p = (1/2, 1/4, 1/4) and (1/3, 1/3, 1/3); head 0 q = (1/4, 1/4, 1/2) and (1/4, 1/2, 1/4).
    """
    teacher = 2 * torch.tensor([[2.0, 1.0, 1.0], [1.0, 1.0, 1.0]], dtype=torch.float64).log()
    head0 = 2 * torch.tensor([[1.0, 1.0, 2.0], [1.0, 2.0, 1.0]], dtype=torch.float64).log()
    return torch.stack([head0, teacher]), teacher


def test_reference_hand_values_and_gradient() -> None:
    student, teacher = hand_example()
    student.requires_grad_(True)
    # Head 0, row 0: -(1/2 ln 1/4 + 1/4 ln 1/4 + 1/4 ln 1/2) = (1 + 1/2 + 1/4) ln 2 = 7/4 ln 2.
    # Row 1: -(1/3)(ln 1/4 + ln 1/2 + ln 1/4) = 5/3 ln 2. Mean over B = 2: 41/24 ln 2.
    # Head 1 is the teacher: its cross-entropy is the teacher's entropy, (3/2 ln 2 + ln 3) / 2.
    ce = soft_cross_entropy_reference(student, teacher, temperature=2.0)
    expected = torch.tensor([41 / 24 * LN2, (1.5 * LN2 + LN3) / 2], dtype=torch.float64)
    torch.testing.assert_close(ce, expected)
    # KL = CE - teacher entropy: (1/4 ln 2 + 5/3 ln 2 - ln 3) / 2 for head 0, exactly 0 for head 1.
    kl = soft_cross_entropy_reference(student, teacher, temperature=2.0, kl=True)
    expected_kl = torch.tensor([(0.25 * LN2 + 5 / 3 * LN2 - LN3) / 2, 0.0], dtype=torch.float64)
    torch.testing.assert_close(kl, expected_kl)
    # d loss / d z_S = (q - p) / (T B), T B = 4; head 1 has q = p, so a zero gradient.
    ce.sum().backward()
    expected_grad = torch.tensor(
        [[[-1 / 16, 0.0, 1 / 16], [-1 / 48, 1 / 24, -1 / 48]], [[0.0] * 3, [0.0] * 3]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(student.grad, expected_grad)
    # KL has the same gradient: the teacher's entropy is a constant.
    student.grad = None
    kl.sum().backward()
    torch.testing.assert_close(student.grad, expected_grad)


def test_op_equals_hand_values_and_distill_loss_is_its_first_head() -> None:
    student, teacher = hand_example()
    torch.testing.assert_close(
        soft_cross_entropy(student, teacher, 2.0),
        soft_cross_entropy_reference(student, teacher, 2.0),
    )
    one = losses.soft_cross_entropy(student[0], teacher, temperature=2.0, scale_by_t2=True)
    assert one.item() == pytest.approx(4 * 41 / 24 * LN2)


@pytest.mark.parametrize(
    ("student_shape", "teacher_shape", "temperature", "message"),
    [
        ((2, 3, 4), (3, 5), 1.0, "teacher logits"),
        ((2, 3, 4), (2, 4), 1.0, "teacher logits"),
        ((3, 4), (3, 4), 1.0, "heads, batch, classes"),
        ((2, 3, 4), (3, 4), 0.0, "temperature"),
        ((2, 3, 4), (3, 4), -1.0, "temperature"),
        ((2, 3, 4), (3, 4), math.nan, "temperature"),
        ((2, 3, 4), (3, 4), math.inf, "temperature"),
        ((0, 3, 4), (3, 4), 1.0, "at least one head"),
    ],
)
def test_bad_inputs_raise_one_line_value_errors(
    student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], temperature: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as info:
        soft_cross_entropy(torch.zeros(student_shape), torch.zeros(teacher_shape), temperature)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=message):
        soft_cross_entropy_reference(
            torch.zeros(student_shape), torch.zeros(teacher_shape), temperature
        )


def random_logits(
    heads: int, batch: int, classes: int, dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    student = (3 * torch.randn(heads, batch, classes, generator=gen)).to(dtype)
    teacher = (3 * torch.randn(batch, classes, generator=gen)).to(dtype)
    return student, teacher


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("heads", "batch", "classes"), [(1, 3, 2), (5, 7, 6), (1, 5, 1000),
                                                         (5, 3, 1000)])
def test_torch_path_matches_reference_values_and_gradients(
    heads: int, batch: int, classes: int, dtype: torch.dtype
) -> None:
    student, teacher = random_logits(heads, batch, classes, dtype)
    weights = torch.linspace(0.5, 2.0, heads)  # a different upstream gradient per head
    tight = dtype == torch.float32
    for temperature, kl in ((1.0, False), (2.5, True)):
        got_s = student.clone().requires_grad_(True)
        ref_s = student.clone().requires_grad_(True)
        got = soft_cross_entropy(got_s, teacher, temperature, kl)
        ref = soft_cross_entropy_reference(ref_s, teacher, temperature, kl)
        assert got.dtype == torch.float32 and got.shape == (heads,)
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
        (got * weights).sum().backward()
        (ref * weights).sum().backward()
        assert got_s.grad.dtype == dtype
        atol = 1e-7 if tight else 1e-4
        rtol = 1e-5 if tight else 1e-2
        torch.testing.assert_close(got_s.grad, ref_s.grad, rtol=rtol, atol=atol)
    if not tight:
        # Accumulated in float32: the same value as the float32 loss on the same rounded inputs.
        torch.testing.assert_close(
            soft_cross_entropy(student, teacher),
            soft_cross_entropy_reference(student.float(), teacher.float()),
            rtol=1e-6, atol=1e-6,
        )


INTERPRETED = textwrap.dedent(
    """
    import torch
    from tinyfast.kernels import soft_cross_entropy as m

    assert m.launches_triton(torch.zeros(1)), "the op would not launch the kernel"
    cases = [  # (K, B, C, block, dtype): a block smaller than C makes the kernel loop
        (1, 3, 2, None, torch.float32),
        (3, 2, 7, 4, torch.float32),
        (2, 3, 1000, None, torch.float32),
        (2, 1, 37, 8, torch.bfloat16),
    ]
    for k, b, c, block, dtype in cases:
        gen = torch.Generator().manual_seed(k * 100 + c)
        student = (3 * torch.randn(k, b, c, generator=gen)).to(dtype)
        teacher = (3 * torch.randn(b, c, generator=gen)).to(dtype)
        grad = torch.linspace(0.5, 2.0, k)
        tight = dtype == torch.float32
        for temperature, kl in ((1.0, False), (2.5, True)):
            ref_s = student.clone().requires_grad_(True)
            ref = m.soft_cross_entropy_reference(ref_s, teacher, temperature, kl)
            (ref * grad).sum().backward()
            got = m._forward_triton(student, teacher, temperature, kl, block)
            got_grad = m._backward_triton(grad, student, teacher, temperature, block)
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(
                got_grad, ref_s.grad, rtol=1e-4 if tight else 2e-2, atol=1e-6 if tight else 1e-3
            )
            # The public op on CPU tensors launches the same kernels, backward included.
            op_s = student.clone().requires_grad_(True)
            op = m.soft_cross_entropy(op_s, teacher, temperature, kl)
            (op * grad).sum().backward()
            default = m._forward_triton(student, teacher, temperature, kl)
            torch.testing.assert_close(op, default, rtol=0, atol=0)
            torch.testing.assert_close(op_s.grad, ref_s.grad, rtol=1e-4 if tight else 2e-2,
                                       atol=1e-6 if tight else 1e-3)
    print("ok")
    """
)


def test_triton_kernels_under_the_interpreter_match_the_reference() -> None:
    pytest.importorskip("triton")
    done = subprocess.run(
        [sys.executable, "-c", INTERPRETED],
        env={**os.environ, "TRITON_INTERPRET": "1"},
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"


COMPILED = textwrap.dedent(
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from tinyfast.kernels import soft_cross_entropy as m

    target = GPUTarget("cuda", 80, 32)
    for dtype in ("fp32", "bf16"):
        rows = {"batch": "i32", "classes": "i32", "inv_t": "fp32"}
        for kl in (False, True):
            signature = {"student_ptr": "*" + dtype, "teacher_ptr": "*" + dtype,
                         "rows_ptr": "*fp32", **rows, "KL": "constexpr", "BLOCK": "constexpr"}
            source = ASTSource(m._forward_kernel, signature, {"KL": kl, "BLOCK": 1024})
            assert triton.compile(source, target=target).asm["cubin"]
        signature = {"grad_ptr": "*fp32", "student_ptr": "*" + dtype, "teacher_ptr": "*" + dtype,
                     "out_ptr": "*" + dtype, **rows, "scale": "fp32", "BLOCK": "constexpr"}
        source = ASTSource(m._backward_kernel, signature, {"BLOCK": 1024})
        assert triton.compile(source, target=target).asm["cubin"]
    print("ok")
    """
)


def test_triton_kernels_compile_for_an_ampere_gpu(tmp_path) -> None:
    """Compiled to a cubin for sm_80 (see triton_compile): no GPU needed."""
    compile_for_ampere(COMPILED, tmp_path)


@pytest.mark.parametrize("kl", [False, True])
def test_opcheck(kl: bool) -> None:
    student, teacher = random_logits(3, 5, 4, torch.float32)
    # A transposed student: the outputs' strides must still be the ones register_fake gives.
    student = student.transpose(0, 1).contiguous().transpose(0, 1).requires_grad_(True)
    assert not student.is_contiguous()
    torch.library.opcheck(
        torch.ops.tinyfast.soft_cross_entropy.default, (student, teacher, 2.0, kl)
    )
    torch.library.opcheck(
        torch.ops.tinyfast.soft_cross_entropy_backward.default,
        (torch.rand(3), student.detach(), teacher, 2.0),
    )


def test_torch_compile_fullgraph_matches_eager() -> None:
    student, teacher = random_logits(4, 3, 6, torch.float32)
    weights = torch.tensor([1.0, 0.5, 0.25, 2.0])

    def loss(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (soft_cross_entropy(s, t, 2.0) * weights).sum()

    compiled = torch.compile(loss, fullgraph=True)
    eager_s = student.clone().requires_grad_(True)
    compiled_s = student.clone().requires_grad_(True)
    eager = loss(eager_s, teacher)
    got = compiled(compiled_s, teacher)
    eager.backward()
    got.backward()
    torch.testing.assert_close(got, eager)
    torch.testing.assert_close(compiled_s.grad, eager_s.grad)
