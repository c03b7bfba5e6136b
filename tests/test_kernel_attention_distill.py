"""``tinyfast::attention_distill_loss`` against its reference (the definition): the torch path in
this process, the Triton kernels under Triton's interpreter in a child process (the interpreter
must be switched on before the kernels are defined, and must not leak into the other tests), the op
registration (opcheck, torch.compile), memory (no L x L tensor) and garbage at padded tokens."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from tinyfast.distill.losses import attention_mse
from tinyfast.errors import ConfigError
from tinyfast.kernels import attention_distill as ad
from tinyfast.kernels._triton import interpreting, launches_triton
from tinyfast.kernels.attention_distill import (
    attention_distill_loss,
    attention_distill_loss_backward,
    attention_distill_loss_reference,
)


@dataclass(frozen=True)
class Case:
    """A batch of queries and keys: ``lengths`` real tokens per row out of ``length``."""

    lengths: tuple[int, ...]
    length: int
    heads: int
    d_s: int
    d_t: int
    left_pad: bool = False


CASES = [
    Case((37, 1, 20), 37, 2, 16, 32),  # odd batch, a row with one real token, d_s < d_t
    Case((40, 33), 40, 2, 24, 64),  # a width that is not a power of two
    Case((12, 7), 12, 1, 64, 16),  # student wider than the teacher
    Case((9, 30, 4), 30, 2, 32, 26, left_pad=True),  # padding first; teacher width 26
]
CASE_IDS = ["odd-batch-one-token", "d24-d64", "d64-d16", "left-pad-d26"]
# (value rtol, gradient tolerance relative to the largest gradient entry)
TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (1e-4, 1e-2)}

Inputs = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, float, float]
ValueAndGrads = Callable[[Inputs], tuple[Tensor, tuple[Tensor, Tensor]]]


def make_inputs(case: Case, dtype: torch.dtype, seed: int = 0) -> Inputs:
    """Random queries and keys as the capture hooks give them: [B, L, H, d] viewed as [B, H, L, d]
    (not contiguous); student ones require grad."""
    gen = torch.Generator().manual_seed(seed)
    batch = len(case.lengths)

    def rand(width: int, grad: bool) -> Tensor:
        x = torch.randn(batch, case.length, case.heads, width, generator=gen).to(dtype)
        return x.transpose(1, 2).requires_grad_(grad)

    mask = torch.zeros(batch, case.length, dtype=torch.long)
    for row, n in enumerate(case.lengths):
        if case.left_pad:
            mask[row, case.length - n:] = 1
        else:
            mask[row, :n] = 1
    return (rand(case.d_s, True), rand(case.d_s, True), rand(case.d_t, False),
            rand(case.d_t, False), mask, case.d_s**-0.5, case.d_t**-0.5)


def poisoned(inputs: Inputs, garbage: float) -> Inputs:
    """The same inputs with every padded token's query and key rows set to ``garbage``."""
    q_s, k_s, q_t, k_t, mask, scale_s, scale_t = inputs
    pad = (mask == 0)[:, None, :, None]

    def poison(x: Tensor) -> Tensor:
        out = x.detach().masked_fill(pad, garbage)
        return out.requires_grad_(x.requires_grad)

    return (poison(q_s), poison(k_s), poison(q_t), poison(k_t), mask, scale_s, scale_t)


def reference(inputs: Inputs) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    value = attention_distill_loss_reference(*inputs)
    return value, torch.autograd.grad(value, inputs[:2])


def op(inputs: Inputs) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    value = attention_distill_loss(*inputs)
    return value, torch.autograd.grad(value, inputs[:2])


def compare(actual: ValueAndGrads, case: Case, dtype: torch.dtype, garbage: float = 0.0) -> None:
    """``actual`` (on inputs whose padding holds ``garbage``) agrees with the reference."""
    inputs = make_inputs(case, dtype)
    expected_value, expected_grads = reference(inputs)
    value, grads = actual(poisoned(inputs, garbage) if garbage else inputs)
    value_rtol, grad_tol = TOLERANCES[dtype]
    assert value.dtype == torch.float32
    assert math.isfinite(value.item())
    torch.testing.assert_close(value, expected_value, rtol=value_rtol, atol=0.0)
    for grad, expected, x in zip(grads, expected_grads, inputs, strict=False):
        assert grad.dtype == x.dtype and grad.shape == x.shape
        assert torch.isfinite(grad).all()
        scale = expected.float().abs().max().item()
        torch.testing.assert_close(grad.float(), expected.float(), rtol=grad_tol,
                                   atol=grad_tol * scale)
        padded = (inputs[4] == 0)[:, None, :, None].expand_as(grad)
        assert (grad[padded] == 0).all()


