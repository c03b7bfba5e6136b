"""The one numpy quantizer (tinyfast.bundle.quantize) against the golden vectors the Rust
reference quantizer is also tested on (tests/golden/quantization.json), bit for bit, and the
export path that uses it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tinyfast.bundle.quantize import quantize_activations, quantize_weights, round_half_away

GOLDEN = json.loads((Path(__file__).parent / "golden" / "quantization.json")
                    .read_text(encoding="utf-8"))


def f32_bits(hex_strings: list[str]) -> np.ndarray:
    return np.array([int(h, 16) for h in hex_strings], dtype=np.uint32).view(np.float32)


def inputs(case: dict) -> np.ndarray:
    return f32_bits(case["bits"]).reshape(case["rows"], case["cols"])


def test_the_golden_file_covers_the_edge_cases():
    for kind in ("weights", "activations"):
        names = {case["name"] for case in GOLDEN[kind]}
        assert {"all_zero_rows", "rounding_ties", "subnormal_scale", "near_f32_max",
                "negative_zero", "length_one"} <= names, kind


@pytest.mark.parametrize("case", GOLDEN["weights"], ids=lambda c: c["name"])
def test_weights_match_the_golden_vectors(case):
    codes, scales = quantize_weights(inputs(case))
    assert codes.dtype == np.int8 and scales.dtype == np.float32
    assert codes.ravel().tolist() == case["codes"]
    assert scales.view(np.uint32).tolist() == f32_bits(case["scale_bits"]).view(np.uint32).tolist()
    assert codes.min(initial=0) >= -127  # the scheme never makes -128


@pytest.mark.parametrize("case", GOLDEN["activations"], ids=lambda c: c["name"])
def test_activations_match_the_golden_vectors(case):
    codes, scales, zero_points = quantize_activations(inputs(case))
    assert codes.dtype == np.uint8
    assert codes.ravel().tolist() == case["codes"]
    assert scales.view(np.uint32).tolist() == f32_bits(case["scale_bits"]).view(np.uint32).tolist()
    assert zero_points.tolist() == case["zero_points"]


def test_round_half_away_is_exact_in_float32():
    x = np.array([0.5, -0.5, 1.5, -2.5, 0.49999997, -0.49999997, 8388607.5, 16777216.0, -0.0],
                 dtype=np.float32)
    assert round_half_away(x).tolist() == [1.0, -1.0, 2.0, -3.0, 0.0, -0.0, 8388608.0,
                                           16777216.0, -0.0]
    assert round_half_away(x).dtype == np.float32


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused_with_their_place(bad):
    x = np.zeros((3, 4), dtype=np.float32)
    x[2, 1] = bad
    for quantize, what in ((quantize_weights, "weight"), (quantize_activations, "activation")):
        with pytest.raises(ValueError, match=rf"{what} \[2, 1\] is"):
            quantize(x)


def test_export_quantizes_by_the_same_rule():
    torch = pytest.importorskip("torch")
    from tinyfast.export import quantize_weight

    case = next(c for c in GOLDEN["weights"] if c["name"] == "random_normal")
    codes, scales = quantize_weight(torch.from_numpy(inputs(case).copy()))
    assert codes.flatten().tolist() == case["codes"]
    assert scales.numpy().view(np.uint32).tolist() == \
        f32_bits(case["scale_bits"]).view(np.uint32).tolist()
