"""benches/early_exit.py end to end on the tiny fine-tuned teacher and the demo task (seconds, not
a measurement): the result file's fields, and that its figures agree with each other."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from bench_scripts import load_bench  # noqa: E402


@pytest.fixture(scope="module")
def report(tmp_path_factory, finetuned_teacher, demo_data) -> dict:
    work = tmp_path_factory.mktemp("early-exit")
    out = work / "result.json"
    code = load_bench("early_exit.py").main([
        "--model", str(finetuned_teacher[0] / "model"), "--unlabeled", str(demo_data["train"]),
        "--eval", str(demo_data["dev"]), "--work", str(work / "work"), "--out", str(out),
        "--speeds", "0,0.5,1", "--epochs", "2", "--lr", "1e-2", "--rounds", "1",
    ])
    assert code == 0
    return json.loads(out.read_text(encoding="utf-8"))


def test_curves_cover_every_speed_for_torch_and_int8(report):
    curve = report["curve"]
    assert curve["num_layers"] == 4 and curve["exits"] == [[1, "fastbert"], [2, "fastbert"],
                                                           [3, "fastbert"]]
    for kind in ("torch", "int8"):
        points = curve[kind]
        assert [p["speed"] for p in points] == [0.0, 0.5, 1.0]
        assert points[0]["mean_exit_layer"] == 4.0 and points[0]["relative_flops"] == 1.0
        # Every row may leave at speed 1 after the first branch (normalized entropy < 1 unless
        # the branch is exactly uniform).
        assert points[2]["mean_exit_layer"] < 4.0
        for p in points:
            assert p["rows"] == 48
            assert sum(p["exit_share"].values()) == pytest.approx(1.0)
    for q in curve["int8"]:
        assert 0.0 <= q["same_exit_layer_as_torch"] <= 1.0
        assert "accuracy_minus_torch_points" in q


def test_chosen_speed_follows_its_rule(report):
    points = report["curve"]["int8"]
    base = points[0]["accuracy"]
    chosen = report["chosen"]["speed"]
    within = [p["speed"] for p in points if 100 * (base - p["accuracy"]) <= 0.5]
    assert chosen == max(within)
    assert report["throughput"]["speed"] == chosen


def test_throughput_compares_the_runtime_with_ort_in_one_run(report):
    batches = report["throughput"]["batches"]
    assert set(batches) == {"1", "32"}
    for b in batches.values():
        rates = b["rows_per_second"]
        assert set(rates) == {"tinyfast_int8_speed0", "tinyfast_int8_chosen", "ort_int8",
                              "ort_int8_fused"}
        assert all(r > 0 for r in rates.values())
        best_ort = max(rates["ort_int8"], rates["ort_int8_fused"])
        assert b["chosen_vs_best_ort_int8"] == pytest.approx(
            rates["tinyfast_int8_chosen"] / best_ort)
        assert b["chosen_vs_speed0"] == pytest.approx(
            rates["tinyfast_int8_chosen"] / rates["tinyfast_int8_speed0"])
    checks = report["goals"]["checks"]
    assert set(checks) == {"mean_exit_layer_at_most_half_depth",
                           "int8_within_0.3_points_of_torch_at_every_speed",
                           "batch1_speedup_vs_speed0", "batch1_speedup_vs_ort_int8",
                           "batch32_speedup_vs_speed0", "batch32_speedup_vs_ort_int8"}
    assert report["goals"]["all_met"] == all(checks.values())


def test_paths_in_the_result_are_never_absolute(report):
    for key in ("model", "unlabeled", "eval", "calibration"):
        assert not Path(report[key]).is_absolute(), report[key]
    assert report["calibration"] == report["unlabeled"]  # the bundle calibrates on that text
    assert report["selfdistill"]["layers"] == [1, 2, 3]
