"""benches/distill_study.py and its recipes without training: every recipe loads, the commands it
runs, the table and JSON it gathers from a fake OUT tree, and its one-line errors."""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
import types
from pathlib import Path

import pytest

from tinyfast.pipeline.recipe import DEFAULTS, STAGES, load_recipe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_cli import one_error_line  # noqa: E402

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

BENCHES = Path(__file__).resolve().parents[1] / "benches"
RECIPE_FILES = sorted((BENCHES / "recipes").glob("*.toml"))


def load_driver() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("distill_study", BENCHES / "distill_study.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


study = load_driver()


def test_the_study_has_its_recipes():
    assert {p.stem for p in RECIPE_FILES} >= {"default", "general_0.3_task_2_2",
                                               "general_0.3_task_4_3", "general_0.3_task_10_3",
                                               "no_general"}


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: p.stem)
def test_every_recipe_loads_and_holds_only_what_differs_from_the_defaults(path):
    load_recipe(path)  # unknown stages or keys, wrong types: ConfigError
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# "), "a recipe starts with a comment saying what the run measures"
    overlay = tomllib.loads(text)
    for stage, values in overlay.items():
        for key, value in values.items():
            assert value != DEFAULTS[stage][key], f"[{stage}] {key} repeats the default"


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: p.stem)
def test_study_recipes_leave_the_bench_to_the_default_run(path):
    recipe = load_recipe(path)
    if path.stem == "default":
        assert tomllib.loads(path.read_text(encoding="utf-8")) == {}
    else:
        assert recipe["bench"]["enabled"] is False
        # The share of the teacher needs evaluate's teacher accuracy when finetune is skipped.
        assert recipe["export"]["enabled"] and recipe["evaluate"]["enabled"]


def test_recipe_budgets():
    budget = {p.stem: load_recipe(p) for p in RECIPE_FILES}
    task = {name: (r["task"]["intermediate_epochs"], r["task"]["prediction_epochs"])
            for name, r in budget.items()}
    assert task["general_0.3_task_2_2"] == (2.0, 2.0)
    assert task["general_0.3_task_4_3"] == (4.0, 3.0)
    assert task["general_0.3_task_10_3"] == task["default"] == task["no_general"] == (10.0, 3.0)
    assert budget["default"]["general"]["epochs"] == 1.3
    assert budget["general_0.3_task_10_3"]["general"]["epochs"] == 0.3
    assert budget["no_general"]["general"]["enabled"] is False


def test_recipes_by_name_suffix_path_or_all(tmp_path):
    assert list(study.select_recipes("all"))[:4] == [
        "default", "general_0.3_task_2_2", "general_0.3_task_4_3", "general_0.3_task_10_3"]
    chosen = study.select_recipes("no_general, general_0.3_task_2_2.toml")
    assert list(chosen) == ["no_general", "general_0.3_task_2_2"]
    own = tmp_path / "mine.toml"
    own.write_text("[task]\nprediction_epochs = 1.0\n", encoding="utf-8")
    assert study.select_recipes(str(own)) == {"mine": own}


def inputs(tmp_path: Path, threads: int = 0):
    data = tmp_path / "data"
    return study.StudyInputs(teacher="minilm", train=data / "sst2" / "train.tsv",
                             dev=data / "sst2" / "dev.tsv",
                             corpus=data / "corpus" / "movie_reviews.txt",
                             out=tmp_path / "out", threads=threads)


def test_the_pipeline_command_of_a_recipe(tmp_path):
    given = inputs(tmp_path)
    recipe = BENCHES / "recipes" / "no_general.toml"
    command = study.pipeline_command("no_general", recipe, given)
    assert command[:4] == [sys.executable, "-m", "tinyfast", "pipeline"]
    flags = dict(zip(command[4::2], command[5::2], strict=True))
    assert flags == {"--teacher": "minilm", "--train": str(given.train), "--dev": str(given.dev),
                     "--corpus": str(given.corpus), "--recipe": str(recipe),
                     "--out": str(given.out / "no_general")}
    # The result file's copy holds no absolute path.
    recorded = study.recorded_command("no_general", recipe, given)
    assert recorded[0] == "python"
    assert "benches/recipes/no_general.toml" in recorded and "<OUT>/no_general" in recorded
    assert not any(part.startswith("/") for part in recorded)


