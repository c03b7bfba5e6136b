"""Residual layers (docs/bundle.md, "Residual layers"): the residual quantizers against hand
values, export with --residual-layers, the runtime against the numpy reference on such a
bundle, precision against torch, and broken bundles and bad flags rejected in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tinyfast.bundle import ReferenceModel, read_bundle_config
from tinyfast.bundle.quantize import (
    activation_residual,
    int8_linear,
    quantize_activations,
    quantize_weights,
    weight_residual,
)
from tinyfast.errors import ConfigError

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

LINEARS = ("qkv", "attn_out", "ffn_in", "ffn_out")

# ------------------------------------------------------------------------------------------------
# The residual quantizers


def test_weight_residual_quantizes_what_rounding_left() -> None:
    w = np.array([[1.0, 0.3, -0.52], [0.0, 0.0, 0.0]], np.float32)
    codes, scales = quantize_weights(w)
    left_codes, left_scales = weight_residual(w, codes, scales)
    left = w - codes.astype(np.float32) * scales[:, None]
    assert float(left_scales[0]) == pytest.approx(np.abs(left[0]).max() / 127, rel=1e-6)
    assert left_codes[0, np.argmax(np.abs(left[0]))] in (-127, 127)
    # An all-zero row leaves nothing: codes 0 with the scheme's scale of 1.
    assert (left_codes[1] == 0).all() and left_scales[1] == 1.0
    # Both parts together carry the weight to within half a residual step.
    both = codes * scales[:, None] + left_codes * left_scales[:, None]
    assert np.abs(both - w).max() <= left_scales.max() / 2 + 1e-9


def test_activation_residual_is_the_rounding_error_in_float32() -> None:
    x = np.array([[0.0, 1.0, -2.0, 0.7], [3.0, 3.0, 3.0, 3.0]], np.float32)
    q, s, zp = quantize_activations(x)
    r = activation_residual(x, q, s, zp)
    assert r.dtype == np.float32
    # Element by element in float32 scalars: one rounded product, one rounded subtraction.
    for t in range(2):
        for j in range(4):
            step = np.float32(int(q[t, j]) - int(zp[t])) * s[t]
            assert r[t, j] == x[t, j] - step
    # Row 0: step 3/255, zero point 170; 0.7 lands on code 59 above zero.
    assert float(r[0, 3]) == pytest.approx(0.7 - 59 * 3 / 255, abs=1e-6)
    assert (np.abs(r) <= s[:, None] / 2 * (1 + 1e-6)).all()
    assert r[0, 0] == 0.0  # 0 is exact in the scheme


def test_residual_int8_linear_is_near_the_float_product() -> None:
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.2, (24, 40)).astype(np.float32)
    x = rng.normal(0, 1, (16, 40)).astype(np.float32)
    x[:, 3] *= 25  # an outlier feature sets every row's step
    bias = np.zeros(24, np.float32)
    exact = x.astype(np.float64) @ w.T.astype(np.float64)
    codes, scales = quantize_weights(w)
    plain = int8_linear(x, codes, scales, bias)
    both = int8_linear(x, codes, scales, bias, residual=weight_residual(w, codes, scales))
    assert np.abs(both - exact).mean() < np.abs(plain - exact).mean() / 50


# ------------------------------------------------------------------------------------------------
# Export and runtime


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("residual")
    model = tiny_classifier(seed=9)
    with torch.no_grad():  # an outlier feature, as in real BERTs
        for layer in model.bert.encoder.layer:
            layer.output.LayerNorm.bias[3] = 12.0
    checkpoint = work / "model"
    save_classifier(model, tiny_tokenizer(), meta(), checkpoint)
    tiny_branches(model).save(checkpoint)
    out = {"model": model, "checkpoint": checkpoint, "work": work}
    for n in (0, 1, LAYERS):
        out[n] = export(checkpoint, work / f"residual{n}", residual_layers=n)
    return out


def test_export_declares_and_writes_residual_layers(bundles: dict[str, Any]) -> None:
    assert "residual_layers" not in read_bundle_config(bundles[0] / "tinyfast.json")
    assert read_bundle_config(bundles[1] / "tinyfast.json")["residual_layers"] == [0]
    tensors = ReferenceModel.load(bundles[1]).tensors
    for name in LINEARS:
        w, r = tensors[f"layers.0.{name}.weight"], tensors[f"layers.0.{name}.residual_weight"]
        assert r.dtype == np.int8 and r.shape == w.shape
        assert tensors[f"layers.0.{name}.residual_scale"].shape == (w.shape[0],)
        # The residual's step is a small fraction of the weight's.
        assert (tensors[f"layers.0.{name}.residual_scale"]
                < tensors[f"layers.0.{name}.scale"] / 100).all()
        assert f"layers.1.{name}.residual_weight" not in tensors
    # The plain codes are those of a bundle without residual layers.
    plain = ReferenceModel.load(bundles[0]).tensors
    np.testing.assert_array_equal(plain["layers.0.qkv.weight"], tensors["layers.0.qkv.weight"])


def test_residual_layers_bring_int8_close_to_torch(bundles: dict[str, Any]) -> None:
    inputs = random_inputs(b=64, length=16, seed=10)
    expected = torch_logits(bundles["model"], inputs)
    errors = {}
    for n in (0, LAYERS):
        logits, _ = ReferenceModel.load(bundles[n]).forward(*as_numpy(inputs))
        errors[n] = float(np.abs(logits - expected).mean())
    assert errors[LAYERS] < errors[0] / 20, errors


def test_runtime_matches_the_reference_on_a_residual_bundle(bundles: dict[str, Any]) -> None:
    """As for smoothed bundles (tests/test_calibration.py): exact per operation (Rust tests),
    so here most rows to float rounding, every row to quantization noise, the same exits."""
    from tinyfast import Runtime

    inputs = random_inputs(b=48, length=14, seed=11)
    ids, types, mask = as_numpy(inputs)
    for n in (1, LAYERS):
        reference = ReferenceModel.load(bundles[n])
        runtime = Runtime.load(bundles[n])
        want, want_exits = reference.forward(ids, types, mask, speed=0.5)
        got = runtime.predict_ids(ids, mask, types, speed=0.5)
        assert (np.abs(got.logits - want).max(axis=1) <= 1e-4).mean() >= 0.75
        np.testing.assert_allclose(got.logits, want, rtol=0, atol=0.01 * np.abs(want).max())
        assert (got.exit_layers == want_exits).mean() >= 0.9
        batched = runtime.predict_ids(ids, mask, types, speed=0.5)
        one = [runtime.predict_ids(ids[i:i + 1], mask[i:i + 1], types[i:i + 1], speed=0.5)
               for i in range(len(ids))]
        np.testing.assert_array_equal(batched.logits, np.concatenate([o.logits for o in one]))


def test_loaders_reject_broken_residual_bundles(bundles: dict[str, Any], tmp_path: Path) -> None:
    from tinyfast import Runtime
    from tinyfast.errors import BundleError

    cases = [
        ({"residual_layers": [1, 0]}, "residual_layers", "residual_layers"),
        ({"residual_layers": [LAYERS]}, "residual_layers", "residual_layers"),
        ({"residual_layers": "all"}, "residual_layers", "residual_layers"),
        ({"residual_layers": [0, 1]}, "missing", "layers.1.qkv.residual_weight"),
        ({"residual_layers": []}, "not in the contract", "unexpected tensor"),
    ]
    for i, (change, reference_error, runtime_error) in enumerate(cases):
        broken = tmp_path / f"bundle{i}"
        shutil.copytree(bundles[1], broken)
        config = json.loads((broken / "tinyfast.json").read_text())
        config.update(change)
        (broken / "tinyfast.json").write_text(json.dumps(config))
        with pytest.raises(ConfigError, match=reference_error):
            ReferenceModel.load(broken)
        with pytest.raises(BundleError, match=runtime_error):
            Runtime.load(broken)


def test_residual_flags_are_checked(bundles: dict[str, Any], tmp_path: Path) -> None:
    checkpoint = bundles["checkpoint"]
    for bad in (-1, LAYERS + 1, True, 1.5):
        with pytest.raises(ConfigError, match=f"0..{LAYERS}"):
            export(checkpoint, tmp_path / "a", residual_layers=bad)
    with pytest.raises(ConfigError, match="int8"):
        export(checkpoint, tmp_path / "b", dtype="f32", residual_layers=1)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
