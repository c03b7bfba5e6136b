"""Calibrated int8 export: SmoothQuant-style input smoothing and GPTQ weight rounding
(``tinyfast.bundle.smoothing``, ``tinyfast.bundle.gptq``, ``tinyfast.export.calibration``)
against simple references, the bundle contract for ``"smoothing": true``, and the runtime
against the numpy reference on a smoothed bundle."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tinyfast.bundle import ReferenceModel, quantize_weights, read_bundle_config
from tinyfast.bundle.gptq import quantize_weights_gptq
from tinyfast.bundle.quantize import int8_linear
from tinyfast.bundle.smoothing import smoothing_factors
from tinyfast.errors import ConfigError, DataError

torch = pytest.importorskip("torch")

from test_export import (  # noqa: E402
    LAYERS,
    as_numpy,
    meta,
    random_inputs,
    tiny_branches,
    tiny_classifier,
    tiny_tokenizer,
    torch_logits,
)
from tinyfast.export import export  # noqa: E402
from tinyfast.models import save_classifier  # noqa: E402

# ------------------------------------------------------------------------------------------------
# Smoothing factors


def test_smoothing_factors_are_smoothquants_rule() -> None:
    amax = np.array([4.0, 1.0, 0.0, 9.0])
    weight = np.array([[1.0, -0.5, 2.0, 0.0], [-2.0, 0.25, 1.0, 0.0]])
    m = smoothing_factors(amax, weight, alpha=0.5)
    # m_j = max|W_j|^0.5 / amax_j^0.5; a feature never seen, or with zero weights, keeps 1.
    np.testing.assert_allclose(m, [np.sqrt(2.0) / 2.0, np.sqrt(0.5), 1.0, 1.0], rtol=1e-6)
    assert m.dtype == np.float32
    np.testing.assert_allclose(smoothing_factors(amax, weight, alpha=1.0)[:2], [0.25, 1.0])
    np.testing.assert_array_equal(smoothing_factors(amax, weight, alpha=0.0)[:2], [2.0, 0.5])


def test_smoothing_factors_reject_bad_input() -> None:
    w = np.ones((2, 3))
    with pytest.raises(ValueError, match="alpha"):
        smoothing_factors(np.ones(3), w, alpha=1.5)
    with pytest.raises(ValueError, match="shape"):
        smoothing_factors(np.ones(4), w)
    with pytest.raises(ValueError, match="finite"):
        smoothing_factors(np.array([1.0, np.nan, 1.0]), w)


def test_smoothing_moves_outlier_ranges_into_the_weights() -> None:
    """With an outlier feature, the smoothed int8 linear's error is far below plain rounding's."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 48)).astype(np.float32)
    x[:, 5] *= 40.0  # BERT-like outlier feature
    w = (rng.normal(size=(32, 48)) / 7).astype(np.float32)
    b = np.zeros(32, np.float32)
    exact = x.astype(np.float64) @ w.T.astype(np.float64)
    q, s = quantize_weights(w)
    plain = int8_linear(x, q, s, b)
    m = smoothing_factors(np.abs(x).max(axis=0), w)
    q2, s2 = quantize_weights(w / m[None, :])
    smoothed = int8_linear((x * m).astype(np.float32), q2, s2, b)
    err = lambda y: float(np.sqrt(((y - exact) ** 2).mean()))  # noqa: E731
    assert err(smoothed) < 0.5 * err(plain)


# ------------------------------------------------------------------------------------------------
# GPTQ rounding


def test_gptq_with_uncorrelated_inputs_is_plain_rounding() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(size=(16, 24)).astype(np.float32)
    # Exact ties of the scale as well as random values.
    w[0, :5] = np.array([0.5, 1.5, -2.5, 127.0, -127.0], np.float32) * (np.abs(w[0]).max() / 127)
    codes, scales = quantize_weights_gptq(w, np.diag(rng.uniform(0.5, 3.0, size=24)))
    want_codes, want_scales = quantize_weights(w)
    np.testing.assert_array_equal(codes, want_codes)
    np.testing.assert_array_equal(scales, want_scales)


def test_gptq_lowers_the_output_error_on_correlated_inputs() -> None:
    """Against plain rounding, measured on the calibration inputs (the objective) and on fresh
    inputs from the same distribution (what the runtime sees)."""
    rng = np.random.default_rng(2)
    mix = rng.normal(size=(64, 64))
    x = (rng.normal(size=(4000, 64)) @ mix).astype(np.float64)
    fresh = (rng.normal(size=(2000, 64)) @ mix).astype(np.float64)
    w = rng.normal(size=(48, 64)).astype(np.float32)
    codes, scales = quantize_weights_gptq(w, x.T @ x)
    plain_codes, plain_scales = quantize_weights(w)
    np.testing.assert_array_equal(scales, plain_scales)
    assert codes.dtype == np.int8 and np.abs(codes.astype(int)).max() <= 127

    def err(c: np.ndarray, s: np.ndarray, inputs: np.ndarray) -> float:
        return float((((c.astype(np.float64) * s[:, None] - w) @ inputs.T) ** 2).mean())

    assert err(codes, scales, x) < 0.7 * err(plain_codes, plain_scales, x)
    assert err(codes, scales, fresh) < 0.7 * err(plain_codes, plain_scales, fresh)
    # Each code stays next to the weight it stands for.
    assert np.abs(codes.astype(int) - plain_codes.astype(int)).max() <= 3