def test_threads_go_through_the_environment_not_the_recipe(tmp_path):
    assert study.thread_environment(0) == {}
    env = study.thread_environment(1)
    assert env["OMP_NUM_THREADS"] == "1" and set(env) == set(study.THREAD_VARIABLES)
    command = study.pipeline_command("default", BENCHES / "recipes" / "default.toml",
                                     inputs(tmp_path, threads=1))
    assert "--threads" not in command
    line = study.shown_command(command, env)
    assert line.startswith("OMP_NUM_THREADS=1 ") and shlex.split(line)[3:] == command


def test_dry_run_prints_one_command_per_recipe(capsys, tmp_path):
    code = study.main(["--recipes", "general_0.3_task_2_2,no_general", "--data",
                       str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--parallel", "2",
                       "--threads", "1", "--dry-run"])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert all(line.startswith("OMP_NUM_THREADS=1 ") for line in lines)
    assert lines[1].endswith(f"--out {tmp_path / 'out' / 'no_general'}")
    assert not (tmp_path / "out").exists()


def summary(teacher: float | None, student: float | None, stages: dict[str, dict]) -> dict:
    recipe = {stage: dict(values) for stage, values in DEFAULTS.items()}
    recipe["general"]["epochs"] = 0.3
    recipe["task"].update(intermediate_epochs=2.0, prediction_epochs=2.0)
    results = {"teacher_dev_accuracy": teacher, "student_dev_accuracy": student}
    if student is not None:
        results["int8_curve"] = [{"speed": 0.0, "accuracy": student - 0.01}]
    return {"recipe": recipe, "stages": stages, "results": results, "seconds": 1.0}


def write_summary(out: Path, data: dict) -> None:
    path = out / "pipeline" / "summary.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data), encoding="utf-8")


def finished_stages() -> dict[str, dict]:
    stages = {stage: {"status": "ran", "resumed": False, "seconds": 60.0} for stage in STAGES}
    stages["general"] = {"status": "skipped", "reason": "inputs and settings unchanged",
                         "seconds": 600.0}
    stages["bench"] = {"status": "off", "reason": "off in the recipe"}
    return stages


def test_gathering_a_fake_out_tree(capsys, tmp_path):
    out = tmp_path / "out"
    write_summary(out / "general_0.3_task_2_2", summary(0.875, 0.7875, finished_stages()))
    # Stopped during task distillation: the runner's summary so far.
    partial = {s: finished_stages()[s] for s in ("finetune", "augment", "general")}
    write_summary(out / "general_0.3_task_4_3", summary(0.875, None, partial))
    target = tmp_path / "study.json"
    code = study.main(["--recipes", "general_0.3_task_2_2,general_0.3_task_4_3,no_general",
                       "--out", str(out), "--json", str(target), "--gather-only"])
    assert code == 0
    printed = capsys.readouterr().out
    result = json.loads(target.read_text(encoding="utf-8"))
    assert result["benchmark"] == "distill_study"
    assert "commit" in result and "uncommitted_changes" in result
    assert result["machine"]["logical_cores"] >= 1
    assert result["settings"]["recipes"] == ["general_0.3_task_2_2", "general_0.3_task_4_3",
                                             "no_general"]
    runs = result["runs"]
    done = runs["general_0.3_task_2_2"]
    assert done["complete"] is True
    assert done["recipe_file"] == "benches/recipes/general_0.3_task_2_2.toml"
    assert done["command"].startswith("python -m tinyfast pipeline --teacher minilm")
    assert "<OUT>/general_0.3_task_2_2" in done["command"]
    assert done["share_of_teacher"] == pytest.approx(0.9)
    assert done["student_int8_dev_accuracy"] == pytest.approx(0.7775)
    assert done["recipe"]["general"]["epochs"] == 0.3
    assert done["stages"]["general"] == {"status": "skipped", "seconds": 600.0,
                                         "reason": "inputs and settings unchanged"}
    assert done["stages"]["bench"] == {"status": "off", "reason": "off in the recipe"}
    assert done["stage_seconds_total"] == pytest.approx(600.0 + 60.0 * (len(STAGES) - 2))
    stopped = runs["general_0.3_task_4_3"]
    assert stopped["complete"] is False and stopped["share_of_teacher"] is None
    assert "missing" in runs["no_general"]
    table = printed.splitlines()
    assert table[0].split()[:3] == ["recipe", "general", "task"]
    row = dict(zip(["2_2", "4_3", "none"], table[1:4], strict=True))
    assert row["2_2"].split()[:7] == ["general_0.3_task_2_2", "0.3", "ep", "2+2", "87.50", "78.75",
                                      "90.0"]
    assert row["2_2"].rstrip().endswith("done") and row["4_3"].rstrip().endswith("unfinished")
    assert row["none"].rstrip().endswith("not run")


