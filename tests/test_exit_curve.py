"""tinyfast.exits (the speed rule, FLOPs, speed curves) and ``tinyfast evaluate --speed`` on a
checkpoint and on a runtime bundle."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from tinyfast.errors import ConfigError
from tinyfast.exits import (
    ModelShape,
    branch_flops,
    check_speed,
    format_table,
    full_flops,
    head_flops,
    layer_flops,
    parse_speeds,
    relative_flops,
    row_flops,
    speed_curve,
)

sys.path.insert(0, str(Path(__file__).parent))
from test_cli import one_error_line  # noqa: E402

# ------------------------------------------------------------------------------------------------
# Speeds


@pytest.mark.parametrize("value", [0, 0.0, 0.25, 1, 1.0, np.float32(0.5), -0.0])
def test_check_speed_accepts_numbers_in_0_1(value: Any) -> None:
    assert check_speed(value) == float(value)
    assert str(check_speed(value)) != "-0.0"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), -0.01, 1.01, "0.5",
                                   None, True, [0.5]])
def test_check_speed_rejects_the_rest_naming_the_value(value: Any) -> None:
    with pytest.raises(ConfigError) as info:
        check_speed(value)
    message = str(info.value)
    assert "\n" not in message and "speed" in message
    assert repr(float(value) if isinstance(value, float) else value) in message


def test_parse_speeds_sorts_and_drops_duplicates() -> None:
    assert parse_speeds("0.5, 0,0.1,0.5,1") == [0.0, 0.1, 0.5, 1.0]
    assert parse_speeds("0") == [0.0]


@pytest.mark.parametrize("text, words", [
    ("", "speed 1 of '' is empty"),
    ("0,,0.2", "speed 2 of '0,,0.2' is empty"),
    ("0.1,", "speed 2 of '0.1,' is empty"),
    ("0,fast", "speed 'fast' (item 2 of '0,fast') is not a number"),
    ("nan", "speed 'nan' (item 1 of 'nan') must be a finite number in [0, 1]"),
    ("0,1.5", "speed '1.5' (item 2 of '0,1.5') must be a finite number in [0, 1]"),
    ("-inf", "speed '-inf' (item 1 of '-inf') must be"),
])
def test_parse_speeds_errors_name_the_item(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_speeds(text)
    assert str(info.value).startswith(words), str(info.value)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------------
# FLOPs, by hand for a tiny shape: 2 layers, H 4, F 8, C 3, a fastbert exit (W 2) after layer 1

SHAPE = ModelShape(num_layers=2, hidden=4, intermediate=8, heads=2, num_labels=3,
                   exits={1: "fastbert"}, branch_width=2)
# One layer, L = 3: QKV 3*3*16 = 144, scores + context 2*9*4 = 72, output 3*16 = 48,
# FFN 2*3*4*8 = 192 -> 456 multiply-adds, 912 FLOPs.
LAYER_3 = 912
# Head: pooler 16 + classifier 12 = 28 multiply-adds.
HEAD = 56
# fastbert branch, L = 3: dense in 3*4*2 = 24, key + value 2*3*4 = 24, [CLS] query 4, scores +
# context 2*3*2 = 12, attention output 4, dense 4, classifier 2*3 = 6 -> 78 multiply-adds.
BRANCH_3 = 156


def test_flops_of_the_parts() -> None:
    assert layer_flops(SHAPE, 3) == LAYER_3
    assert head_flops(SHAPE) == HEAD
    assert branch_flops(SHAPE, 1, 3) == BRANCH_3
    linear = ModelShape(2, 4, 8, 2, 3, {1: "linear"})
    assert branch_flops(linear, 1, 3) == 2 * 4 * 3
    # L = 1: QKV 48 + scores/context 8 + output 16 + FFN 64 = 136 multiply-adds.
    assert layer_flops(SHAPE, 1) == 272


def test_flops_of_a_row() -> None:
    assert full_flops(SHAPE, 3) == 2 * LAYER_3 + HEAD == 1880
    assert row_flops(SHAPE, 3, 2, 0.0) == 1880  # speed 0: no branch runs
    assert row_flops(SHAPE, 3, 1, 0.5) == LAYER_3 + BRANCH_3 == 1068  # left after layer 1
    assert row_flops(SHAPE, 3, 2, 0.5) == 1880 + BRANCH_3 == 2036  # ran the branch, stayed
    assert relative_flops(SHAPE, [3, 3], [1, 2], 0.5) == pytest.approx(3104 / 3760)
    assert relative_flops(SHAPE, [3, 1, 3], [2, 2, 2], 0.0) == 1.0
    with pytest.raises(ValueError, match="answers after layers"):
        row_flops(SHAPE, 3, 3, 0.5)
    with pytest.raises(ValueError, match="speed 0"):
        row_flops(SHAPE, 3, 1, 0.0)


def test_model_shape_from_a_config_and_from_a_bundle(tmp_path: Path) -> None:
    config = SimpleNamespace(num_hidden_layers=2, hidden_size=4, intermediate_size=8,
                             num_attention_heads=2, num_labels=3)
    spec = {"format_version": 1, "num_labels": 3, "branch": {"width": 2, "heads": 1},
            "exits": [{"layer": 1, "kind": "fastbert"}]}
    assert ModelShape.from_config(config, spec) == SHAPE
    assert ModelShape.from_config(config, SimpleNamespace(spec=lambda: spec)) == SHAPE
    assert ModelShape.from_config(config).exits == {}
    bundle = {
        "format": "tinyfast-bundle", "format_version": 1,
        "architecture": {"type": "bert", "vocab_size": 10, "hidden_size": 4, "num_layers": 2,
                         "num_heads": 2, "intermediate_size": 8, "max_position_embeddings": 16,
                         "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu"},
        "task": "classification", "labels": ["a", "b", "c"], "max_length": 16,
        "quantization": "int8", "exits": [{"layer": 1, "kind": "fastbert"}],
        "branch": {"width": 2, "heads": 1},
    }
    (tmp_path / "tinyfast.json").write_text(json.dumps(bundle), encoding="utf-8")
    assert ModelShape.from_bundle(tmp_path) == SHAPE
    assert SHAPE.answer_layers == [1, 2]


# ------------------------------------------------------------------------------------------------
# Speed curves


def test_speed_curve_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    labels = [0, 1, 2, 1]
    lengths = [3, 3, 3, 3]
    # speed 0: the head answers every row, 3 of 4 right; speed 0.5: rows 0 and 1 leave after
    # layer 1 (row 1 now wrong), 2 of 4 right.
    answers = {
        0.0: ([[5, 0, 0], [0, 5, 0], [0, 0, 5], [5, 0, 0]], [2, 2, 2, 2]),
        0.5: ([[5, 0, 0], [5, 0, 0], [0, 0, 5], [5, 0, 0]], [1, 1, 2, 2]),
    }
    called: list[float] = []

    def predict(speed: float) -> tuple[np.ndarray, np.ndarray]:
        called.append(speed)
        logits, exits = answers[speed]
        return np.asarray(logits, dtype=np.float32), np.asarray(exits)

    clock = iter([10.0, 12.0, 20.0, 20.5])  # 2 s, then 0.5 s
    monkeypatch.setattr("tinyfast.exits.curve.time.perf_counter", lambda: next(clock))
    points = speed_curve(predict, labels, lengths, [0, 0.5], SHAPE)
    assert called == [0.0, 0.5]
    first, second = points
    assert first == {
        "speed": 0.0, "rows": 4, "accuracy": 0.75,
        # predictions 0, 1, 2, 0 against 0, 1, 2, 1: F1 of class 0 is 2/3 (tp 1, fp 1), of
        # class 1 2/3 (tp 1, fn 1), of class 2 1.
        "macro_f1": pytest.approx((2 / 3 + 2 / 3 + 1) / 3),
        "mean_exit_layer": 2.0, "exit_share": {1: 0.0, 2: 1.0}, "relative_flops": 1.0,
        "seconds": 2.0, "rows_per_second": 2.0,
    }
    assert second["accuracy"] == 0.5
    assert second["mean_exit_layer"] == 1.5
    assert second["exit_share"] == {1: 0.5, 2: 0.5}
    assert sum(second["exit_share"].values()) == 1.0
    assert second["relative_flops"] == pytest.approx((2 * 1068 + 2 * 2036) / (4 * 1880))
    assert second["seconds"] == 0.5 and second["rows_per_second"] == 8.0


def test_speed_curve_regression_metrics() -> None:
    shape = ModelShape(2, 4, 8, 2, 1)
    points = speed_curve(lambda s: (np.array([[1.0], [2.0], [3.0]]), np.array([2, 2, 2])),
                         [1.0, 2.0, 4.0], [3, 3, 3], [0.0], shape, task="regression")
    assert points[0]["mse"] == pytest.approx(1 / 3)
    assert points[0]["spearman"] == pytest.approx(1.0)
    assert "accuracy" not in points[0]


def test_speed_curve_rejects_impossible_answers() -> None:
    with pytest.raises(ValueError, match=r"answered after layers \[3\]"):
        speed_curve(lambda s: (np.zeros((2, 3)), np.array([2, 3])), [0, 1], [3, 3], [0.5], SHAPE)
    with pytest.raises(ValueError, match="for 2 rows"):
        speed_curve(lambda s: (np.zeros((1, 3)), np.array([2])), [0, 1], [3, 3], [0.5], SHAPE)
    with pytest.raises(ConfigError, match="speed"):
        speed_curve(lambda s: (np.zeros((2, 3)), np.array([2, 2])), [0, 1], [3, 3], [2.0], SHAPE)


def test_format_table() -> None:
    point = {"speed": 0.1, "rows": 4, "accuracy": 0.75, "macro_f1": 0.5, "mean_exit_layer": 1.5,
             "exit_share": {1: 0.5, 2: 0.5}, "relative_flops": 0.8123, "seconds": 0.5,
             "rows_per_second": 8.0}
    lines = format_table([point], 2).splitlines()
    assert lines[0].split() == ["speed", "accuracy", "macro", "F1", "exit", "(of", "2)", "L1",
                                "L2", "FLOPs", "rows/s"]
    assert lines[1].split() == ["0.1", "0.7500", "0.5000", "1.50", "50.0%", "50.0%", "0.812",
                                "8.0"]
    assert len({len(line) for line in lines}) == 1  # aligned columns


# ------------------------------------------------------------------------------------------------
# tinyfast evaluate, on a checkpoint and on a bundle (these build a tiny model: torch needed)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Any:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from test_early_exit import build_tiny

    return build_tiny(tmp_path_factory.mktemp("exit-curve"))


@pytest.fixture(scope="module")
def data(tiny: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[str]]:
    """A labeled TSV of random texts: (path, texts, gold labels)."""
    import runtime_fixtures as rf

    rng = np.random.default_rng(3)
    texts = [t for t in rf.random_texts(90, seed=31) if t.strip()]
    labels = [rf.LABELS[i] for i in rng.integers(0, len(rf.LABELS), size=len(texts))]
    path = tmp_path_factory.mktemp("exit-curve-data") / "dev.tsv"
    path.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in
                                                  zip(texts, labels, strict=True)),
                    encoding="utf-8")
    return path, texts, labels


def evaluate_json(capsys: pytest.CaptureFixture[str], tmp_path: Path, model: Path, data: Path,
                  *flags: str) -> tuple[dict[str, Any], str]:
    from tinyfast import cli

    out = tmp_path / "curve.json"
    code = cli.main(["evaluate", str(model), str(data), "--json", str(out), "--no-progress",
                     "--threads", "1", *flags])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(out.read_text(encoding="utf-8")), captured.out


def check_common(doc: dict[str, Any], kind: str, model: Path, data: Path, rows: int) -> None:
    import runtime_fixtures as rf

    assert doc["kind"] == kind and doc["model"] == str(model) and doc["data"] == str(data)
    assert doc["rows"] == rows and doc["num_layers"] == rf.LAYERS and doc["task"] == \
        "classification"
    assert doc["exits"] == [{"layer": k, "kind": kind_} for k, kind_ in
                            zip(rf.EXITS, rf.EXIT_KINDS, strict=True)]
    assert [p["speed"] for p in doc["points"]] == [0.0, 0.5, 1.0]
    zero, _, one = doc["points"]
    assert zero["mean_exit_layer"] == rf.LAYERS and zero["relative_flops"] == 1.0
    assert zero["exit_share"] == {"1": 0.0, "2": 0.0, "3": 0.0, "4": 1.0}
    assert one["mean_exit_layer"] == 1.0 and one["exit_share"]["1"] == 1.0
    assert 0 < one["relative_flops"] < 0.5
    for point in doc["points"]:
        assert point["rows"] == rows
        assert sum(point["exit_share"].values()) == pytest.approx(1.0, abs=1e-12)
        assert point["rows_per_second"] == pytest.approx(rows / point["seconds"])


def gold_accuracy(logits: np.ndarray, labels: list[str]) -> float:
    import runtime_fixtures as rf

    return float(np.mean(logits.argmax(1) == np.array([rf.LABELS.index(y) for y in labels])))


def test_evaluate_a_bundle_at_several_speeds(capsys, tmp_path, tiny, data) -> None:
    from tinyfast import Runtime

    path, texts, labels = data
    doc, table = evaluate_json(capsys, tmp_path, tiny.bundle, path, "--speed", "1,0,0.5")
    check_common(doc, "bundle", tiny.bundle, path, len(texts))
    runtime = Runtime.load(tiny.bundle, threads=1)
    lengths = runtime.tokenize(texts)["lengths"]
    shape = ModelShape.from_bundle(tiny.bundle)
    for point in doc["points"]:
        out = runtime.predict(texts, speed=point["speed"])
        assert point["accuracy"] == gold_accuracy(out.logits, labels)
        assert point["mean_exit_layer"] == pytest.approx(out.exit_layers.mean())
        assert point["relative_flops"] == pytest.approx(
            relative_flops(shape, lengths, out.exit_layers, point["speed"]))
    assert doc["points"][2]["relative_flops"] == pytest.approx(
        sum(layer_flops(shape, n) + branch_flops(shape, 1, n) for n in lengths)
        / sum(full_flops(shape, n) for n in lengths))
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["speed", "accuracy", "macro"] and len(lines) == 4
    assert lines[1].split()[0] == "0" and lines[3].split()[0] == "1"


def test_evaluate_a_checkpoint_at_several_speeds(capsys, tmp_path, tiny, data) -> None:
    import torch

    import runtime_fixtures as rf

    path, texts, labels = data
    doc, _ = evaluate_json(capsys, tmp_path, tiny.checkpoint, path, "--speed", "0,0.5,1")
    check_common(doc, "checkpoint", tiny.checkpoint, path, len(texts))
    enc = tiny.tokenizer(texts, padding=True, truncation=True, max_length=rf.MAX_LENGTH,
                         return_tensors="pt", return_token_type_ids=True)
    with torch.no_grad():
        plain = tiny.model(**enc).logits.numpy()
    assert doc["points"][0]["accuracy"] == gold_accuracy(plain, labels)
    # The same model as the f32 bundle: the same answers (both engines at the same speeds).
    bundle, _ = evaluate_json(capsys, tmp_path, tiny.bundle, path, "--speed", "0,0.5,1")
    for ours, theirs in zip(doc["points"], bundle["points"], strict=True):
        assert ours["accuracy"] == pytest.approx(theirs["accuracy"], abs=2 / len(texts))
        assert ours["mean_exit_layer"] == pytest.approx(theirs["mean_exit_layer"], abs=0.1)


def test_evaluate_without_speed_prints_metrics_for_both_kinds(capsys, tiny, data) -> None:
    from tinyfast import cli

    path, texts, _ = data
    results = []
    for model in (tiny.checkpoint, tiny.bundle):
        assert cli.main(["evaluate", str(model), str(path), "--no-progress"]) == 0
        results.append(json.loads(capsys.readouterr().out))
    assert results[0]["rows"] == results[1]["rows"] == len(texts)
    assert results[0]["accuracy"] == pytest.approx(results[1]["accuracy"], abs=1e-12)


def test_a_checkpoint_without_branches_runs_at_speed_0(capsys, tmp_path, tiny, data) -> None:
    from tinyfast import cli

    bare = tmp_path / "bare"
    shutil.copytree(tiny.checkpoint, bare)
    for name in ("branches.json", "branches.safetensors"):
        (bare / name).unlink()
    path, texts, _ = data
    doc, _ = evaluate_json(capsys, tmp_path, bare, path, "--speed", "0")
    assert doc["exits"] == [] and doc["points"][0]["exit_share"] == {"4": 1.0}
    line = one_error_line(capsys, cli.main(["evaluate", str(bare), str(path), "--speed", "0,0.5",
                                            "--no-progress"]), "tinyfast")
    assert "no early exits" in line and "tinyfast selfdistill" in line


def test_bundle_evaluation_needs_no_torch(tiny, data, tmp_path) -> None:
    path, _, _ = data
    out = tmp_path / "curve.json"
    code = ("import sys; from tinyfast.cli import main; "
            f"assert main(['evaluate', {str(tiny.bundle)!r}, {str(path)!r}, '--speed', '0,1', "
            f"'--json', {str(out)!r}, '--threads', '1']) == 0; "
            "assert 'torch' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], timeout=120, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text(encoding="utf-8"))["kind"] == "bundle"


@pytest.fixture(scope="module")
def regression_bundle(tiny: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import runtime_fixtures as rf

    return rf.build_regression_bundle(tmp_path_factory.mktemp("regression"))


def test_user_errors_are_one_line(capsys, tmp_path, tiny, data, regression_bundle) -> None:
    from tinyfast import cli

    path, _, _ = data
    wrong_columns = tmp_path / "wrong.tsv"
    wrong_columns.write_text("text\tlabel\nw1 w2\tneg\n", encoding="utf-8")
    unknown_label = tmp_path / "unknown.tsv"
    unknown_label.write_text("sentence\tlabel\nw1 w2\tneg\nw3\tmaybe\n", encoding="utf-8")
    missing = tmp_path / "nope.tsv"
    cases = [
        ([str(tiny.bundle), str(missing)], f"{missing}: no such file"),
        ([str(tiny.checkpoint), str(missing)], f"{missing}: no such file"),
        ([str(tiny.bundle), str(wrong_columns)], "no column 'sentence'"),
        ([str(tiny.checkpoint), str(wrong_columns), "--speed", "0.5"], "no column 'sentence'"),
        ([str(tiny.bundle), str(unknown_label)], f"{unknown_label}:3: unknown label 'maybe'"),
        ([str(regression_bundle), str(path), "--speed", "0,0.5"], "never exits early"),
        ([str(regression_bundle.parent / "regression-checkpoint"), str(path), "--speed", "0.5"],
         "a regression model never exits early"),
        ([str(tmp_path / "no-model"), str(path)], "no such checkpoint or bundle directory"),
        ([str(tiny.bundle), str(path), "--json", str(tmp_path / "no" / "x.json")],
         "no such directory"),
    ]
    for argv, words in cases:
        line = one_error_line(capsys, cli.main(["evaluate", *argv, "--no-progress"]), "tinyfast")
        assert words in line, (argv, line)


@pytest.mark.parametrize("speed, words", [
    ("nan", "must be a finite number in [0, 1]"),
    ("1.5", "must be a finite number in [0, 1]"),
    ("0,,1", "is empty"),
    ("fast", "is not a number"),
])
def test_bad_speed_flags_are_one_line(capsys, speed: str, words: str) -> None:
    from tinyfast import cli

    with pytest.raises(SystemExit) as info:
        cli.main(["evaluate", "model", "data.tsv", "--speed", speed])
    line = one_error_line(capsys, info.value.code, "tinyfast evaluate")
    assert "argument --speed: speed " in line and words in line
