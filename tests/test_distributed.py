"""The training commands under ``torchrun``: two gloo processes on the CPU end where one process
ends with the same global ``--batch-size`` (same steps, evaluations, best checkpoint and weights),
and only rank 0 prints a summary and writes files.

Every run goes through the command line. The tiny models have no dropout, because dropout draws
differ between one process and two (the RNG is seeded per rank); without it a step sees the same
rows either way and DDP averages the two halves' gradients.

The intermediate losses of ``distill general`` and step 1 of ``distill task`` are means over
tokens, while the loop weights each share of a step (a rank's rows, an accumulation step) by its
rows. Shares with different token counts therefore weigh tokens a little differently than one
unsplit batch: two processes equal one process with ``--grad-accum 2`` (the same two shares) to
float rounding, and one process without accumulation only to LOSS_TOLERANCE."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from safetensors.torch import load_file  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from conftest import (  # noqa: E402
    MAX_LENGTH,
    STUDENT_SHAPE,
    TEACHER_SHAPE,
    build_tokenizer,
    demo_words,
)

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
# 96 training rows (demo_data) at 16 a step: 6 steps an epoch, 8 rows per rank under torchrun.
TRAINING = ["--batch-size", "16", "--save-every", "0", "--device", "cpu", "--threads", "1",
            "--no-progress"]
SCHEDULE = ["--lr", "1e-3", "--warmup", "0"]
ROUNDING = 1e-5  # float rounding: gloo's sum of two halves vs one batch's sum
LOSS_TOLERANCE = 1e-4  # token-averaged losses split into shares (see the module docstring)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 4-layer BERT encoder without dropout, with the demo task's tokenizer."""
    from transformers import BertConfig, BertModel

    tokenizer = build_tokenizer(demo_words())
    config = BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                        type_vocab_size=2, **TEACHER_SHAPE, **NO_DROPOUT)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ddp-teacher")
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def student_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ddp-student") / "student.json"
    path.write_text(json.dumps({**STUDENT_SHAPE, **NO_DROPOUT}), encoding="utf-8")
    return path


def _printed_summaries(stdout: str) -> list[dict[str, Any]]:
    """Every JSON object printed on stdout; any other text there fails the test."""
    decoder = json.JSONDecoder()
    found, pos = [], 0
    while True:
        while pos < len(stdout) and stdout[pos].isspace():
            pos += 1
        if pos == len(stdout):
            return found
        value, pos = decoder.raw_decode(stdout, pos)
        assert isinstance(value, dict), stdout
        found.append(value)


