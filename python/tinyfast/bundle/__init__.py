"""The runtime bundle's contract in numpy alone (no torch): its format, the int8 scheme, a
safetensors reader and the reference forward pass the Rust runtime is tested against."""

from tinyfast.bundle.format import (
    BUNDLE_CONFIG,
    BUNDLE_FORMAT,
    BUNDLE_TOKENIZER,
    BUNDLE_VERSION,
    BUNDLE_WEIGHTS,
    EXIT_KINDS,
    HIDDEN_ACTS,
    expected_tensors,
    read_bundle_config,
)
from tinyfast.bundle.quantize import (
    int8_linear,
    quantize_activations,
    quantize_weights,
    round_half_away,
)
from tinyfast.bundle.reference import ReferenceModel, normalized_entropy
from tinyfast.bundle.safetensors import read_safetensors

__all__ = [
    "BUNDLE_CONFIG",
    "BUNDLE_FORMAT",
    "BUNDLE_TOKENIZER",
    "BUNDLE_VERSION",
    "BUNDLE_WEIGHTS",
    "EXIT_KINDS",
    "HIDDEN_ACTS",
    "ReferenceModel",
    "expected_tensors",
    "int8_linear",
    "normalized_entropy",
    "quantize_activations",
    "quantize_weights",
    "read_bundle_config",
    "read_safetensors",
    "round_half_away",
]