def obq_reference(w: np.ndarray, hessian: np.ndarray, damp: float = 0.01) -> np.ndarray:
    """GPTQ's rule in its first, explicit form (optimal brain quantization in a fixed order):
    round column i, spread its error over the later columns with the inverse of H restricted to
    the columns not yet rounded, then drop column i from that inverse."""
    h = hessian + damp * np.mean(np.diag(hessian)) * np.eye(len(hessian))
    inv = np.linalg.inv(h)
    _, scales = quantize_weights(w)
    work = w.astype(np.float64)
    codes = np.zeros(w.shape, dtype=np.int64)
    for i in range(w.shape[1]):
        q = np.clip(np.sign(work[:, i]) * np.floor(np.abs(work[:, i] / scales) + 0.5), -127, 127)
        codes[:, i] = q
        err = (work[:, i] - q * scales) / inv[i, i]
        work[:, i + 1:] -= np.outer(err, inv[i, i + 1:])
        inv = inv - np.outer(inv[:, i], inv[i, :]) / inv[i, i]
    return codes


def test_gptq_equals_the_explicit_inverse_form() -> None:
    rng = np.random.default_rng(6)
    x = rng.normal(size=(500, 20)) @ rng.normal(size=(20, 20))
    w = rng.normal(size=(30, 20)).astype(np.float32)
    codes, _ = quantize_weights_gptq(w, x.T @ x)
    want = obq_reference(w, x.T @ x)
    # Float rounding may tip a value sitting on a half step; nothing else may differ.
    assert (codes.astype(np.int64) == want).mean() >= 0.995
    assert np.abs(codes.astype(np.int64) - want).max() <= 1