def _run(args: list[str], out: Path, processes: int) -> dict[str, Any]:
    """``python -m tinyfast ARGS --out OUT``, or the same under torchrun with ``processes``
    gloo ranks. Checks that it exits 0 and prints exactly one summary, the one it wrote to
    ``OUT/metrics.json``, and returns that metrics.json."""
    if processes == 1:
        launch = [sys.executable, "-m", "tinyfast"]
    else:
        launch = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                  str(processes), "--standalone", "-m", "tinyfast"]
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    proc = subprocess.run([*launch, *args, "--out", str(out)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
    printed = _printed_summaries(proc.stdout)
    assert len(printed) == 1, f"{processes} process(es) printed {len(printed)} summaries"
    written = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert written["best"] is not None and written["history"]
    assert printed[0]["best"] == written["best"]
    return written


def _assert_same_evaluations(expected: dict[str, Any], got: dict[str, Any], steps: list[int],
                             loss_tolerance: float) -> None:
    """Evaluations at ``steps`` in both runs, with equal accuracy and F1, losses within
    ``loss_tolerance``, and the same evaluation chosen as best."""
    assert [h["step"] for h in expected["history"]] == steps
    assert [h["step"] for h in got["history"]] == steps
    for one, two in zip(expected["history"], got["history"], strict=True):
        assert one.keys() == two.keys()
        for key, value in one.items():
            if "loss" in key:
                assert two[key] == pytest.approx(value, abs=loss_tolerance), (one, two)
            else:
                assert two[key] == value, (key, one, two)
    assert got["best"]["step"] == expected["best"]["step"]
    assert got["best"] == got["history"][steps.index(got["best"]["step"])]


def _assert_same_weights(expected: Path, got: Path, atol: float) -> None:
    """The two runs' saved models (``OUT/model/model.safetensors``) agree within ``atol``."""
    a = load_file(str(expected / "model" / "model.safetensors"))
    b = load_file(str(got / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name, tensor in a.items():
        torch.testing.assert_close(b[name], tensor, rtol=0, atol=atol, msg=name)


def _eval_lines(work: Path) -> list[dict[str, Any]]:
    """The evaluations in a run's train_log.jsonl, without their "event" key."""
    lines = (work / "train_log.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    return [{k: v for k, v in r.items() if k != "event"} for r in records if r["event"] == "eval"]


@pytest.fixture(scope="module")
def finetune_runs(tmp_path_factory: pytest.TempPathFactory, teacher_dir: Path,
                  demo_data: dict[str, Path]) -> Path:
    """``finetune`` with a dev evaluation after each of 2 epochs, in ``one/`` on one process and
    in ``two/`` under torchrun; the first also serves as ``distill task``'s teacher."""
    root = tmp_path_factory.mktemp("ddp-finetune")
    args = ["finetune", "--teacher", str(teacher_dir), "--train", str(demo_data["train"]),
            "--dev", str(demo_data["dev"]), "--max-length", str(MAX_LENGTH), "--epochs", "2",
            *SCHEDULE, *TRAINING]
    _run(args, root / "one", 1)
    _run(args, root / "two", 2)
    return root


def _metrics(run: Path) -> dict[str, Any]:
    return json.loads((run / "metrics.json").read_text(encoding="utf-8"))


def test_finetune_under_torchrun_matches_one_process(finetune_runs):
    single, ddp = _metrics(finetune_runs / "one"), _metrics(finetune_runs / "two")
    assert (single["world_size"], ddp["world_size"]) == (1, 2)
    assert single["steps"] == ddp["steps"] == 12
    assert {"accuracy", "macro_f1"} <= set(ddp["best"])
    _assert_same_evaluations(single, ddp, [6, 12], ROUNDING)
    _assert_same_weights(finetune_runs / "one", finetune_runs / "two", ROUNDING)
    # Rank 0 alone logs: one eval line per evaluation, the same as the history.
    assert _eval_lines(finetune_runs / "two" / "work") == ddp["history"]


def test_distill_general_under_torchrun_matches_one_process(
        tmp_path, teacher_dir, student_json, demo_data):
    # 128 corpus lines, a quarter held out: 96 training rows, the held-out loss every 3 steps.
    args = ["distill", "general", "--teacher", str(teacher_dir), "--corpus",
            str(demo_data["corpus"]), "--student", str(student_json), "--max-length",
            str(MAX_LENGTH), "--heldout", "0.25", "--epochs", "1", "--eval-every", "3",
            *SCHEDULE, *TRAINING]
    single = _run(args, tmp_path / "one", 1)
    halves = _run([*args, "--grad-accum", "2"], tmp_path / "one-accum", 1)
    ddp = _run(args, tmp_path / "two", 2)
    assert single["heldout_rows"] == ddp["heldout_rows"] == 32
    assert single["steps"] == halves["steps"] == ddp["steps"] == 6
    _assert_same_evaluations(halves, ddp, [3, 6], ROUNDING)
    _assert_same_weights(tmp_path / "one-accum", tmp_path / "two", ROUNDING)
    _assert_same_evaluations(single, ddp, [3, 6], LOSS_TOLERANCE)
    assert _eval_lines(tmp_path / "two" / "work") == ddp["history"]


def test_distill_task_under_torchrun_matches_one_process(
        tmp_path, finetune_runs, student_json, demo_data):
    args = ["distill", "task", "--teacher", str(finetune_runs / "one" / "model"), "--student",
            str(student_json), "--train", str(demo_data["train"]), "--dev",
            str(demo_data["dev"]), "--intermediate-epochs", "1", "--intermediate-lr", "1e-3",
            "--prediction-epochs", "2", "--prediction-lr", "1e-3", *TRAINING]
    single = _run(args, tmp_path / "one", 1)
    halves = _run([*args, "--grad-accum", "2"], tmp_path / "one-accum", 1)
    ddp = _run(args, tmp_path / "two", 2)
    for metrics in (single, halves, ddp):
        assert metrics["stages"]["intermediate"]["steps"] == 6
        assert metrics["stages"]["prediction"]["steps"] == 12
    _assert_same_evaluations(halves, ddp, [6, 12], ROUNDING)
    _assert_same_weights(tmp_path / "one-accum", tmp_path / "two", ROUNDING)
    _assert_same_evaluations(single, ddp, [6, 12], LOSS_TOLERANCE)
    assert _eval_lines(tmp_path / "two" / "work" / "prediction") == ddp["history"]


def test_selfdistill_under_torchrun_matches_one_process(tmp_path, finetune_runs, demo_data):
    # 128 corpus lines, a quarter held out: 96 training rows, the held-out KL every 3 steps. The
    # KL is a mean over rows, so two processes equal one to float rounding.
    args = ["selfdistill", str(finetune_runs / "one" / "model"), "--unlabeled",
            str(demo_data["corpus"]), "--heldout", "0.25", "--epochs", "1", "--eval-every", "3",
            *SCHEDULE, *TRAINING]
    single = _run(args, tmp_path / "one", 1)
    ddp = _run(args, tmp_path / "two", 2)
    assert (single["world_size"], ddp["world_size"]) == (1, 2)
    assert single["steps"] == ddp["steps"] == 6
    assert [h["step"] for h in single["history"]] == [h["step"] for h in ddp["history"]] == [3, 6]
    for one, two in zip(single["history"], ddp["history"], strict=True):
        assert one == pytest.approx(two, abs=ROUNDING)
    a = load_file(str(tmp_path / "one" / "model" / "branches.safetensors"))
    b = load_file(str(tmp_path / "two" / "model" / "branches.safetensors"))
    # FastBERT branches after layers 1..3: 7 linear layers each, a weight and a bias apiece.
    assert a.keys() == b.keys() and len(a) == 3 * 7 * 2
    for name, tensor in a.items():
        torch.testing.assert_close(b[name], tensor, rtol=0, atol=ROUNDING, msg=name)
    assert _eval_lines(tmp_path / "two" / "work") == ddp["history"]
