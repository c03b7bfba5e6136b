"""benches/int8_calibration.py end to end on the tiny fine-tuned teacher with random branches and
the demo task (seconds, not a measurement): the held-out rows avoid every calibration row, and
the result file's figures agree with each other."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")

from bench_scripts import load_bench  # noqa: E402


@pytest.fixture(scope="module")
def report(tmp_path_factory, finetuned_teacher, demo_data) -> dict:
    from transformers import BertForSequenceClassification

    from tinyfast.models.branches import random_branches

    work = tmp_path_factory.mktemp("int8-calibration")
    model_dir = work / "model"
    shutil.copytree(finetuned_teacher[0] / "model", model_dir)
    model = BertForSequenceClassification.from_pretrained(model_dir)
    layers = model.config.num_hidden_layers
    random_branches(model, list(range(1, layers)), ["linear"] * (layers - 1), seed=0).save(
        model_dir)
    out = work / "result.json"
    code = load_bench("int8_calibration.py").main([
        "--model", str(model_dir), "--text", str(demo_data["train"]), "--work",
        str(work / "work"), "--out", str(out), "--rows", "0,16", "--residual-layers", "0,1",
        "--heldout", "20", "--speeds", "0,0.5,0.9", "--threads", "1",
    ])
    assert code == 0
    return json.loads(out.read_text(encoding="utf-8"))


def test_every_variant_at_every_speed(report):
    assert set(report["variants"]) == {"0", "16", "0-r1", "16-r1"}
    assert report["variants"]["16-r1"]["residual_layers"] == 1
    assert report["heldout_rows"] == 20 and report["speeds"] == [0.0, 0.5, 0.9]
    for v in report["variants"].values():
        assert [p["speed"] for p in v["points"]] == report["speeds"]
        assert v["exit_layer_differs_total"] == sum(p["exit_layer_differs"] for p in v["points"])
        assert v["label_differs_total"] == sum(p["label_differs"] for p in v["points"])
        assert all(0 <= p["label_differs"] <= 20 for p in v["points"])
        assert v["points"][0]["exit_layer_differs"] == 0  # speed 0 runs every layer
    assert not Path(report["model"]).is_absolute() and not Path(report["text"]).is_absolute()


def test_heldout_rows_avoid_every_calibration_row():
    from tinyfast.export.calibration import spread_rows

    bench = load_bench("int8_calibration.py")
    held = bench.heldout_rows(100, [0, 10, 30], 25)
    assert len(held) == 25 and held == sorted(set(held))
    assert not set(held) & (set(spread_rows(100, 10)) | set(spread_rows(100, 30)))
    with pytest.raises(SystemExit):
        bench.heldout_rows(5, [5], 3)
