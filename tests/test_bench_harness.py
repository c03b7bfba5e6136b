"""``tinyfast bench`` and the harness under it (``tinyfast.bench``) on the runtime tests' tiny
classifier (4 layers, hidden 32, branches after layers 1-3): the report's schema, the OpenVINO
contender, one-line errors, a bundle without its checkpoint. Seconds, not a measurement."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import runtime_fixtures as rf  # noqa: E402
from test_cli import one_error_line  # noqa: E402
from tinyfast import cli  # noqa: E402
from tinyfast.bench import contenders_openvino  # noqa: E402
from tinyfast.bench.encoding import FileEncoder, hf_encoder  # noqa: E402
from tinyfast.bench.plan import CONTENDERS, tinyfast_name  # noqa: E402
from tinyfast.bench.timing import latency_ms, rotated  # noqa: E402

ROWS = 24
SPEEDS = [0.0, 0.5]
NAMES = [*CONTENDERS, *(tinyfast_name(s) for s in SPEEDS)]
FAST = ["--rounds", "2", "--warmup", "1", "--latency-rows", "6", "--batch-size", "8",
        "--calibration-rows", "16", "--no-progress"]
OPENVINO_MISSING = contenders_openvino.missing()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> rf.TinyBundles:
    return rf.build_bundles(tmp_path_factory.mktemp("bench-tiny"))


def write_data(path: Path, rows: int = ROWS, seed: int = 0, labels: list[str] = rf.LABELS,
               ) -> Path:
    rng = random.Random(seed)
    texts = [t for t in rf.random_texts(3 * rows, seed=seed) if t.strip()][:rows]
    lines = ["sentence\tlabel", *(f"{t}\t{rng.choice(labels)}" for t in texts)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_data(tmp_path_factory.mktemp("bench-data") / "dev.tsv")


@pytest.fixture(scope="module")
def report(tiny: rf.TinyBundles, data: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> dict[str, Any]:
    """Every contender on the checkpoint, with the checkpoint itself as the teacher."""
    work = tmp_path_factory.mktemp("bench-run")
    out = work / "bench.json"
    argv = ["bench", str(tiny.checkpoint), "--data", str(data), "--teacher", str(tiny.checkpoint),
            "--speeds", ",".join(f"{s:g}" for s in SPEEDS), "--out", str(out), "--work-dir",
            str(work / "work"), *FAST]
    assert cli.main(argv) == 0
    return json.loads(out.read_text(encoding="utf-8"))


def has_numbers(record: dict[str, Any]) -> bool:
    return "accuracy" in record


# --------------------------------------------------------------------------------------------
# The report of a checkpoint


@pytest.mark.slow
def test_every_contender_has_numbers_or_a_reason(report: dict[str, Any]) -> None:
    assert report["benchmark"] == "tinyfast_bench" and report["schema_version"] == 1
    assert list(report["contenders"]) == NAMES
    for name, rec in report["contenders"].items():
        assert "failed" not in rec, (name, rec)
        if name == "openvino_int8" and OPENVINO_MISSING:
            assert rec == {"skipped": OPENVINO_MISSING}
            continue
        assert has_numbers(rec), (name, rec)
        assert 0 <= rec["accuracy"] <= 1 and 0 <= rec["macro_f1"] <= 1
        lat = rec["latency_ms"]
        assert lat["calls"] == 6
        assert 0 < lat["min"] <= lat["p50"] <= lat["p95"] <= lat["max"]
        assert len(rec["pass_seconds"]) == 2
        assert rec["throughput_rows_per_s"] == pytest.approx(
            ROWS / float(np.median(rec["pass_seconds"])))
        assert rec["size_bytes"] > 0 and rec["size_files"]
        memory = rec["memory"]
        assert 0 < memory["rss_at_start_mb"] <= memory["peak_rss_after_load_mb"]
        assert memory["peak_rss_after_load_mb"] <= memory["peak_rss_mb"]
        assert memory["peak_rss_over_start_mb"] == pytest.approx(
            memory["peak_rss_mb"] - memory["rss_at_start_mb"])
        assert rec["load_seconds"] > 0
    settings = report["settings"]
    assert (settings["threads"], settings["batch_size"], settings["rounds"]) == (1, 8, 2)
    assert settings["latency_rows"] == 6 and settings["speeds"] == SPEEDS
    assert report["data"]["rows"] == ROWS and sum(report["data"]["label_counts"].values()) == ROWS
    model = report["model"]
    assert model["kind"] == "checkpoint" and model["num_layers"] == rf.LAYERS
    assert model["max_length"] == rf.MAX_LENGTH and model["labels"] == rf.LABELS
    assert [e["layer"] for e in model["exits"]] == rf.EXITS
    assert report["machine"]["versions"]["tinyfast"]


@pytest.mark.slow
def test_every_contender_is_compared_with_torch_fp32(report: dict[str, Any]) -> None:
    contenders = report["contenders"]
    ref = contenders["torch_fp32"]
    assert ref["label_agreement_with_torch_fp32"] == 1.0
    assert ref["accuracy_minus_torch_fp32_points"] == 0.0
    assert ref["max_abs_prob_diff_with_torch_fp32"] == 0.0
    # The teacher is the same checkpoint here: the same answers.
    assert contenders["teacher_torch_fp32"]["label_agreement_with_torch_fp32"] == 1.0
    for name, rec in contenders.items():
        if not has_numbers(rec):
            continue
        assert rec["accuracy_minus_torch_fp32_points"] == pytest.approx(
            100 * (rec["accuracy"] - ref["accuracy"]))
        assert 0 <= rec["max_abs_prob_diff_with_torch_fp32"] <= 1
        if name != tinyfast_name(0.5):  # int8 (or fp32) of the same model, no early exit
            assert rec["label_agreement_with_torch_fp32"] >= 0.75, name
    if not OPENVINO_MISSING:
        settings = contenders["openvino_int8"]["settings"]
        assert settings["quantization"]["calibration_rows"] == 16
        assert settings["quantization"]["model_type"] == "TRANSFORMER"
        assert settings["int8_graph_ops"]["FakeQuantize"] > 0
        assert settings["static_shapes"] == [[1, rf.MAX_LENGTH], [8, rf.MAX_LENGTH]]
        assert settings["compile_config"]["INFERENCE_NUM_THREADS"] == 1


@pytest.mark.slow
def test_tinyfast_speeds_report_their_exits(report: dict[str, Any]) -> None:
    full = report["contenders"][tinyfast_name(0.0)]
    early = report["contenders"][tinyfast_name(0.5)]
    assert full["speed"] == 0.0 and full["mean_exit_layer"] == rf.LAYERS
    assert full["exit_share"] == {str(rf.LAYERS): 1.0}
    assert early["speed"] == 0.5 and 1 <= early["mean_exit_layer"] <= rf.LAYERS
    assert sum(early["exit_share"].values()) == pytest.approx(1.0)
    assert set(early["exit_share"]) <= {str(k) for k in [*rf.EXITS, rf.LAYERS]}
    assert full["settings"]["kernel"] and full["settings"]["threads"] == 1


@pytest.mark.slow
def test_sizes_and_memory_belong_to_each_contender(report: dict[str, Any],
                                                   tiny: rf.TinyBundles) -> None:
    contenders = report["contenders"]
    weights = tiny.checkpoint / "model.safetensors"
    assert contenders["torch_fp32"]["size_bytes"] == weights.stat().st_size
    assert contenders["torch_fp32"]["size_files"] == ["model.safetensors"]
    bundle = Path(report["model"]["bundle"])
    assert contenders[tinyfast_name(0.0)]["size_bytes"] == sum(
        (bundle / f).stat().st_size for f in ("model.safetensors", "tinyfast.json"))
    assert contenders["torch_int8_dynamic"]["size_files"] == ["torch_int8_dynamic.pt"]
    assert contenders["ort_int8"]["size_files"] == ["ort_int8.onnx"]
    # A fresh process each: the runtime's worker never loads torch, the torch workers do.
    assert (contenders[tinyfast_name(0.0)]["memory"]["peak_rss_mb"]
            < contenders["torch_fp32"]["memory"]["peak_rss_mb"])


# --------------------------------------------------------------------------------------------
# A bundle without its checkpoint


def test_a_bundle_without_checkpoint_runs_the_runtime_alone(
        tiny: rf.TinyBundles, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bundle.json"
    argv = ["bench", str(tiny.int8), "--data", str(data), "--speeds", "0", "--out", str(out),
            "--rounds", "1", "--warmup", "1", "--latency-rows", "4", "--no-progress"]
    assert cli.main(argv) == 0
    report = json.loads(out.read_text(encoding="utf-8"))
    assert list(report["contenders"]) == [*CONTENDERS, tinyfast_name(0.0)]
    assert report["model"]["kind"] == "bundle" and report["model"]["checkpoint"] is None
    for name in CONTENDERS:
        reason = report["contenders"][name]["skipped"]
        assert ("--checkpoint" in reason) if name != "teacher_torch_fp32" else \
            reason == "no --teacher given"
    ours = report["contenders"][tinyfast_name(0.0)]
    assert has_numbers(ours) and ours["label_agreement_with_torch_fp32"] is None
    assert ours["max_abs_prob_diff_with_torch_fp32"] is None
    table = capsys.readouterr().out
    assert tinyfast_name(0.0) in table and "without --checkpoint" in table


# --------------------------------------------------------------------------------------------
# One-line errors


def test_bad_inputs_are_one_line_errors(tiny: rf.TinyBundles, data: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    model, bundle = str(tiny.checkpoint), str(tiny.int8)
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    unknown = write_data(tmp_path / "unknown.tsv", rows=4, labels=["maybe"])
    regression = rf.build_regression_bundle(tmp_path)
    capsys.readouterr()  # what building the models printed (progress bars)
    cases = [
        ([str(tmp_path / "nope"), "--data", str(data)], "no such checkpoint or bundle"),
        ([str(empty), "--data", str(data)], "neither a runtime bundle"),
        ([model, "--data", str(tmp_path / "missing.tsv")], "no such file"),
        ([model, "--data", str(unknown)], "unknown.tsv:2: unknown label 'maybe'"),
        ([model, "--data", str(data), "--text-a", "text"], "no column 'text'"),
        ([model, "--data", str(data), "--checkpoint", model], "--checkpoint is for a bundle"),
        ([bundle, "--data", str(data), "--checkpoint", str(empty)], "no config.json"),
        ([model, "--data", str(data), "--teacher", str(tmp_path / "t")], "--teacher"),
        ([model, "--data", str(data), "--contenders", "torch_fp64"], "unknown torch_fp64"),
        ([model, "--data", str(data), "--out", str(tmp_path / "no" / "r.json")],
         "no such directory"),
        ([str(regression), "--data", str(data)], "regression"),
    ]
    for argv, expected in cases:
        line = one_error_line(capsys, cli.main(["bench", *argv]), "tinyfast")
        assert expected in line, (argv, line)
    flags = [
        (["--speeds", "2"], "--speeds"),
        (["--threads", "0"], "--threads"),
        (["--batch-size", "x"], "--batch-size"),
    ]
    for argv, expected in flags:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["bench", model, "--data", str(data), *argv])
        line = one_error_line(capsys, exit_info.value.code, "tinyfast bench")
        assert expected in line
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bench", model])
    assert "--data" in one_error_line(capsys, exit_info.value.code, "tinyfast bench")


# --------------------------------------------------------------------------------------------
# The pieces


@pytest.mark.skipif(bool(OPENVINO_MISSING), reason=f"OpenVINO contender: {OPENVINO_MISSING}")
def test_openvino_contender_on_a_tiny_model(tiny: rf.TinyBundles, tmp_path: Path) -> None:
    from tinyfast.bench.contenders_ort import export_onnx

    seq = rf.MAX_LENGTH
    _, names, export = export_onnx(tiny.checkpoint, tiny.tokenizer, tmp_path / "fp32.onnx")
    assert export["fp32_onnx_max_abs_logit_diff_vs_torch"] < 1e-4
    encode = FileEncoder(tiny.checkpoint / "tokenizer.json", tiny.tokenizer.pad_token_id,
                         static=True)
    texts = [t for t in rf.random_texts(80, seed=5) if t.strip()]
    calibration = contenders_openvino.calibration_rows(encode, texts[:32], seq)
    assert {k: v.shape for k, v in calibration[0].items()} == {
        "input_ids": (1, seq), "attention_mask": (1, seq), "token_type_ids": (1, seq)}
    xml = tmp_path / "int8.xml"
    info = contenders_openvino.quantize_openvino(tmp_path / "fp32.onnx", names, calibration, seq,
                                                 xml)
    assert info["int8_graph_ops"]["FakeQuantize"] > 0
    assert info["model_bytes"] == xml.stat().st_size + xml.with_suffix(".bin").stat().st_size
    engine = contenders_openvino.OpenVINOEngine(xml, threads=1)
    assert engine.seq_len == seq
    predict = contenders_openvino.openvino_predict(engine, encode, batches=(1, 8))
    held_out = texts[32:45]  # 13 rows: one call of 8, then a short one padded to 8
    got = [predict(held_out[i:i + 8], seq) for i in range(0, len(held_out), 8)]
    probs = np.concatenate([g.probabilities for g in got])
    assert sorted(engine.compiled) == [8]  # static shapes: the short batch was padded
    single = predict(held_out[:1], seq)
    assert sorted(engine.compiled) == [1, 8]
    np.testing.assert_allclose(single.probabilities[0], probs[0], atol=1e-5)
    enc = tiny.tokenizer(held_out, padding=True, truncation=True, max_length=seq,
                         return_tensors="pt")
    with torch.no_grad():
        want = torch.softmax(tiny.model(**enc).logits, -1).numpy()
    # Static int8 (activations per tensor) of a random model whose logits spread over ~6: up to
    # ~0.3 in a probability here (fp32 through the same path matches torch to 1e-5).
    assert np.abs(probs - want).max() < 0.4
    assert np.mean(probs.argmax(1) == want.argmax(1)) >= 0.75
    with pytest.raises(ValueError, match="static length"):
        predict(held_out[:1], seq + 1)


def test_file_encoder_gives_the_hugging_face_ids(tiny: rf.TinyBundles) -> None:
    texts = rf.random_texts(12, seed=9, max_words=40)  # some longer than MAX_LENGTH
    pairs = rf.random_pairs(12, seed=4, max_words=20)
    pad = tiny.tokenizer.pad_token_id
    for inputs in (texts, pairs):
        for static in (False, True):
            ours = FileEncoder(tiny.checkpoint / "tokenizer.json", pad, static)(inputs, 24)
            theirs = hf_encoder(tiny.tokenizer, "np", static)(inputs, 24)
            assert {"input_ids", "attention_mask"} <= set(theirs)
            for name in theirs:  # this tokenizer's HF side returns no token_type_ids
                np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)


def test_turns_rotate_and_latency_percentiles() -> None:
    assert [rotated("abc", r) for r in range(4)] == [list("abc"), list("bca"), list("cab"),
                                                     list("abc")]
    assert rotated([], 3) == []
    stats = latency_ms([0.001, 0.002, 0.003, 0.004], (50, 95))
    assert stats["p50"] == pytest.approx(2.5) and stats["p95"] == pytest.approx(3.85)
    assert (stats["min"], stats["max"], stats["mean"]) == pytest.approx((1.0, 4.0, 2.5))
