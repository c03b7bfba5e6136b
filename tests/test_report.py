"""``tinyfast report`` and ``tinyfast.report`` on a synthetic pipeline output directory (JSON files
shaped as the pipeline, the evaluate stage, ``tinyfast bench`` and the training loop write them;
no training): every section's figures, the plots, missing inputs and one-line errors."""

from __future__ import annotations

import builtins
import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_cli import one_error_line  # noqa: E402
from tinyfast import cli  # noqa: E402
from tinyfast.errors import DataError  # noqa: E402
from tinyfast.exits import chosen_point  # noqa: E402
from tinyfast.report import build_report  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ["accuracy_vs_throughput.png", "exit_layers.png", "training_finetune.png",
         "training_selfdistill.png", "training_task.png"]

TEACHER_ACCURACY = 0.9128
STAGES = {
    "finetune": {"status": "skipped", "reason": "inputs and settings unchanged",
                 "seconds": 1234.4},
    "augment": {"status": "off", "reason": "off in the recipe"},
    "general": {"status": "off", "reason": "no corpus given"},
    "task": {"status": "ran", "resumed": True, "seconds": 3725.6},
    "selfdistill": {"status": "ran", "resumed": False, "seconds": 410.2},
    "export": {"status": "ran", "resumed": False, "seconds": 12.7},
    "evaluate": {"status": "ran", "resumed": False, "seconds": 33.1},
    "bench": {"status": "ran", "resumed": False, "seconds": 300.0},
}
STAGE_SUMMARIES: dict[str, dict[str, Any]] = {
    "finetune": {"command": "finetune", "best": {"accuracy": TEACHER_ACCURACY,
                                                 "macro_f1": 0.9121, "step": 600}},
    "task": {"command": "distill task", "best": {"accuracy": 0.8945, "macro_f1": 0.894,
                                                 "step": 900}},
    "selfdistill": {"command": "selfdistill", "best": {"heldout_kl": 0.02134, "step": 300}},
    "export": {"bundle_bytes": 4_321_000, "quantization": "int8",
               "exits": [{"layer": 1, "kind": "fastbert"}, {"layer": 2, "kind": "fastbert"},
                         {"layer": 3, "kind": "fastbert"}]},
}


def curve_point(speed: float, accuracy: float, shares: dict[int, float], flops: float,
                rate: float) -> dict[str, Any]:
    mean_exit = sum(layer * share for layer, share in shares.items())
    return {"speed": speed, "rows": 872, "accuracy": accuracy, "macro_f1": accuracy - 0.001,
            "mean_exit_layer": mean_exit,
            "exit_share": {str(layer): shares.get(layer, 0.0) for layer in (1, 2, 3, 4)},
            "relative_flops": flops, "seconds": 872 / rate, "rows_per_second": rate}


CURVE = {
    "bundle": "export/bundle", "data": "data/dev.tsv", "rows": 872, "num_layers": 4, "threads": 1,
    "teacher": {"accuracy": TEACHER_ACCURACY, "macro_f1": 0.9121},
    "points": [
        curve_point(0.0, 0.8945, {4: 1.0}, 1.0, 1500.0),
        curve_point(0.1, 0.8933, {1: 0.25, 2: 0.25, 3: 0.25, 4: 0.25}, 0.66, 2100.0),
        # 0.34 points below speed 0: the largest speed within 0.5 points.
        curve_point(0.3, 0.8911, {1: 0.5, 2: 0.25, 3: 0.125, 4: 0.125}, 0.4123, 3200.0),
        curve_point(0.5, 0.8830, {1: 0.75, 2: 0.25}, 0.2801, 4100.0),
    ],
}


def contender(accuracy: float, rate: float, p50: float, size: int, peak: float,
              **extra: Any) -> dict[str, Any]:
    return {"engine": "x", "accuracy": accuracy, "macro_f1": accuracy - 0.002,
            "latency_ms": {"calls": 872, "p50": p50, "p95": p50 * 1.5, "mean": p50 * 1.1},
            "throughput_rows_per_s": rate, "size_bytes": size,
            "memory": {"peak_rss_mb": peak}, **extra}


def tinyfast_contender(speed: float, accuracy: float, rate: float, mean_exit: float,
                       shares: dict[str, float]) -> dict[str, Any]:
    return contender(accuracy, rate, 1.2, 4_321_000, 95.0, speed=speed, num_layers=4,
                     mean_exit_layer=mean_exit, exit_share=shares)


