"""The fused distillation ops (tinyfast.kernels) against their unfused pure-torch references:
time of forward + backward and peak device memory, side by side in one run, JSON out.

Made for a GPU: there the ops launch their Triton kernels and memory is CUDA's peak allocation.
Without one it runs the same kernels in Triton's interpreter on the CPU at toy sizes (``--toy``,
the default there): that proves the script and the kernels run and agree with the references, but
its times measure the interpreter, not a kernel, and it records no memory figure.

    python benches/kernels_speed.py --out benches/results/kernels_speed.json          # a GPU
    python benches/kernels_speed.py --toy --out bench-results/kernels_speed_toy.json  # no GPU
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

# (batch, heads, length, student head dim, teacher head dim): TinyBERT-4 from a BERT-base or
# MiniLM teacher at growing lengths, where the L x L score tensors start to dominate.
ATTENTION_SHAPES = [(32, 12, 128, 26, 64), (16, 12, 512, 26, 64), (4, 12, 2048, 26, 64)]
ATTENTION_TOY = [(2, 2, 48, 16, 32)]
# (branches, rows, classes): FastBERT's stage 2 over all exits, and a 1000-class head.
SOFT_CE_SHAPES = [(1, 256, 2), (11, 256, 6), (5, 256, 1000)]
SOFT_CE_TOY = [(3, 8, 6)]
ENTROPY_SHAPES = [(4096, 2), (4096, 6), (4096, 1000)]
ENTROPY_TOY = [(16, 6)]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON file to write")
    p.add_argument("--toy", action="store_true",
                   help="tiny shapes (the default without a GPU, where the interpreter runs)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per case (median kept)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.repeats < 1:
        print("kernels_speed: --repeats must be >= 1", file=sys.stderr)
        return 2
    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        # Before the first tinyfast.kernels import: Triton reads it when kernels are decorated.
        os.environ["TRITON_INTERPRET"] = "1"
    from tinyfast.kernels._triton import launches_triton

    device = torch.device("cuda" if cuda else "cpu")
    toy = args.toy or not cuda
    probe = torch.zeros(1, device=device)
    cases = (attention_cases(device, toy, args.repeats) + soft_ce_cases(device, toy, args.repeats)
             + entropy_cases(device, toy, args.repeats))
    result = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "triton": launches_triton(probe),
        "interpreted": not cuda,
        "toy": toy,
        "measures": ("median ms of forward + backward, and peak CUDA memory above the inputs"
                     if cuda else "interpreter times on the CPU (not kernel speed); no memory"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cases": cases,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    for case in cases:
        print(f"{case['op']:24s} {str(case['shape']):28s} fused {case['fused']['ms']:9.2f} ms  "
              f"reference {case['reference']['ms']:9.2f} ms  max|diff| {case['max_abs_diff']:.2e}")
    return 0


def measure(run: Callable[[], list[Any]], device: Any, repeats: int) -> tuple[dict, list[Any]]:
    """Median wall time of ``run`` (warmed up once) and, on CUDA, its peak memory above what was
    allocated before it started."""
    import torch

    outputs = run()  # warm-up: compilation, caches
    times = []
    peak = None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        start = time.perf_counter()
        outputs = run()
        if device.type == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
        times.append((time.perf_counter() - start) * 1000)
    return {"ms": statistics.median(times), "peak_bytes": peak}, outputs


def compare(fused: list[Any], reference: list[Any]) -> float:
    return max(float((a.float() - b.float()).abs().max()) for a, b in zip(fused, reference,
                                                                           strict=True))


def attention_cases(device: Any, toy: bool, repeats: int) -> list[dict]:
    import torch

    from tinyfast.kernels.attention_distill import (
        attention_distill_loss,
        attention_distill_loss_reference,
    )

    out = []
    for b, h, length, d_s, d_t in ATTENTION_TOY if toy else ATTENTION_SHAPES:
        gen = torch.Generator().manual_seed(0)
        q_s, k_s = (torch.randn(b, h, length, d_s, generator=gen).to(device).requires_grad_()
                    for _ in range(2))
        q_t, k_t = (torch.randn(b, h, length, d_t, generator=gen).to(device) for _ in range(2))
        lengths = torch.randint(length // 2, length + 1, (b,), generator=gen)
        mask = (torch.arange(length)[None, :] < lengths[:, None]).long().to(device)
        scales = (d_s**-0.5, d_t**-0.5)

        def run(loss_fn, q_s=q_s, k_s=k_s, q_t=q_t, k_t=k_t, mask=mask, scales=scales):
            def go():
                loss = loss_fn(q_s, k_s, q_t, k_t, mask, *scales)
                grads = torch.autograd.grad(loss, (q_s, k_s))
                return [loss.detach(), *grads]
            return go

        fused, f_out = measure(run(attention_distill_loss), device, repeats)
        reference, r_out = measure(run(attention_distill_loss_reference), device, repeats)
        out.append({"op": "attention_distill_loss", "shape": [b, h, length, d_s, d_t],
                    "fused": fused, "reference": reference,
                    "max_abs_diff": compare(f_out, r_out)})
    return out


def soft_ce_cases(device: Any, toy: bool, repeats: int) -> list[dict]:
    import torch

    from tinyfast.kernels.soft_cross_entropy import (
        soft_cross_entropy,
        soft_cross_entropy_reference,
    )

    out = []
    for k, rows, classes in SOFT_CE_TOY if toy else SOFT_CE_SHAPES:
        gen = torch.Generator().manual_seed(1)
        student = torch.randn(k, rows, classes, generator=gen).to(device).requires_grad_()
        teacher = torch.randn(rows, classes, generator=gen).to(device)

        def run(loss_fn, student=student, teacher=teacher):
            def go():
                losses = loss_fn(student, teacher, 2.0)
                (grad,) = torch.autograd.grad(losses.sum(), (student,))
                return [losses.detach(), grad]
            return go

        fused, f_out = measure(run(soft_cross_entropy), device, repeats)
        reference, r_out = measure(run(soft_cross_entropy_reference), device, repeats)
        out.append({"op": "soft_cross_entropy", "shape": [k, rows, classes], "fused": fused,
                    "reference": reference, "max_abs_diff": compare(f_out, r_out)})
    return out


def entropy_cases(device: Any, toy: bool, repeats: int) -> list[dict]:
    import torch

    from tinyfast.kernels.exit_entropy import exit_entropy, exit_entropy_reference

    out = []
    for rows, classes in ENTROPY_TOY if toy else ENTROPY_SHAPES:
        gen = torch.Generator().manual_seed(2)
        logits = (3 * torch.randn(rows, classes, generator=gen)).to(device)

        def run(fn, logits=logits):
            def go():
                probs, uncertainty, exits = fn(logits, 0.3)
                return [probs, uncertainty, exits.float()]
            return go

        fused, f_out = measure(run(exit_entropy), device, repeats)
        reference, r_out = measure(run(exit_entropy_reference), device, repeats)
        out.append({"op": "exit_entropy", "shape": [rows, classes], "fused": fused,
                    "reference": reference, "max_abs_diff": compare(f_out, r_out)})
    return out


if __name__ == "__main__":
    sys.exit(main())
