"""FLOPs of early-exit inference, per row: what a row costs when it leaves after a given layer.

FLOPs are multiply-adds x 2 of the matrix products (the convention of FastBERT's paper, whose
figures come from thop). Embedding lookups, LayerNorm, softmax, GELU, tanh and residual adds are
not multiply-adds and are left out. ``L`` is the row's length in tokens (special tokens
included), ``H`` hidden size, ``F`` intermediate size, ``C`` outputs, ``W`` branch width.

Every number is the model's definition, not the runtime's shortcuts (it skips the last layer's
work past [CLS], for one): FLOPs measure the model, wall time measures the engine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tinyfast.bundle.format import BUNDLE_CONFIG, read_bundle_config

__all__ = [
    "ModelShape",
    "branch_flops",
    "full_flops",
    "head_flops",
    "layer_flops",
    "relative_flops",
    "row_flops",
]


@dataclass(frozen=True)
class ModelShape:
    """What the FLOPs depend on. ``exits`` maps the 1-based layer after which a branch runs to
    its kind, ``"fastbert"`` or ``"linear"``; ``branch_width`` is the fastbert branches' width
    (0 when there are none)."""

    num_layers: int
    hidden: int
    intermediate: int
    heads: int
    num_labels: int
    exits: dict[int, str] = field(default_factory=dict)
    branch_width: int = 0

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden", "intermediate", "heads", "num_labels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelShape.{name} must be a positive integer, got {value!r}")
        for layer, kind in self.exits.items():
            if not 1 <= layer < self.num_layers:
                raise ValueError(f"exit layer {layer} is outside 1..{self.num_layers - 1}")
            if kind not in ("fastbert", "linear"):
                raise ValueError(f"exit kind {kind!r} at layer {layer}: expected fastbert or "
                                 "linear")
        if "fastbert" in self.exits.values() and self.branch_width < 1:
            raise ValueError("fastbert exits need a branch_width >= 1")

    @property
    def answer_layers(self) -> list[int]:
        """Every layer after which a row can be answered: the exits, then the last layer."""
        return [*sorted(self.exits), self.num_layers]

    @classmethod
    def from_bundle(cls, bundle_dir: str | os.PathLike[str]) -> ModelShape:
        """The shape ``tinyfast.json`` of a runtime bundle records (validated, torch-free)."""
        config = read_bundle_config(Path(bundle_dir) / BUNDLE_CONFIG)
        arch = config["architecture"]
        return cls(
            num_layers=arch["num_layers"],
            hidden=arch["hidden_size"],
            intermediate=arch["intermediate_size"],
            heads=arch["num_heads"],
            num_labels=len(config["labels"]) or 1,
            exits={entry["layer"]: entry["kind"] for entry in config["exits"]},
            branch_width=(config.get("branch") or {}).get("width", 0),
        )

    @classmethod
    def from_config(cls, config: Any, branches: Any = None) -> ModelShape:
        """From a Hugging Face BERT config (any object with ``num_hidden_layers``,
        ``hidden_size``, ``intermediate_size``, ``num_attention_heads``, ``num_labels``) and the
        branches: None, a ``branches.json`` dict, or an object with ``spec()`` returning one
        (``tinyfast.models.branches.Branches``)."""
        spec: Mapping[str, Any] = {}
        if branches is not None:
            spec = branches.spec() if callable(getattr(branches, "spec", None)) else branches
        return cls(
            num_layers=int(config.num_hidden_layers),
            hidden=int(config.hidden_size),
            intermediate=int(config.intermediate_size),
            heads=int(config.num_attention_heads),
            num_labels=int(config.num_labels),
            exits={int(e["layer"]): str(e["kind"]) for e in spec.get("exits", [])},
            branch_width=int((spec.get("branch") or {}).get("width", 0)),
        )


def layer_flops(shape: ModelShape, length: int) -> int:
    """One encoder layer over ``L`` tokens: Q, K, V projections ``3 L H^2``, attention scores
    and context ``2 L^2 H`` (over all heads together), output projection ``L H^2``, FFN
    ``2 L H F`` multiply-adds."""
    h, f, n = shape.hidden, shape.intermediate, length
    return 2 * (4 * n * h * h + 2 * n * n * h + 2 * n * h * f)


def branch_flops(shape: ModelShape, layer: int, length: int) -> int:
    """The exit branch after ``layer``. linear: ``H C`` on [CLS]. fastbert: dense in ``L H W``
    (every token), key and value ``2 L W^2``, the [CLS] query ``W^2`` (the only query it reads),
    its scores and context ``2 L W``, attention output, dense ``2 W^2`` and classifier ``W C``,
    multiply-adds."""
    kind = shape.exits[layer]
    h, c, w, n = shape.hidden, shape.num_labels, shape.branch_width, length
    if kind == "linear":
        return 2 * h * c
    return 2 * (n * h * w + 2 * n * w * w + w * w + 2 * n * w + 2 * w * w + w * c)


def head_flops(shape: ModelShape) -> int:
    """The model's own head on [CLS]: pooler ``H^2`` and classifier ``H C`` multiply-adds."""
    return 2 * (shape.hidden * shape.hidden + shape.hidden * shape.num_labels)


def full_flops(shape: ModelShape, length: int) -> int:
    """The whole model without early exit: every layer and the head, no branch."""
    return shape.num_layers * layer_flops(shape, length) + head_flops(shape)


def row_flops(shape: ModelShape, length: int, exit_layer: int, speed: float) -> int:
    """A row of ``length`` tokens answered after ``exit_layer`` at ``speed``: layers
    1..exit_layer, every branch at a layer <= exit_layer (they run only when speed > 0; a row
    that reaches the last layer ran them all), and the head if it reached the last layer."""
    if isinstance(length, bool) or int(length) != length or length < 1:
        raise ValueError(f"row length must be a positive integer, got {length!r}")
    if exit_layer not in shape.answer_layers:
        raise ValueError(f"exit layer {exit_layer}: this model answers after layers "
                         f"{shape.answer_layers} only")
    if speed <= 0 and exit_layer != shape.num_layers:
        raise ValueError(f"exit layer {exit_layer} at speed 0, which never exits early")
    total = exit_layer * layer_flops(shape, length)
    if speed > 0:
        total += sum(branch_flops(shape, k, length) for k in shape.exits if k <= exit_layer)
    if exit_layer == shape.num_layers:
        total += head_flops(shape)
    return total


def relative_flops(shape: ModelShape, lengths: Sequence[int], exit_layers: Sequence[int],
                   speed: float) -> float:
    """FLOPs of every row as answered, summed, over the full model's FLOPs of the same rows
    (1.0 at speed 0; early exits make it smaller, branches that did not let a row go bigger)."""
    lengths = np.asarray(lengths).tolist()
    exit_layers = np.asarray(exit_layers).tolist()
    if len(lengths) != len(exit_layers):
        raise ValueError(f"{len(lengths)} lengths but {len(exit_layers)} exit layers")
    if not lengths:
        raise ValueError("relative FLOPs of no rows")
    spent = sum(row_flops(shape, n, k, speed) for n, k in zip(lengths, exit_layers, strict=True))
    return spent / sum(full_flops(shape, n) for n in lengths)