BENCH = {
    "benchmark": "tinyfast_bench", "schema_version": 1,
    "machine": {"cpu_model": "Test CPU @ 2.00GHz", "logical_cores": 2, "threads_used": 1,
                "load_average_at_start": [1.5, 1.25, 1.0],
                "load_average_at_end": [1.75, 1.5, 1.25]},
    "data": {"path": "data/dev.tsv", "rows": 872},
    "settings": {"threads": 1, "batch_size": 32, "rounds": 3, "latency_rows": 872},
    "contenders": {
        "teacher_torch_fp32": contender(TEACHER_ACCURACY, 250.0, 9.5, 90_000_000, 610.0),
        "torch_fp32": contender(0.8950, 400.0, 4.0, 17_500_000, 420.0),
        "torch_int8_dynamic": contender(0.8910, 520.0, 3.1, 9_000_000, 430.0),
        "ort_int8": contender(0.8920, 900.0, 1.9, 5_000_000, 180.0),
        "ort_int8_fused": {"failed": "RuntimeError: fusion broke"},
        "openvino_int8": {"skipped": "openvino is not installed (pip install "
                                     "'tinyfast[openvino]')"},
        "tinyfast_int8_speed0": tinyfast_contender(0.0, 0.8945, 2000.0, 4.0, {"4": 1.0}),
        "tinyfast_int8_speed0.1": tinyfast_contender(0.1, 0.8933, 3000.0, 2.5,
                                                     {"1": 0.25, "2": 0.25, "3": 0.25,
                                                      "4": 0.25}),
        "tinyfast_int8_speed0.3": tinyfast_contender(0.3, 0.8911, 5000.0, 1.875,
                                                     {"1": 0.5, "2": 0.25, "3": 0.125,
                                                      "4": 0.125}),
    },
}


def train_log(steps: int, eval_metric: str, eval_value: float) -> str:
    lines = [{"event": "train", "epoch": 0, "step": s, "lr": 1e-4, "loss": 2.0 / s,
              "rows_per_s": 500.0} for s in range(50, steps + 1, 50)]
    lines.append({"event": "eval", "step": steps, eval_metric: eval_value})
    return "".join(json.dumps(line) + "\n" for line in lines)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


@pytest.fixture
def out(tmp_path) -> Path:
    """A pipeline output directory as a finished run leaves it."""
    out = tmp_path / "run"
    write_json(out / "pipeline" / "summary.json", {
        "teacher": "minilm", "train": "data/train.tsv", "dev": "data/dev.tsv", "corpus": None,
        "unlabeled": None, "recipe": {}, "recipe_source": "recipe.toml", "stages": STAGES,
        "artifacts": {"export": "export/bundle"},
        "results": {"teacher_dev_accuracy": TEACHER_ACCURACY, "student_dev_accuracy": 0.8945},
        "seconds": 4481.6,
    })
    for stage, info in STAGES.items():
        if info["status"] != "off":
            write_json(out / "pipeline" / f"{stage}.json", {
                "stage": stage, "fingerprint": "f" * 64, "status": "done", "artifact": None,
                "seconds": info["seconds"], "summary": STAGE_SUMMARIES.get(stage, {})})
    write_json(out / "evaluate" / "curve.json", CURVE)
    write_json(out / "bench" / "bench.json", BENCH)
    logs = {"finetune/work": train_log(600, "accuracy", TEACHER_ACCURACY),
            "task/work/intermediate": train_log(300, "unused", 0.0).splitlines(True)[0],
            "task/work/prediction": train_log(900, "accuracy", 0.8945),
            "selfdistill/work": train_log(300, "heldout_kl", 0.02134)}
    for where, text in logs.items():
        (out / where).mkdir(parents=True)
        (out / where / "train_log.jsonl").write_text(text, encoding="utf-8")
    for stage in ("finetune", "task", "selfdistill"):
        write_json(out / stage / "metrics.json", STAGE_SUMMARIES[stage])
    return out


def set_stage(out: Path, stage: str, info: dict[str, Any]) -> None:
    path = out / "pipeline" / "summary.json"
    summary = json.loads(path.read_text(encoding="utf-8"))
    summary["stages"][stage] = info
    write_json(path, summary)


# ------------------------------------------------------------------------------------------------
# report.md


def test_report_path_and_stage_table(out):
    path = build_report(out, plots=False)
    assert path == out / "report" / "report.md"
    text = path.read_text(encoding="utf-8")
    assert "- Teacher: `minilm`" in text and "- Corpus: none" in text
    assert "- Recipe: recipe.toml" in text
    assert "- Wall time of this run: 1:14:42" in text  # 4481.6 s
    for row in [
        "| finetune | skipped (unchanged) | 20:34 | best dev accuracy 91.28% |",
        "| augment | off in the recipe | - | - |",
        "| general | off (no corpus given) | - | - |",
        # 0.8945 / 0.9128 of the teacher
        "| task | ran (resumed) | 1:02:06 | best dev accuracy 89.45% (98.0% of the teacher) |",
        "| selfdistill | ran | 6:50 | held-out KL 0.0213 |",
        "| export | ran | 0:13 | bundle 4.3 MB, int8, exits after layers 1, 2, 3 |",
        "| evaluate | ran | 0:33 | speeds 0, 0.1, 0.3, 0.5 on 872 dev rows |",
        "| bench | ran | 5:00 | 7 of 9 contenders measured |",
    ]:
        assert row in text, row