def test_gptq_handles_dead_features_and_rejects_bad_moments() -> None:
    rng = np.random.default_rng(3)
    w = rng.normal(size=(8, 6)).astype(np.float32)
    x = rng.normal(size=(100, 6))
    x[:, 2] = 0.0  # a feature the calibration text never moved
    codes, _ = quantize_weights_gptq(w, x.T @ x)
    assert codes.shape == (8, 6)
    with pytest.raises(ValueError, match="shape"):
        quantize_weights_gptq(w, np.eye(5))
    bad = np.eye(6)
    bad[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        quantize_weights_gptq(w, bad)
    with pytest.raises(ValueError, match="finite"):
        quantize_weights_gptq(np.full((2, 6), np.inf, np.float32), np.eye(6))


# ------------------------------------------------------------------------------------------------
# Export with calibration


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("calibrated")
    model = tiny_classifier(seed=4)
    with torch.no_grad():  # an outlier feature in every hidden state, as in real BERTs
        model.bert.embeddings.LayerNorm.bias[3] = 12.0
        for layer in model.bert.encoder.layer:
            layer.attention.output.LayerNorm.bias[3] = 12.0
            layer.output.LayerNorm.bias[3] = 12.0
    checkpoint = work / "model"
    save_classifier(model, tiny_tokenizer(), meta(), checkpoint)
    tiny_branches(model).save(checkpoint)
    rng = np.random.default_rng(5)
    text = work / "calibration.tsv"
    lines = ["sentence"] + [" ".join(f"w{rng.integers(0, 55)}" for _ in range(rng.integers(2, 14)))
                            for _ in range(300)]
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    plain = export(checkpoint, work / "plain")
    smoothed = export(checkpoint, work / "smoothed", calibration=text, calibration_rows=200)
    return {"model": model, "checkpoint": checkpoint, "text": text, "plain": plain,
            "smoothed": smoothed, "work": work}


def test_calibrated_bundle_declares_and_holds_smoothing(calibrated: dict[str, Any]) -> None:
    config = read_bundle_config(calibrated["smoothed"] / "tinyfast.json")
    assert config["smoothing"] is True
    record = config["source"]["calibration"]
    assert record["rows"] == 200 and record["tokens"] > 200
    assert record["weight_rounding"] == "gptq" and record["smoothing_alpha"] == 0.5
    reference = ReferenceModel.load(calibrated["smoothed"])
    for layer in range(LAYERS):
        for name in ("qkv", "attn_out", "ffn_in", "ffn_out"):
            m = reference.tensors[f"layers.{layer}.{name}.smooth"]
            assert m.dtype == np.float32 and (m > 0).all() and np.isfinite(m).all()
        # The outlier feature is the one scaled down the most at the LayerNorm-fed inputs.
        for name in ("qkv", "ffn_in"):
            assert int(np.argmin(reference.tensors[f"layers.{layer}.{name}.smooth"])) == 3
    assert "smoothing" not in read_bundle_config(calibrated["plain"] / "tinyfast.json")


def test_calibrated_bundle_is_closer_to_torch(calibrated: dict[str, Any]) -> None:
    inputs = random_inputs(b=64, length=16, seed=7)
    expected = torch_logits(calibrated["model"], inputs)
    errors = {}
    for kind in ("plain", "smoothed"):
        logits, _ = ReferenceModel.load(calibrated[kind]).forward(*as_numpy(inputs))
        errors[kind] = float(np.abs(logits - expected).mean())
    assert errors["smoothed"] < 0.7 * errors["plain"], errors


def test_runtime_matches_the_reference_on_a_smoothed_bundle(calibrated: dict[str, Any]) -> None:
    from tinyfast import Runtime

    """Per operation the two agree exactly (the Rust tests hold the smoothed quantizer to that);
    end to end their f32 arithmetic differs slightly and may tip a code (docs/bundle.md), so:
    most rows to float rounding, every row to quantization noise, and the same exits."""
    inputs = random_inputs(b=48, length=14, seed=8)
    ids, types, mask = as_numpy(inputs)
    reference = ReferenceModel.load(calibrated["smoothed"])
    runtime = Runtime.load(calibrated["smoothed"])
    want, _ = reference.forward(ids, types, mask)
    got = runtime.predict_ids(ids, mask, types)
    assert (np.abs(got.logits - want).max(axis=1) <= 1e-4).mean() >= 0.75
    np.testing.assert_allclose(got.logits, want, rtol=0, atol=0.02 * np.abs(want).max())
    # A speed that lets about half the rows leave at the first exit.
    first = reference.exit_logits(ids, types, mask)[1].astype(np.float64)
    p = np.exp(first - first.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    speed = float(np.median(-(p * np.log(p)).sum(axis=1) / np.log(p.shape[1])))
    _, want_exits = reference.forward(ids, types, mask, speed=speed)
    got_exits = runtime.predict_ids(ids, mask, types, speed=speed).exit_layers
    assert len(set(want_exits.tolist())) > 1  # the speed exercises early exit
    assert (got_exits == want_exits).mean() >= 0.9


def test_loaders_reject_a_broken_smoothed_bundle(calibrated: dict[str, Any], tmp_path: Path
                                                 ) -> None:
    from tinyfast import Runtime
    from tinyfast.errors import BundleError

    broken = tmp_path / "bundle"
    shutil.copytree(calibrated["smoothed"], broken)
    config = json.loads((broken / "tinyfast.json").read_text())
    config["smoothing"] = "yes"
    (broken / "tinyfast.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="smoothing must be true or false"):
        ReferenceModel.load(broken)
    with pytest.raises(BundleError, match="smoothing"):
        Runtime.load(broken)
    config["smoothing"] = False  # the .smooth tensors are then not in the contract
    (broken / "tinyfast.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="not in the contract"):
        ReferenceModel.load(broken)
    with pytest.raises(BundleError, match="unexpected tensor"):
        Runtime.load(broken)


def test_calibration_flags_are_checked(calibrated: dict[str, Any], tmp_path: Path) -> None:
    checkpoint, text = calibrated["checkpoint"], calibrated["text"]
    with pytest.raises(ConfigError, match="int8"):
        export(checkpoint, tmp_path / "a", dtype="f32", calibration=text)
    with pytest.raises(ConfigError, match="without a calibration file"):
        export(checkpoint, tmp_path / "b", calibration_rows=10)
    with pytest.raises(ConfigError, match=">= 1"):
        export(checkpoint, tmp_path / "c", calibration=text, calibration_rows=0)
    empty = tmp_path / "empty.tsv"
    empty.write_text("sentence\n", encoding="utf-8")
    with pytest.raises(DataError, match="empty.tsv: no data rows"):
        export(checkpoint, tmp_path / "d", calibration=empty)
    with pytest.raises(ConfigError, match="missing.tsv: no such file"):
        export(checkpoint, tmp_path / "e", calibration=tmp_path / "missing.tsv")
    fifo = tmp_path / "fifo.tsv"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="fifo.tsv: not a regular file"):
        export(checkpoint, tmp_path / "f", calibration=fifo)
    assert not any((tmp_path / d).exists() for d in ("d", "e", "f"))


def test_a_plain_hugging_face_classifier_calibrates_on_sentences_or_text(
        calibrated: dict[str, Any], tmp_path: Path) -> None:
    """No tinyfast_task.json: the calibration text is a ``sentence`` column or plain text."""
    from test_export import save_plain

    path = save_plain(calibrated["model"], tmp_path / "plain-hf")
    bundle = export(path, tmp_path / "bundle", calibration=calibrated["text"],
                    calibration_rows=50)
    assert read_bundle_config(bundle / "tinyfast.json")["source"]["calibration"]["rows"] == 50
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("w1 w2 w3\nw4 w5\n", encoding="utf-8")
    bundle = export(path, tmp_path / "bundle-txt", calibration=corpus)
    assert read_bundle_config(bundle / "tinyfast.json")["source"]["calibration"]["rows"] == 2
