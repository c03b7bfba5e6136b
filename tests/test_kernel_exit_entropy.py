"""tinyfast::exit_entropy: the reference against hand-computed values, the op's torch path and its
Triton kernel (run by Triton's interpreter in a subprocess) against the reference, the op's
registration (opcheck) and torch.compile."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")

from tinyfast.kernels.exit_entropy import exit_entropy, exit_entropy_reference  # noqa: E402
from tinyfast.models.branches import normalized_entropy  # noqa: E402
from triton_compile import compile_for_ampere  # noqa: E402

LN2, LN3 = math.log(2), math.log(3)


def hand_logits() -> torch.Tensor:
    """Two rows of three classes: p = (1/4, 1/4, 1/2) and the uniform (1/3, 1/3, 1/3)."""
    return torch.tensor([[1.0, 1.0, 2.0], [5.0, 5.0, 5.0]], dtype=torch.float64).log()


def test_reference_hand_values() -> None:
    probs, uncertainty, exits = exit_entropy_reference(hand_logits(), 0.95)
    torch.testing.assert_close(
        probs, torch.tensor([[0.25, 0.25, 0.5], [1 / 3, 1 / 3, 1 / 3]], dtype=torch.float64)
    )
    # Row 0: H = 2 (1/4 ln 4) + 1/2 ln 2 = 3/2 ln 2, u = 3/2 ln 2 / ln 3 = 0.946; row 1: H = ln 3.
    expected = torch.tensor([1.5 * LN2 / LN3, 1.0], dtype=torch.float64)
    torch.testing.assert_close(uncertainty, expected)
    assert exits.tolist() == [True, False]  # 0.946 < 0.95 exits, the uniform row never does
    assert exit_entropy_reference(hand_logits(), 0.0)[2].tolist() == [False, False]
    assert exit_entropy_reference(hand_logits(), 0.9)[2].tolist() == [False, False]


def test_reference_hand_gradients() -> None:
    logits = hand_logits().requires_grad_(True)
    _, uncertainty, _ = exit_entropy_reference(logits, 0.5)
    uncertainty.sum().backward()
    # d u / d z_j = -p_j (ln p_j + H) / ln 3. Row 0: ln p + H = (-1/2, -1/2, 1/2) ln 2, so
    # (1/8, 1/8, -1/4) ln 2 / ln 3. The uniform row is the maximum of the entropy: gradient 0.
    expected = torch.tensor([[0.125, 0.125, -0.25], [0.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(logits.grad, expected * torch.tensor([[LN2 / LN3], [1.0]]))
    # d p_0 / d z = p_0 (delta_0j - p_j): row 0 gives 1/4 (3/4, -1/4, -1/2).
    logits.grad = None
    probs, _, _ = exit_entropy_reference(logits, 0.5)
    probs[0, 0].backward()
    torch.testing.assert_close(
        logits.grad[0], torch.tensor([3 / 16, -1 / 16, -1 / 8], dtype=torch.float64)
    )


def test_op_equals_hand_values_and_normalized_entropy_uses_it() -> None:
    got = exit_entropy(hand_logits(), 0.95)
    want = exit_entropy_reference(hand_logits(), 0.95)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # Any leading shape, computed in float32 as before.
    logits = torch.randn(2, 3, 4, dtype=torch.float64)
    got = normalized_entropy(logits)
    assert got.shape == (2, 3) and got.dtype == torch.float32
    want = exit_entropy_reference(logits.float().reshape(6, 4), 0.0)[1].reshape(2, 3)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert normalized_entropy(torch.zeros(5)).item() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("shape", "speed", "message"),
    [
        ((3, 4), -0.1, "speed"),
        ((3, 4), 1.5, "speed"),
        ((3, 4), math.nan, "speed"),
        ((3, 1), 0.5, "at least 2 classes"),
        ((4,), 0.5, "rows, classes"),
        ((2, 3, 4), 0.5, "rows, classes"),
    ],
)
def test_bad_inputs_raise_one_line_value_errors(
    shape: tuple[int, ...], speed: float, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as info:
        exit_entropy(torch.zeros(shape), speed)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=message):
        exit_entropy_reference(torch.zeros(shape), speed)


def random_logits(rows: int, classes: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(rows, classes, generator=gen)
    logits[0] = 0.0  # one uniform row: uncertainty 1, a zero entropy gradient
    return logits.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("rows", "classes"), [(5, 2), (7, 6), (3, 1000)])
def test_torch_path_matches_reference_values_and_gradients(
    rows: int, classes: int, dtype: torch.dtype
) -> None:
    logits = random_logits(rows, classes, dtype)
    gen = torch.Generator().manual_seed(1)
    grad_probs = torch.randn(rows, classes, generator=gen).to(dtype)
    grad_uncertainty = torch.randn(rows, generator=gen)
    tight = dtype == torch.float32
    got_z = logits.clone().requires_grad_(True)
    ref_z = logits.clone().requires_grad_(True)
    got = exit_entropy(got_z, 0.6)
    ref = exit_entropy_reference(ref_z, 0.6)
    assert got[0].dtype == dtype and got[1].dtype == torch.float32 and got[2].dtype == torch.bool
    torch.testing.assert_close(got[0], ref[0], rtol=1e-6 if tight else 1e-2, atol=1e-7)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-6, atol=1e-6)
    assert torch.equal(got[2], ref[2])
    assert not got[2].requires_grad
    for outputs in (got, ref):
        ((outputs[0] * grad_probs).sum() + (outputs[1] * grad_uncertainty).sum()).backward()
    assert got_z.grad.dtype == dtype
    torch.testing.assert_close(got_z.grad, ref_z.grad, rtol=1e-5 if tight else 1e-2,
                               atol=1e-6 if tight else 1e-3)
    # Uncertainty alone (the probabilities unused) also back-propagates.
    got_z.grad = None
    exit_entropy(got_z, 0.6)[1].sum().backward()
    assert torch.isfinite(got_z.grad).all()


INTERPRETED = textwrap.dedent(
    """
    import torch
    from tinyfast.kernels import exit_entropy as m

    assert m.launches_triton(torch.zeros(1)), "the op would not launch the kernel"
    cases = [  # (N, C, block, dtype): a block smaller than C makes the kernel loop
        (3, 2, None, torch.float32),
        (4, 7, 4, torch.float32),
        (2, 1000, None, torch.float32),
        (3, 37, 8, torch.bfloat16),
    ]
    for n, c, block, dtype in cases:
        gen = torch.Generator().manual_seed(n * 100 + c)
        logits = (3 * torch.randn(n, c, generator=gen)).to(dtype)
        logits[0] = 1.0  # a uniform row
        tight = dtype == torch.float32
        for speed in (0.0, 0.4, 0.8, 1.0):
            probs, uncertainty, exits = m._exit_entropy_triton(logits, speed, block)
            ref = m.exit_entropy_reference(logits, speed)
            # bf16 probabilities: the interpreter truncates float32 -> bfloat16, 1 ulp off torch.
            torch.testing.assert_close(probs, ref[0], rtol=1e-5 if tight else 1e-2, atol=1e-6)
            torch.testing.assert_close(uncertainty, ref[1], rtol=1e-5, atol=1e-6)
            near = (ref[1] - speed).abs() < 1e-5
            assert torch.equal(exits[~near], ref[2][~near]), (exits, ref[2])
            # The public op on CPU tensors launches the same kernel.
            op = m.exit_entropy(logits, speed)
            default = m._exit_entropy_triton(logits, speed)
            for a, b in zip(op, default):
                assert torch.equal(a, b)
    print("ok")
    """
)


def test_triton_kernel_under_the_interpreter_matches_the_reference() -> None:
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
    from tinyfast.kernels import exit_entropy as m

    for dtype in ("fp32", "bf16"):
        signature = {"logits_ptr": "*" + dtype, "probs_ptr": "*" + dtype,
                     "uncertainty_ptr": "*fp32", "exits_ptr": "*i1", "classes": "i32",
                     "inv_log_c": "fp32", "speed": "fp32", "BLOCK": "constexpr"}
        source = ASTSource(m._exit_entropy_kernel, signature, {"BLOCK": 1024})
        assert triton.compile(source, target=GPUTarget("cuda", 80, 32)).asm["cubin"]
    print("ok")
    """
)


def test_triton_kernel_compiles_for_an_ampere_gpu(tmp_path) -> None:
    """Compiled to a cubin for sm_80 (see triton_compile): no GPU needed."""
    compile_for_ampere(COMPILED, tmp_path)


def test_opcheck() -> None:
    logits = random_logits(6, 5, torch.float32).requires_grad_(True)
    torch.library.opcheck(torch.ops.tinyfast.exit_entropy.default, (logits, 0.5))


def test_torch_compile_fullgraph_matches_eager() -> None:
    logits = random_logits(5, 4, torch.float32)

    def regulariser(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs, uncertainty, exits = exit_entropy(z, 0.5)
        return probs.square().sum() + uncertainty.sum(), exits

    compiled = torch.compile(regulariser, fullgraph=True)
    eager_z = logits.clone().requires_grad_(True)
    compiled_z = logits.clone().requires_grad_(True)
    eager, eager_exits = regulariser(eager_z)
    got, got_exits = compiled(compiled_z)
    eager.backward()
    got.backward()
    torch.testing.assert_close(got, eager)
    assert torch.equal(got_exits, eager_exits)
    torch.testing.assert_close(compiled_z.grad, eager_z.grad)