def test_a_stage_resumed_when_it_ran_says_so_when_skipped(out):
    set_stage(out, "finetune", {"status": "skipped", "reason": "inputs and settings unchanged",
                                "seconds": 1234.0, "resumed": True})
    text = build_report(out, plots=False).read_text(encoding="utf-8")
    assert "| finetune | skipped (unchanged; resumed when it ran) | 20:34 |" in text


def test_headline_is_computed_from_the_curve(out):
    text = build_report(out, plots=False).read_text(encoding="utf-8")
    teacher, base, chosen = TEACHER_ACCURACY, CURVE["points"][0], CURVE["points"][2]
    assert f"{100 * base['accuracy'] / teacher:.1f}" == "98.0"
    assert f"{100 * (chosen['accuracy'] - base['accuracy']):+.2f}" == "-0.34"
    assert "- Teacher dev accuracy: 91.28%" in text
    assert "- Int8 student at speed 0: 89.45% (98.0% of the teacher)" in text
    assert ("- Chosen speed 0.3 (the largest speed whose accuracy is within 0.5 points of speed "
            "0): accuracy 89.11% (-0.34 points), mean exit layer 1.88 of 4, relative FLOPs "
            "0.412") in text


def test_curve_table(out):
    text = build_report(out, plots=False).read_text(encoding="utf-8")
    assert ("| speed | accuracy | macro F1 | mean exit layer (of 4) | exit after L1 | "
            "exit after L2 | exit after L3 | exit after L4 | relative FLOPs | rows/s |") in text
    assert "| 0 | 89.45% | 89.35% | 4.00 | 0.0% | 0.0% | 0.0% | 100.0% | 1.000 | 1,500.0 |" in text
    assert ("| 0.3 (chosen) | 89.11% | 89.01% | 1.88 | 50.0% | 25.0% | 12.5% | 12.5% | 0.412 | "
            "3,200.0 |") in text
    assert "| 0.5 | 88.30% |" in text


def test_contenders_table(out):
    text = build_report(out, plots=False).read_text(encoding="utf-8")
    assert ("Machine: Test CPU @ 2.00GHz, 2 logical cores, 1 thread per contender; load average "
            "(1 / 5 / 15 min) 1.50 / 1.25 / 1.00 at start, 1.75 / 1.50 / 1.25 at end.") in text
    assert ("| contender | accuracy | macro F1 | p50 ms (batch 1) | p95 ms (batch 1) | "
            "rows/s (batch 32) | rows/s vs torch_fp32 | rows/s vs ort_int8 | size | "
            "peak RSS MB | mean exit layer |") in text
    # 5000 / 400 and 5000 / 900 rows/s
    assert ("| tinyfast_int8_speed0.3 | 89.11% | 88.91% | 1.20 | 1.80 | 5,000.0 | 12.50x | 5.56x | "
            "4.3 MB | 95 | 1.88 of 4 |") in text
    assert ("| torch_fp32 | 89.50% | 89.30% | 4.00 | 6.00 | 400.0 | 1.00x | 0.44x | 17.5 MB | "
            "420 | - |") in text
    assert "- openvino_int8: skipped: openvino is not installed (pip install " \
           "'tinyfast[openvino]')" in text
    assert "- ort_int8_fused: failed: RuntimeError: fusion broke" in text
    assert "| ort_int8_fused |" not in text


# ------------------------------------------------------------------------------------------------
# plots


def test_plots_are_pngs_linked_from_the_report(out):
    pytest.importorskip("matplotlib")
    path = build_report(out)
    text = path.read_text(encoding="utf-8")
    for name in PLOTS:
        png = path.parent / name
        assert png.read_bytes()[:8] == PNG_SIGNATURE, name
        assert f"]({name})" in text
    assert sorted(p.name for p in path.parent.glob("*.png")) == PLOTS


def test_no_plots_says_how_to_get_them_and_drops_old_ones(out):
    pytest.importorskip("matplotlib")
    build_report(out)
    path = build_report(out, plots=False)
    assert "pip install 'tinyfast[report]'" in path.read_text(encoding="utf-8")
    assert list(path.parent.glob("*.png")) == []


