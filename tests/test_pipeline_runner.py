"""``tinyfast pipeline`` on the tiny random teacher and the demo task (seconds): every stage end to
end, skip on rerun, ``--from``, a changed setting, a killed stage, and recipe errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")

from safetensors.torch import load_file  # noqa: E402

from test_cli import one_error_line  # noqa: E402
from tinyfast import cli  # noqa: E402
from tinyfast.bench.plan import tinyfast_name  # noqa: E402
from tinyfast.errors import ConfigError  # noqa: E402
from tinyfast.exits import chosen_point  # noqa: E402
from tinyfast.pipeline.recipe import DEFAULTS, STAGES, Recipe, load_recipe  # noqa: E402
from tinyfast.pipeline.runner import run_pipeline  # noqa: E402


def tiny_recipe(student_json: Path, **changes: dict) -> dict:
    recipe = {
        "run": {"max_length": 32, "threads": 1},
        "finetune": {"epochs": 2.0, "lr": 1e-3, "batch_size": 16, "warmup": 0.0},
        "general": {"student": str(student_json), "epochs": 1.0, "lr": 1e-3,
                    "batch_size": 16, "eval_every": 3, "heldout": 0.25},
        "task": {"student": str(student_json), "intermediate_epochs": 1.0,
                 "intermediate_lr": 1e-3, "prediction_epochs": 1.0, "prediction_lr": 1e-3,
                 "batch_size": 16},
        "augment": {"enabled": True, "n": 2},
        "selfdistill": {"branch": "linear", "epochs": 2.0, "lr": 1e-2, "batch_size": 16},
        "export": {"residual_layers": 1},
        "evaluate": {"speeds": [0.0, 0.5, 1.0]},
        # The engines without a model-specific preparation step: seconds, not minutes.
        "bench": {"contenders": ["torch_fp32", "tinyfast_int8"], "speeds": [0.0, 0.5],
                  "rounds": 1, "latency_rows": 8, "max_rows": 24},
        "report": {"plots": False},
    }
    for stage, values in changes.items():
        recipe.setdefault(stage, {}).update(values)
    return recipe


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(json.dumps(recipe), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_teacher_dir, demo_data, tiny_student_json):
    root = tmp_path_factory.mktemp("pipeline")
    recipe = write_recipe(root / "recipe.json", tiny_recipe(tiny_student_json))
    out = root / "out"
    summary = run_pipeline(str(tiny_teacher_dir), demo_data["train"], demo_data["dev"], out,
                           corpus=demo_data["corpus"], recipe=recipe, progress=False)
    return root, out, recipe, summary


def test_every_stage_runs_and_leaves_its_artifact(first_run):
    _, out, _, summary = first_run
    status = {name: s["status"] for name, s in summary["stages"].items()}
    assert status == dict.fromkeys(STAGES, "ran")
    assert summary["artifacts"] == {
        "finetune": "finetune/model", "augment": "augment/train.tsv",
        "general": "general/model", "task": "task/model", "selfdistill": "selfdistill/model",
        "export": "export/bundle", "evaluate": "evaluate/curve.json", "bench": "bench/bench.json",
        "report": "report/report.md"}
    # Task distillation and self-distillation read the augmented rows: 96 rows, 2 variants each.
    augmented = (out / "augment" / "train.tsv").read_text(encoding="utf-8").splitlines()
    assert len(augmented) - 1 == 3 * 96
    task = json.loads((out / "task" / "metrics.json").read_text(encoding="utf-8"))
    assert task["train"] == str(out / "augment" / "train.tsv") and task["train_rows"] == 3 * 96
    bench = json.loads((out / "bench" / "bench.json").read_text(encoding="utf-8"))
    # The recipe's speeds and the one evaluate chose on the dev set.
    curve = json.loads((out / "evaluate" / "curve.json").read_text(encoding="utf-8"))
    chosen = chosen_point(curve["points"])
    measured = {n for n, rec in bench["contenders"].items() if "accuracy" in rec}
    assert measured == {"torch_fp32", *(tinyfast_name(s) for s in {0.0, 0.5, chosen["speed"]})}
    assert bench["data"]["rows"] == 24 and bench["settings"]["rounds"] == 1
    assert "| bench |" in (out / "report" / "report.md").read_text(encoding="utf-8")
    # The int8 export calibrated on the self-distillation text (the augmented rows).
    bundle = json.loads((out / "export" / "bundle" / "tinyfast.json").read_text("utf-8"))
    assert bundle["smoothing"] is True and bundle["residual_layers"] == [0]
    assert bundle["source"]["calibration"]["file"] == str(out / "augment" / "train.tsv")
    assert [p["speed"] for p in curve["points"]] == [0.0, 0.5, 1.0]
    assert curve["points"][0]["mean_exit_layer"] == 2.0  # the tiny student has 2 layers
    results = summary["results"]
    assert 0 <= results["teacher_dev_accuracy"] <= 1
    assert results["student_dev_accuracy"] is not None
    assert json.loads((out / "pipeline" / "summary.json").read_text("utf-8")) == summary


def test_a_rerun_skips_every_unchanged_stage(first_run, tiny_teacher_dir, demo_data):
    _, out, recipe, _ = first_run
    before = (out / "task" / "model" / "model.safetensors").stat().st_mtime_ns
    summary = run_pipeline(str(tiny_teacher_dir), demo_data["train"], demo_data["dev"], out,
                           corpus=demo_data["corpus"], recipe=recipe, progress=False)
    assert {s["status"] for s in summary["stages"].values()} == {"skipped"}
    assert (out / "task" / "model" / "model.safetensors").stat().st_mtime_ns == before
    assert summary["results"]["int8_curve"]


def test_a_changed_setting_reruns_its_stage_and_the_later_ones(
        first_run, tiny_teacher_dir, demo_data, tiny_student_json):
    root, out, _, _ = first_run
    changed = write_recipe(root / "changed.json", tiny_recipe(
        tiny_student_json, selfdistill={"lr": 5e-3}))
    summary = run_pipeline(str(tiny_teacher_dir), demo_data["train"], demo_data["dev"], out,
                           corpus=demo_data["corpus"], recipe=changed, progress=False)
    status = {name: s["status"] for name, s in summary["stages"].items()}
    assert status == {"finetune": "skipped", "augment": "skipped", "general": "skipped",
                      "task": "skipped", "selfdistill": "ran", "export": "ran",
                      "evaluate": "ran", "bench": "ran", "report": "ran"}


def test_from_reruns_that_stage_and_the_later_ones(first_run, tiny_teacher_dir, demo_data,
                                                   monkeypatch):
    root, out, recipe, _ = first_run
    (root / "elsewhere").mkdir(exist_ok=True)
    monkeypatch.chdir(root / "elsewhere")  # OUT given relative and through "..", as from a shell
    argv = ["pipeline", "--teacher", str(tiny_teacher_dir), "--train", str(demo_data["train"]),
            "--dev", str(demo_data["dev"]), "--corpus", str(demo_data["corpus"]), "--out",
            f"../{out.name}", "--recipe", str(recipe), "--no-progress"]
    assert cli.main(argv) == 0  # brings every stage up to this recipe (other tests change it)
    assert cli.main([*argv, "--from", "export"]) == 0
    summary = json.loads((out / "pipeline" / "summary.json").read_text("utf-8"))
    status = {name: s["status"] for name, s in summary["stages"].items()}
    assert status["selfdistill"] == "skipped"
    assert status["export"] == status["evaluate"] == status["bench"] == status["report"] == "ran"


def _pipeline_command(teacher, demo_data, out, recipe) -> list[str]:
    return [sys.executable, "-m", "tinyfast", "pipeline", "--teacher", str(teacher), "--train",
            str(demo_data["train"]), "--dev", str(demo_data["dev"]), "--out", str(out),
            "--recipe", str(recipe), "--no-progress"]


def test_a_stage_killed_midway_finishes_as_if_never_stopped(
        tmp_path, tiny_teacher_dir, demo_data, tiny_student_json):
    # No corpus: finetune -> task -> selfdistill -> export -> evaluate. The task stage saves a
    # checkpoint every 2 steps; the run is killed once one exists.
    recipe = write_recipe(tmp_path / "recipe.json", tiny_recipe(
        tiny_student_json, task={"intermediate_epochs": 3.0, "prediction_epochs": 2.0}))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    whole = tmp_path / "whole"
    subprocess.run(_pipeline_command(tiny_teacher_dir, demo_data, whole, recipe), check=True,
                   capture_output=True, timeout=600)

    killed = tmp_path / "killed"
    # save_every is the loop's default (200): too rare here, so the task stage's own recipe
    # cannot set it; instead kill during the task stage, before or after its checkpoints.
    proc = subprocess.Popen(_pipeline_command(tiny_teacher_dir, demo_data, killed, recipe),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record = killed / "pipeline" / "task.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if record.is_file() and '"running"' in record.read_text(encoding="utf-8"):
            log = killed / "task" / "work"
            if any(log.rglob("train_log.jsonl")):
                break
        if proc.poll() is not None:
            pytest.fail("the pipeline ended before it could be killed")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert '"running"' in record.read_text(encoding="utf-8")

    rerun = subprocess.run(_pipeline_command(tiny_teacher_dir, demo_data, killed, recipe),
                           check=True, capture_output=True, text=True, timeout=600)
    stages = json.loads(rerun.stdout)["stages"]
    assert stages["finetune"]["status"] == "skipped"
    assert stages["task"]["status"] == "ran" and stages["task"]["resumed"] is True
    # The record says so, and a later rerun that skips the stage still tells.
    assert json.loads(record.read_text(encoding="utf-8"))["resumed"] is True
    for stage in ("task", "selfdistill"):
        a = load_file(str(whole / stage / "model" / "model.safetensors"))
        b = load_file(str(killed / stage / "model" / "model.safetensors"))
        assert a.keys() == b.keys()
        for name in a:
            assert (a[name] == b[name]).all(), (stage, name)
    curves = [json.loads((d / "evaluate" / "curve.json").read_text("utf-8"))["points"]
              for d in (whole, killed)]
    assert [p["accuracy"] for p in curves[0]] == [p["accuracy"] for p in curves[1]]


def test_default_recipe_and_files(tmp_path):
    default = load_recipe(None)
    assert default["task"] == DEFAULTS["task"] and default["augment"]["enabled"] is False
    toml = tmp_path / "r.toml"
    toml.write_text('[task]\nprediction_lr = 1e-4\n[run]\nseed = 7\n', encoding="utf-8")
    recipe = load_recipe(toml)
    assert recipe["task"]["prediction_lr"] == 1e-4 and recipe["run"]["seed"] == 7
    assert recipe["task"]["intermediate_epochs"] == DEFAULTS["task"]["intermediate_epochs"]


def test_demo_recipe_goes_over_the_defaults_and_a_file_over_it(tmp_path):
    from tinyfast.pipeline.demo import DEMO_RECIPE, QUICK_RECIPE, demo_recipe

    student = tmp_path / "student.json"
    demo = demo_recipe(student)
    assert demo["augment"]["enabled"] is True and demo["run"]["max_length"] == 32
    assert demo["task"]["student"] == str(student)
    assert demo["task"]["intermediate_lr"] == DEFAULTS["task"]["intermediate_lr"]
    quick = demo_recipe(student, quick=True)
    assert quick["selfdistill"]["epochs"] == QUICK_RECIPE["selfdistill"]["epochs"]
    assert quick["run"]["max_length"] == DEMO_RECIPE["run"]["max_length"]
    mine = tmp_path / "mine.toml"
    mine.write_text("[bench]\nenabled = false\n", encoding="utf-8")
    over = demo_recipe(student, quick=True, path=mine)
    assert over["bench"]["enabled"] is False
    assert over["augment"]["n"] == QUICK_RECIPE["augment"]["n"]
    assert over.source == str(mine)


def test_recipe_masking_modes_are_the_masked_lms():
    from tinyfast.augment.masked_lm import MODES
    from tinyfast.pipeline.recipe import _CHOICES

    assert _CHOICES[("augment", "mode")] == MODES


@pytest.mark.parametrize("data, message", [
    ({"tasks": {}}, "unknown stage [tasks]"),
    ({"task": {"lr": 1e-4}}, "[task] lr: unknown setting"),
    ({"task": {"prediction_lr": "fast"}}, "[task] prediction_lr: expected a finite number"),
    ({"task": {"prediction_lr": float("nan")}}, "expected a finite number"),
    ({"run": {"seed": 1.5}}, "[run] seed: expected an integer"),
    ({"run": {"seed": True}}, "[run] seed: expected an integer"),
    ({"finetune": {"enabled": "yes"}}, '[finetune] enabled: expected one of true, false, "auto"'),
    ({"augment": {"mode": "all"}}, '[augment] mode: expected one of "multi", "word"'),
    ({"bench": {"contenders": ["ort_int4"]}}, "[bench] contenders: expected a non-empty list of "
                                               "names from teacher_torch_fp32"),
    ({"bench": {"contenders": "ort_int8"}}, "expected a non-empty list of names"),
    ({"evaluate": {"speeds": []}}, "expected a non-empty list of numbers"),
    ({"export": {"calibration_rows": -1}}, "[export] calibration_rows: expected an integer >= 0"),
    ({"export": {"residual_layers": -1}}, "[export] residual_layers: expected an integer >= 0"),
    ({"task": []}, "[task] must be a table of settings"),
])
def test_recipe_errors_name_the_key(data, message):
    with pytest.raises(ConfigError) as info:
        Recipe.from_mapping(data, "r.json")
    assert str(info.value).startswith("r.json: ") and message in str(info.value)


def test_bad_recipe_files_and_flags_are_one_line_errors(capsys, tmp_path, demo_data):
    base = ["pipeline", "--train", str(demo_data["train"]), "--dev", str(demo_data["dev"]),
            "--out", str(tmp_path / "out"), "--no-progress"]
    broken = tmp_path / "broken.toml"
    broken.write_text("[task\n", encoding="utf-8")
    assert "not valid TOML" in one_error_line(capsys, cli.main([*base, "--recipe", str(broken)]),
                                              "tinyfast")
    bad_json = tmp_path / "broken.json"
    bad_json.write_text('{"task": ', encoding="utf-8")
    assert "not valid JSON" in one_error_line(
        capsys, cli.main([*base, "--recipe", str(bad_json)]), "tinyfast")
    other = tmp_path / "recipe.yaml"
    other.write_text("task: {}", encoding="utf-8")
    assert "a .toml or .json file" in one_error_line(
        capsys, cli.main([*base, "--recipe", str(other)]), "tinyfast")
    missing = [*base]
    missing[missing.index("--train") + 1] = str(tmp_path / "nope.tsv")
    assert "nope.tsv: no such file" in one_error_line(capsys, cli.main(missing), "tinyfast")
    with pytest.raises(SystemExit) as info:
        cli.main([*base, "--from", "deploy"])
    assert info.value.code == 2
    assert "invalid choice: 'deploy'" in capsys.readouterr().err