# ----------------------------------------------------------------------------- torch path


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("rows", [16, ad.QUERY_ROWS])
def test_torch_path_matches_reference(
    case: Case, dtype: torch.dtype, rows: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 16 rows per tile: several tiles, the last one partial.
    monkeypatch.setattr(ad, "QUERY_ROWS", rows)
    compare(op, case, dtype)


@pytest.mark.parametrize("garbage", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_garbage_at_padded_tokens_never_reaches_value_or_gradient(garbage: float) -> None:
    compare(op, CASES[0], torch.float32, garbage)
    compare(reference, CASES[0], torch.float32, garbage)


def test_unfused_attention_mse_on_scores_is_the_same_loss() -> None:
    q_s, k_s, q_t, k_t, mask, scale_s, scale_t = make_inputs(CASES[0], torch.float32)
    unfused = attention_mse(q_s @ k_s.transpose(-1, -2) * scale_s,
                            q_t @ k_t.transpose(-1, -2) * scale_t, mask)
    fused = attention_distill_loss(q_s, k_s, q_t, k_t, mask, scale_s, scale_t)
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=0.0)


def test_teacher_gets_no_gradient_and_shapes_are_checked() -> None:
    q_s, k_s, q_t, k_t, mask, scale_s, scale_t = make_inputs(CASES[1], torch.float32)
    q_t.requires_grad_(True)
    attention_distill_loss(q_s, k_s, q_t, k_t, mask, scale_s, scale_t).backward()
    assert q_t.grad is None and q_s.grad is not None
    with pytest.raises(ConfigError, match="student has 2, teacher has 1"):
        attention_distill_loss(q_s, k_s, q_t[:, :1], k_t[:, :1], mask, scale_s, scale_t)
    with pytest.raises(ConfigError, match="attention_mask"):
        attention_distill_loss(q_s, k_s, q_t, k_t, mask[:, :3], scale_s, scale_t)


# ----------------------------------------------------------------------------- Triton kernels


def triton_failures() -> list[str]:
    """Run the Triton kernels on every case; the child process calls this under the interpreter."""
    probe = torch.empty(1)
    if not (interpreting() and launches_triton(probe) and launches_triton(probe)):
        return ["the op would not launch its Triton kernels here"]

    def blocked(inputs: Inputs) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        # 16 x 16 tiles: several query and key blocks per (batch, head), the last ones partial.
        q_s, k_s, q_t, k_t, mask, scale_s, scale_t = inputs
        real = mask != 0
        value = ad._triton_forward(q_s, k_s, q_t, k_t, real, scale_s, scale_t, block=16)
        grads = ad._triton_backward(torch.ones(()), q_s, k_s, q_t, k_t, real, scale_s, scale_t,
                                    block=16)
        return value, grads

    runs = [(fn, case, dtype, 0.0) for fn in (op, blocked) for case in CASES
            for dtype in (torch.float32, torch.bfloat16)]
    runs += [(op, CASES[0], torch.float32, math.nan), (blocked, CASES[3], torch.float32, math.inf)]
    failures = []
    for fn, case, dtype, garbage in runs:
        try:
            compare(fn, case, dtype, garbage)
        except AssertionError as exc:
            failures.append(f"{fn.__name__} {case} {dtype} garbage={garbage}: {exc}")
    return failures


def test_triton_kernels_match_reference_under_the_interpreter() -> None:
    pytest.importorskip("triton")
    script = (
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import test_kernel_attention_distill as t\n"
        "failures = t.triton_failures()\n"
        "print('\\n'.join(failures))\n"
        "sys.exit(1 if failures else 0)\n"
    )
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


# ----------------------------------------------------------------------------- registration


def test_opcheck() -> None:
    samples = [make_inputs(CASES[0], torch.float32), make_inputs(CASES[2], torch.bfloat16, seed=1)]
    for inputs in samples:
        torch.library.opcheck(attention_distill_loss, inputs)
    q_s, k_s, q_t, k_t, mask, scale_s, scale_t = make_inputs(CASES[1], torch.float32)
    detached = [x.detach() for x in (q_s, k_s, q_t, k_t)]
    torch.library.opcheck(attention_distill_loss_backward,
                          (torch.tensor(0.5), *detached, mask, scale_s, scale_t))


def test_torch_compile_fullgraph_matches_eager() -> None:
    def loss(q_s: Tensor, k_s: Tensor, q_t: Tensor, k_t: Tensor, mask: Tensor) -> Tensor:
        return 0.5 * attention_distill_loss(q_s, k_s, q_t, k_t, mask, 0.25, 0.2) + 1.0

    q_s, k_s, q_t, k_t, mask, _, _ = make_inputs(CASES[0], torch.float32)
    eager = loss(q_s, k_s, q_t, k_t, mask)
    eager_grads = torch.autograd.grad(eager, (q_s, k_s))
    compiled = torch.compile(loss, fullgraph=True)(q_s, k_s, q_t, k_t, mask)
    compiled_grads = torch.autograd.grad(compiled, (q_s, k_s))
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=0.0)
    for got, want in zip(compiled_grads, eager_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


# ----------------------------------------------------------------------------- memory


class LargestTensor(TorchDispatchMode):
    """Records the most elements of any tensor an aten op returns, looking inside our ops too."""

    IMPLEMENTATIONS = {
        "tinyfast::attention_distill_loss": ad._loss_impl,
        "tinyfast::attention_distill_loss_backward": ad._loss_backward_impl,
    }

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        impl = self.IMPLEMENTATIONS.get(func._schema.name)
        if impl is not None:
            # A custom op runs with the mode switched off; run its body under the mode instead.
            with self:
                return impl(*args, **kwargs)
        out = func(*args, **kwargs)
        for leaf in tree_leaves(out):
            if isinstance(leaf, Tensor):
                self.largest = max(self.largest, leaf.numel())
        return out


@pytest.mark.skipif(interpreting(), reason="measures the torch path")
def test_no_length_by_length_tensor_at_long_sequences() -> None:
    length = 2048
    inputs = make_inputs(Case((1500,), length, 2, 32, 32), torch.float32)
    for fn in (op, reference):
        with LargestTensor() as probe:
            fn(inputs)
        if fn is op:
            # One tile: B * H * QUERY_ROWS * L scores, an eighth of one head's L x L here.
            assert probe.largest < length * length
            assert probe.largest <= 2 * ad.QUERY_ROWS * length
        else:
            assert probe.largest >= length * length