def test_without_matplotlib_the_report_is_still_written(out, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    path = build_report(out)
    text = path.read_text(encoding="utf-8")
    assert "Not drawn: plots need matplotlib (`pip install 'tinyfast[report]'`)." in text
    assert "| task | ran (resumed) |" in text
    assert list(path.parent.glob("*.png")) == []


# ------------------------------------------------------------------------------------------------
# missing inputs


def test_bench_off_in_the_recipe(out):
    (out / "bench" / "bench.json").unlink()
    set_stage(out, "bench", {"status": "off", "reason": "off in the recipe"})
    text = build_report(out, plots=False).read_text(encoding="utf-8")
    assert "## Contenders\n\n_No data (bench: off in the recipe)._" in text
    assert "| bench | off in the recipe | - | - |" in text


def test_bench_file_gone_after_the_stage_ran(out):
    (out / "bench" / "bench.json").unlink()
    text = build_report(out, plots=False).read_text(encoding="utf-8")
    assert "_No data (bench: ran, but bench/bench.json is missing)._" in text


def test_no_summary_and_no_curve(out):
    (out / "pipeline" / "summary.json").unlink()
    (out / "evaluate" / "curve.json").unlink()
    text = build_report(out, plots=False).read_text(encoding="utf-8")
    assert "_No data: pipeline/summary.json is missing, so the stages are unknown._" in text
    assert ("- Int8 student: no data (evaluate/curve.json is missing, and there is no "
            "pipeline/summary.json to say why)") in text
    assert "| tinyfast_int8_speed0.3 |" in text  # the bench report is still there


def test_exit_layers_from_the_bench_without_a_curve(out):
    pytest.importorskip("matplotlib")
    (out / "evaluate" / "curve.json").unlink()
    set_stage(out, "evaluate", {"status": "off", "reason": "off in the recipe"})
    path = build_report(out)
    assert (path.parent / "exit_layers.png").read_bytes()[:8] == PNG_SIGNATURE


# ------------------------------------------------------------------------------------------------
# errors


def test_corrupt_json_names_the_file_and_line(out, capsys):
    curve = out / "evaluate" / "curve.json"
    curve.write_text('{\n "points": [\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"curve\.json:3: invalid JSON"):
        build_report(out)
    line = one_error_line(capsys, cli.main(["report", str(out)]), "tinyfast")
    assert f"{curve}:3: invalid JSON" in line
    assert not (out / "report").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_corrupt_log_line_names_the_file_and_line(out, capsys):
    pytest.importorskip("matplotlib")
    log = out / "task" / "work" / "prediction" / "train_log.jsonl"
    lines = log.read_text(encoding="utf-8").splitlines(True)
    lines[2] = '{"event": "train", "step": 15\n'  # cut short by a kill
    log.write_text("".join(lines), encoding="utf-8")
    line = one_error_line(capsys, cli.main(["report", str(out)]), "tinyfast")
    assert line.startswith(f"tinyfast: error: {log}:3: invalid JSON")


def test_a_log_line_without_a_step_is_an_error(out):
    pytest.importorskip("matplotlib")
    log = out / "finetune" / "work" / "train_log.jsonl"
    log.write_text('{"event": "train", "loss": 1.0}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"train_log\.jsonl:1: a 'train' line needs a numeric step"):
        build_report(out)


def test_wrong_shape_is_one_error(out):
    write_json(out / "bench" / "bench.json", {"contenders": ["torch_fp32"]})
    with pytest.raises(DataError, match=r"bench\.json: contenders: expected an object, got an "
                                        r"array"):
        build_report(out)


def test_cli_on_a_missing_directory(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    line = one_error_line(capsys, cli.main(["report", str(missing)]), "tinyfast")
    assert line == f"tinyfast: error: {missing}: no such directory"


def test_cli_on_a_directory_without_pipeline_output(tmp_path, capsys):
    line = one_error_line(capsys, cli.main(["report", str(tmp_path)]), "tinyfast")
    assert "holds no pipeline output" in line
    assert not (tmp_path / "report").exists()


def test_cli_prints_the_report_path(out, capsys):
    assert cli.main(["report", str(out), "--no-plots"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"report: {out / 'report' / 'report.md'}", "plots: none"]


# ------------------------------------------------------------------------------------------------
# the chosen-speed rule


def test_chosen_point_takes_the_largest_speed_within_half_a_point():
    points = [{"speed": 0.0, "accuracy": 0.9}, {"speed": 0.2, "accuracy": 0.895},
              {"speed": 0.1, "accuracy": 0.899}, {"speed": 0.4, "accuracy": 0.8949}]
    assert chosen_point(points)["speed"] == 0.2  # exactly 0.5 points below counts as within
    assert chosen_point(points, tolerance_points=0.1)["speed"] == 0.1
    assert chosen_point([{"speed": 0.1, "accuracy": 0.9}]) is None
    assert chosen_point([{"speed": 0.0, "pearson": 0.8}]) is None