FAKE_PIPELINE = """
import json, sys
from pathlib import Path
out, name = Path(sys.argv[1]), sys.argv[2]
print("pipeline output of", name)
if name == "no_general":
    sys.exit(3)
(out / "pipeline").mkdir(parents=True)
(out / "pipeline" / "summary.json").write_text(json.dumps({"stages": {}, "results": {}}))
"""


def test_runs_side_by_side_log_to_files_and_a_failure_is_reported(capsys, tmp_path, monkeypatch):
    def fake_command(name, recipe, given, **_):
        return [sys.executable, "-c", FAKE_PIPELINE, str(given.out / name), name]

    monkeypatch.setattr(study, "pipeline_command", fake_command)
    data = tmp_path / "data"
    for path in ("sst2/train.tsv", "sst2/dev.tsv", "corpus/movie_reviews.txt"):
        (data / path).parent.mkdir(parents=True, exist_ok=True)
        (data / path).write_text("sentence\tlabel\n", encoding="utf-8")
    out = tmp_path / "out"
    code = study.main(["--recipes", "general_0.3_task_2_2,no_general", "--data", str(data),
                       "--out", str(out), "--parallel", "2"])
    assert code == 1
    captured = capsys.readouterr()
    assert "pipeline output of no_general" in (out / "no_general.log").read_text()
    assert "== no_general: failed (exit 3)" in captured.out
    assert "run no_general failed" in captured.err
    runs = json.loads((out / "study.json").read_text(encoding="utf-8"))["runs"]
    assert "missing" not in runs["general_0.3_task_2_2"] and "missing" in runs["no_general"]


def test_an_unknown_recipe_is_a_one_line_error(capsys, tmp_path):
    line = one_error_line(capsys, study.main(["--recipes", "nosuch", "--out", str(tmp_path)]),
                          "distill_study")
    assert "nosuch" in line and "general_0.3_task_2_2" in line
    assert not any(tmp_path.iterdir())


def test_a_recipe_with_an_unknown_key_is_a_one_line_error(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[task]\nepochs = 3.0\n", encoding="utf-8")
    line = one_error_line(capsys, study.main(["--recipes", str(bad), "--out", str(tmp_path)]),
                          "distill_study")
    assert "[task] epochs: unknown setting" in line


def test_missing_data_is_a_one_line_error(capsys, tmp_path):
    line = one_error_line(capsys, study.main(["--recipes", "no_general", "--data",
                                              str(tmp_path / "nowhere"), "--out",
                                              str(tmp_path / "out")]), "distill_study")
    assert "train.tsv" in line and "--data" in line
