"""benches/runtime_accuracy.py end to end on tiny random BERTs (seconds, not a measurement).

Two checkpoints built as tests/runtime_fixtures.py builds them: a single-sentence classifier with
FastBERT and linear branches beside it (speed 0 must ignore them), and a sentence-pair classifier
whose task file names other columns. Each dev file's labels are the torch model's own predictions
with a known set of rows changed, so the torch accuracy the bench reports is known exactly.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).parent))
import runtime_fixtures as rf  # noqa: E402
import tinyfast  # noqa: E402
from bench_scripts import BENCHES, load_bench  # noqa: E402

ROWS = 48
CHANGED_EVERY = 6  # rows 0, 6, 12, ... get a label the torch model did not predict
PAIR_LABELS = ["no", "yes"]


@pytest.fixture(scope="module")
def bench() -> types.ModuleType:
    return load_bench("runtime_accuracy.py")


def torch_predictions(model: Any, tokenizer: Any, first: list[str], second: list[str] | None):
    enc = tokenizer(
        first,
        second,
        truncation="longest_first",
        max_length=rf.MAX_LENGTH,
        padding=True,
        return_token_type_ids=True,  # this tokenizer leaves them out unless asked
        return_tensors="pt",
    )
    with torch.no_grad():
        return model(**enc).logits.argmax(dim=1).numpy()


def write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    lines = ["\t".join(header)] + ["\t".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def changed_labels(predicted: np.ndarray, names: list[str]) -> list[str]:
    """The predicted label names, with every CHANGED_EVERY-th row moved to the next label."""
    ids = predicted.copy()
    ids[::CHANGED_EVERY] = (ids[::CHANGED_EVERY] + 1) % len(names)
    return [names[i] for i in ids]


def single_checkpoint(workdir: Path) -> tuple[Path, Path]:
    """A 3-label single-sentence checkpoint with branches, and its dev TSV."""
    from tinyfast.data import Columns, TaskMeta
    from tinyfast.models import save_classifier

    model, tokenizer = rf.tiny_classifier(seed=0), rf.tiny_tokenizer()
    branches = rf.tiny_branches(model)
    rf.calibrate(model, branches, tokenizer)
    checkpoint = workdir / "single"
    meta = TaskMeta("classification", list(rf.LABELS), Columns(), max_length=rf.MAX_LENGTH)
    save_classifier(model, tokenizer, meta, checkpoint)
    branches.save(checkpoint)
    texts = [t for t in rf.random_texts(3 * ROWS, seed=7) if t.strip()][:ROWS]
    labels = changed_labels(torch_predictions(model, tokenizer, texts, None), list(rf.LABELS))
    data = write_tsv(
        workdir / "single.tsv",
        ["label", "sentence"],
        [[label, text] for text, label in zip(texts, labels, strict=True)],
    )
    return checkpoint, data


def pair_checkpoint(workdir: Path) -> tuple[Path, Path]:
    """A 2-label sentence-pair checkpoint (columns question/passage/answer), and its dev TSV."""
    from tinyfast.data import Columns, TaskMeta
    from tinyfast.models import save_classifier

    model, tokenizer = rf.tiny_classifier(seed=1, num_labels=2), rf.tiny_tokenizer()
    rf.calibrate(model, None, tokenizer)
    checkpoint = workdir / "pair"
    columns = Columns(text_a="question", text_b="passage", label="answer")
    meta = TaskMeta("classification", PAIR_LABELS, columns, max_length=rf.MAX_LENGTH)
    save_classifier(model, tokenizer, meta, checkpoint)
    pairs = [(a, b) for a, b in rf.random_pairs(3 * ROWS, seed=5) if a.strip() and b.strip()]
    pairs = pairs[:ROWS]
    first, second = [a for a, _ in pairs], [b for _, b in pairs]
    labels = changed_labels(torch_predictions(model, tokenizer, first, second), PAIR_LABELS)
    data = write_tsv(
        workdir / "pair.tsv",
        ["answer", "passage", "question"],
        [[y, b, a] for (a, b), y in zip(pairs, labels, strict=True)],
    )
    return checkpoint, data


@pytest.fixture(scope="module")
def report(bench: types.ModuleType, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    workdir = tmp_path_factory.mktemp("accuracy")
    single, single_data = single_checkpoint(workdir)
    pair, pair_data = pair_checkpoint(workdir)
    out = workdir / "accuracy.json"
    argv = [
        "--model",
        str(single),
        "--data",
        str(single_data),
        "--model",
        str(pair),
        "--data",
        str(pair_data),
        "--out",
        str(out),
        "--threads",
        "1",
        "--batch-size",
        "8",
    ]
    assert bench.main(argv) == 0
    return json.loads(out.read_text())


def test_runs_are_in_order_with_their_tasks(report: dict[str, Any]) -> None:
    assert report["benchmark"] == "runtime_accuracy"
    runs = report["runs"]
    assert [Path(r["model"]).name for r in runs] == ["single", "pair"]
    single, pair = runs
    assert single["labels"] == list(rf.LABELS) and pair["labels"] == PAIR_LABELS
    assert pair["columns"] == {"text_a": "question", "text_b": "passage", "label": "answer"}
    for run in runs:
        assert run["rows"] == ROWS
        assert sum(run["gold_label_counts"].values()) == ROWS
    assert report["settings"]["batch_size"] == 8
    assert report["settings"]["threads"]["tinyfast_threads"] == 1


def test_recorded_paths_are_never_absolute(
    report: dict[str, Any], bench: types.ModuleType, tmp_path: Path
) -> None:
    for run in report["runs"]:
        assert not Path(run["model"]).is_absolute() and not Path(run["data"]).is_absolute()
    repo = BENCHES.parent
    assert bench.recorded_path(repo / "benches" / "results") == "benches/results"
    shared = repo.parent / "shared" / "data" / "sst2" / "dev.tsv"
    assert bench.recorded_path(shared) == "../shared/data/sst2/dev.tsv"
    built = tmp_path / "teacher" / "model"
    assert bench.recorded_path(built, tmp_path) == "<OUT>/teacher/model"
    assert bench.recorded_path(built, tmp_path / "teacher", "<WORK>") == "<WORK>/model"
    if not tmp_path.is_relative_to(repo.parent):
        assert bench.recorded_path(built) == "<elsewhere>/teacher/model"


def test_torch_accuracy_is_the_known_one(report: dict[str, Any]) -> None:
    changed = len(range(0, ROWS, CHANGED_EVERY))
    for run in report["runs"]:
        assert run["torch_fp32"]["accuracy"] == pytest.approx(1 - changed / ROWS)
        assert run["torch_fp32"]["rows_per_s"] > 0


@pytest.mark.skipif(not hasattr(tinyfast, "Runtime"), reason="runtime not built")
def test_bundles_against_torch(report: dict[str, Any]) -> None:
    for run in report["runs"]:
        torch_acc = run["torch_fp32"]["accuracy"]
        for name, quantization in (("tinyfast_int8", "int8"), ("tinyfast_f32", "none")):
            res = run[name]
            assert res["settings"]["quantization"] == quantization
            assert res["settings"]["speed"] == 0.0
            assert res["settings"]["rows_answered_by_head"] == ROWS  # speed 0: no early exit
            assert res["accuracy_diff_points_vs_torch"] == pytest.approx(
                100 * (res["accuracy"] - torch_acc)
            )
            assert res["rows_disagreeing_with_torch"] == round(
                ROWS * (1 - res["label_agreement_vs_torch"])
            )
            assert 0 <= res["mean_abs_logit_diff_vs_torch"] <= res["max_abs_logit_diff_vs_torch"]
            assert res["rows_per_s"] > 0
        f32, int8 = run["tinyfast_f32"], run["tinyfast_int8"]
        # The f32 bundle is the torch model up to float summation order (tests/test_runtime.py).
        assert f32["max_abs_logit_diff_vs_torch"] <= 1e-4
        assert f32["label_agreement_vs_torch"] == 1.0
        # int8 on a random tiny BERT: loose, as in tests/test_runtime.py.
        assert 0 < int8["max_abs_logit_diff_vs_torch"] < 5
        assert int8["label_agreement_vs_torch"] >= 0.85
        assert run["token_ids"]["rows"] == ROWS
        assert run["token_ids"]["mismatched_rows"] == 0 and run["token_ids"]["identical"]
    exits = report["runs"][0]["tinyfast_int8"]["settings"]["bundle_exits"]
    assert [e["layer"] for e in exits] == rf.EXITS  # the branches were exported, and ignored
    assert report["runs"][1]["tinyfast_int8"]["settings"]["bundle_exits"] == []


@pytest.mark.skipif(not hasattr(tinyfast, "Runtime"), reason="runtime not built")
def test_goals_follow_the_numbers(report: dict[str, Any]) -> None:
    for run in report["runs"]:
        goals = run["goals"]
        int8, f32 = run["tinyfast_int8"], run["tinyfast_f32"]
        points = goals["int8_accuracy_within_points"]
        assert points["value"] == pytest.approx(int8["accuracy_diff_points_vs_torch"])
        assert points["met"] is (abs(points["value"]) <= 0.3)
        agreement = goals["int8_label_agreement"]
        assert agreement["value"] == int8["label_agreement_vs_torch"]
        assert agreement["met"] is (agreement["value"] >= 0.99)
        logits = goals["f32_max_abs_logit_diff"]
        assert logits["value"] == f32["max_abs_logit_diff_vs_torch"] and logits["met"] is True
        assert run["goals_met"] is all(g["met"] for g in goals.values())
    assert report["goals_met"] is all(r["goals_met"] for r in report["runs"])


def test_goals_without_runtime_numbers_are_unknown(bench: types.ModuleType) -> None:
    goals = bench.goals(0.9, {"skipped": "runtime not built"}, {"skipped": "runtime not built"})
    assert all(g["value"] is None and g["met"] is None for g in goals.values())
    goals = bench.goals(
        0.9,
        {"accuracy": 0.8975, "label_agreement_vs_torch": 0.99},
        {"max_abs_logit_diff_vs_torch": 2e-4},
    )
    assert goals["int8_accuracy_within_points"]["value"] == pytest.approx(-0.25)
    assert goals["int8_accuracy_within_points"]["met"] is True
    assert goals["int8_label_agreement"]["met"] is True
    assert goals["f32_max_abs_logit_diff"]["met"] is False


def test_regression_is_skipped_and_pairs_are_checked(
    bench: types.ModuleType, tmp_path: Path
) -> None:
    from tinyfast.data import Columns, TaskMeta
    from tinyfast.models import save_classifier

    checkpoint = tmp_path / "regression"
    save_classifier(
        rf.tiny_classifier(seed=2, num_labels=1),
        rf.tiny_tokenizer(),
        TaskMeta("regression", [], Columns(), max_length=rf.MAX_LENGTH),
        checkpoint,
    )
    data = write_tsv(tmp_path / "dev.tsv", ["sentence", "label"], [["w1 w2", "0.5"]])
    out = tmp_path / "out.json"
    assert bench.main(["--model", str(checkpoint), "--data", str(data), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert "classification" in report["runs"][0]["skipped"]
    assert report["goals_met"] is None
    with pytest.raises(SystemExit):
        bench.parse_args(["--model", "a", "--model", "b", "--data", "x"])
