"""The fused ops inside the trainers: ``distill task`` through the command line gives the same
losses with the kernels on (their Triton kernels, in the interpreter on this CPU) and off
(``--no-fused-kernels``); and the GPU benchmark script runs end to end at toy size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("triton")

BENCHES = Path(__file__).resolve().parents[1] / "benches"


def run_distill_task(out: Path, teacher: Path, demo_data: dict[str, Path], student: Path,
                     *extra: str) -> dict:
    argv = [sys.executable, "-m", "tinyfast", "distill", "task", "--teacher", str(teacher),
            "--student", str(student), "--train", str(demo_data["train"]), "--dev",
            str(demo_data["dev"]), "--out", str(out), "--intermediate-epochs", "1",
            "--prediction-epochs", "1", "--max-steps", "2", "--batch-size", "16", "--device",
            "cpu", "--threads", "1", "--no-progress", *extra]
    # The interpreter runs Triton kernels on CPU tensors; it must be on before they are defined.
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "metrics.json").read_text(encoding="utf-8"))


def train_log(work: Path) -> list[dict]:
    lines = work.read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == "train"]


def test_distill_task_losses_are_the_same_with_and_without_the_kernels(
        tmp_path, finetuned_teacher, demo_data, tiny_student_json):
    teacher = finetuned_teacher[0] / "model"
    on = run_distill_task(tmp_path / "on", teacher, demo_data, tiny_student_json)
    off = run_distill_task(tmp_path / "off", teacher, demo_data, tiny_student_json,
                           "--no-fused-kernels")
    assert on["fused_kernels"] is True and off["fused_kernels"] is False
    for stage, keys in (("intermediate", ("loss", "emb", "hid", "att")), ("prediction", ("loss",))):
        fused = train_log(tmp_path / "on" / "work" / stage / "train_log.jsonl")
        plain = train_log(tmp_path / "off" / "work" / stage / "train_log.jsonl")
        assert [r["step"] for r in fused] == [r["step"] for r in plain] == [2]
        for a, b in zip(fused, plain, strict=True):
            for key in keys:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (stage, key)
    assert on["best"]["accuracy"] == off["best"]["accuracy"]


def test_the_kernel_benchmark_runs_at_toy_size(tmp_path):
    out = tmp_path / "kernels.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCHES / "kernels_speed.py"), "--toy",
                           "--repeats", "1", "--out", str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text(encoding="utf-8"))
    assert result["toy"] is True
    ops = {case["op"] for case in result["cases"]}
    assert ops == {"attention_distill_loss", "soft_cross_entropy", "exit_entropy"}
    for case in result["cases"]:
        assert case["max_abs_diff"] < 1e-4, case
        assert case["fused"]["ms"] > 0 and case["reference"]["ms"] > 0
    if not result["device"].startswith("cpu"):
        return
    # Without a GPU the kernels ran in the interpreter and no memory figure is claimed.
    assert result["interpreted"] is True and result["triton"] is True
    assert all(c["fused"]["peak_bytes"] is None for c in result["cases"])
