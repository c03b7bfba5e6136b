"""The runtime bundle's forward pass in plain numpy: the oracle the Rust runtime is tested against.

Written to be read beside docs/bundle.md, not to be fast: one row at a time, one step per line of
the doc's pseudo-code, int8 activations quantized exactly as the doc specifies and multiplied in
integers. Needs numpy alone (no torch, no safetensors package), so it also runs where only the
runtime is installed.

Numerics: values between steps are float32, as in the runtime; each step computes in float64 and
rounds to float32 once, so the oracle's own rounding error is negligible next to the runtime's.
The activation quantization is the one rule of ``tinyfast.bundle.quantize`` (float32, as the
runtime's), so both see the same codes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tinyfast.bundle.format import (
    BUNDLE_CONFIG,
    BUNDLE_TOKENIZER,
    BUNDLE_WEIGHTS,
    expected_tensors,
    read_bundle_config,
)
from tinyfast.bundle.quantize import int8_linear
from tinyfast.bundle.safetensors import read_safetensors
from tinyfast.errors import ConfigError

__all__ = ["ReferenceModel", "normalized_entropy"]


def _f32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=-1, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=-1, keepdims=True)  # biased, as torch's LayerNorm
    return _f32((x64 - mean) / np.sqrt(var + eps) * weight + bias)


_erf = np.frompyfunc(math.erf, 1, 1)


def _gelu(x: np.ndarray, kind: str) -> np.ndarray:
    x64 = x.astype(np.float64)
    if kind == "gelu":  # erf form, as BERT
        return _f32(0.5 * x64 * (1.0 + _erf(x64 / math.sqrt(2.0)).astype(np.float64)))
    inner = math.sqrt(2.0 / math.pi) * (x64 + 0.044715 * x64**3)  # gelu_new: tanh form
    return _f32(0.5 * x64 * (1.0 + np.tanh(inner)))


def _softmax(scores: np.ndarray) -> np.ndarray:
    """Softmax over the last axis; -inf entries get probability 0."""
    shifted = scores - scores.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def _dense(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """f32 linear layer ``x @ weight^T + bias`` (float64 inside)."""
    return _f32(x.astype(np.float64) @ weight.astype(np.float64).T + bias)


def _attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, heads: int, key_bias: np.ndarray
) -> np.ndarray:
    """Multi-head attention of one row: q, k, v [L, W] -> context [L, W]."""
    length, width = q.shape
    d = width // heads
    out = np.empty((length, width), dtype=np.float32)
    for head in range(heads):
        cols = slice(head * d, (head + 1) * d)
        qh, kh, vh = (t[:, cols].astype(np.float64) for t in (q, k, v))
        scores = qh @ kh.T / math.sqrt(d) + key_bias  # key_bias: 0 or -inf per key
        out[:, cols] = _f32(_softmax(scores) @ vh)
    return out


def normalized_entropy(logits: np.ndarray) -> float:
    """entropy(softmax(logits)) / ln(C), in [0, 1]."""
    z = logits.astype(np.float64)
    log_p = z - z.max()
    log_p = log_p - math.log(np.exp(log_p).sum())
    return float(-(np.exp(log_p) * log_p).sum() / math.log(len(z)))


class ReferenceModel:
    """A bundle loaded into numpy arrays, with the doc's forward pass and early-exit rule."""

    def __init__(self, config: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
        self.config = config
        self.tensors = tensors
        arch = config["architecture"]
        self.num_layers: int = arch["num_layers"]
        self.num_heads: int = arch["num_heads"]
        self.eps = float(arch["layer_norm_eps"])
        self.hidden_act: str = arch["hidden_act"]
        self.labels: list[str] = list(config["labels"])
        self.task: str = config["task"]
        self.quantized = config["quantization"] == "int8"
        self.exits: dict[int, str] = {e["layer"]: e["kind"] for e in config["exits"]}
        self.branch_heads: int = (config.get("branch") or {}).get("heads", 0)
        # sum_k qw[o, k] of every int8 weight: the zero-point correction of the doc's formula.
        self._col_sums = {
            name: tensors[name].astype(np.int64).sum(axis=1)
            for name in tensors
            if self.quantized and name.endswith(".weight") and tensors[name].dtype == np.int8
        }

    @classmethod
    def load(cls, bundle_dir: str | os.PathLike[str]) -> ReferenceModel:
        """Read a bundle and check every name, shape, dtype and scale against the contract."""
        directory = Path(bundle_dir)
        if not directory.is_dir():
            raise ConfigError(f"{directory}: not a bundle directory")
        config = read_bundle_config(directory / BUNDLE_CONFIG)
        weights = directory / BUNDLE_WEIGHTS
        if not weights.is_file():
            raise ConfigError(f"{weights}: no such file")
        if not (directory / BUNDLE_TOKENIZER).is_file():
            raise ConfigError(f"{directory / BUNDLE_TOKENIZER}: no such file")
        stored = read_safetensors(weights)
        expected = expected_tensors(config)
        missing = sorted(set(expected) - set(stored))
        extra = sorted(set(stored) - set(expected))
        if missing:
            raise ConfigError(f"{weights}: missing tensors {missing[:6]}")
        if extra:
            raise ConfigError(f"{weights}: tensors not in the contract {extra[:6]}")
        tensors: dict[str, np.ndarray] = {}
        for name, (shape, dtype) in expected.items():
            got_dtype, array = stored[name]
            if got_dtype != dtype or array.shape != shape:
                raise ConfigError(f"{weights}: tensor '{name}' is {got_dtype} {list(array.shape)}, "
                                  f"expected {dtype} {list(shape)}")
            if dtype == "F32" and not np.isfinite(array).all():
                raise ConfigError(f"{weights}: tensor '{name}' holds NaN or infinite values")
            if name.endswith(".scale") and not (array > 0).all():
                raise ConfigError(f"{weights}: tensor '{name}' has scales <= 0")
            if name.endswith(".smooth") and not (array > 0).all():
                raise ConfigError(f"{weights}: tensor '{name}' has smoothing factors <= 0")
            if dtype == "I8" and (array == -128).any():
                raise ConfigError(f"{weights}: tensor '{name}' holds -128 (codes are -127..127)")
            tensors[name] = array
        return cls(config, tensors)

    # ---- layers

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        """One of the four encoder linears: int8 per the doc's output formula, or plain f32."""
        weight, bias = self.tensors[name + ".weight"], self.tensors[name + ".bias"]
        if not self.quantized:
            return _dense(x, weight, bias)
        smooth = self.tensors.get(name + ".smooth")
        if smooth is not None:
            x = _f32(x * smooth)  # docs/bundle.md, "Smoothing": one f32 product per element
        residual = None
        if name + ".residual_weight" in self.tensors:  # docs/bundle.md, "Residual layers"
            residual = (self.tensors[name + ".residual_weight"],
                        self.tensors[name + ".residual_scale"])
        return int8_linear(x, weight, self.tensors[name + ".scale"], bias,
                           self._col_sums[name + ".weight"], residual)

    def _layer(self, x: np.ndarray, layer: int, key_bias: np.ndarray) -> np.ndarray:
        p = f"layers.{layer}."
        h = x.shape[1]
        qkv = self._linear(x, p + "qkv")
        q, k, v = qkv[:, :h], qkv[:, h : 2 * h], qkv[:, 2 * h :]
        context = _attention(q, k, v, self.num_heads, key_bias)
        attn = self._linear(context, p + "attn_out")
        x = _layer_norm(x + attn, self.tensors[p + "attn_norm.weight"],
                        self.tensors[p + "attn_norm.bias"], self.eps)
        inner = _gelu(self._linear(x, p + "ffn_in"), self.hidden_act)
        ffn = self._linear(inner, p + "ffn_out")
        return _layer_norm(x + ffn, self.tensors[p + "ffn_norm.weight"],
                           self.tensors[p + "ffn_norm.bias"], self.eps)

    def _branch(self, x: np.ndarray, layer: int, key_bias: np.ndarray) -> np.ndarray:
        t = self.tensors
        p = f"exits.{layer}."
        if self.exits[layer] == "linear":
            return _dense(x[:1], t[p + "classifier.weight"], t[p + "classifier.bias"])[0]
        h = _f32(np.tanh(_dense(x, t[p + "dense_in.weight"], t[p + "dense_in.bias"])))
        q, k, v = (_dense(h, t[p + n + ".weight"], t[p + n + ".bias"])
                   for n in ("query", "key", "value"))
        context = _attention(q, k, v, self.branch_heads, key_bias)
        h = _dense(context, t[p + "attn_out.weight"], t[p + "attn_out.bias"])
        c = _f32(np.tanh(_dense(h[:1], t[p + "dense.weight"], t[p + "dense.bias"])))
        return _dense(c, t[p + "classifier.weight"], t[p + "classifier.bias"])[0]

    def _head(self, x: np.ndarray) -> np.ndarray:
        t = self.tensors
        if self.task == "masked_lm":
            raise ValueError("a masked_lm bundle has no classifier head; use masked_lm_logits")
        pooled = _f32(np.tanh(_dense(x[:1], t["head.pooler.weight"], t["head.pooler.bias"])))
        return _dense(pooled, t["head.classifier.weight"], t["head.classifier.bias"])[0]

    def _row(self, ids: np.ndarray, types: np.ndarray, mask: np.ndarray
             ) -> Iterator[tuple[int, np.ndarray]]:
        """(layer, logits) after every exit and finally (num_layers, head logits), lazily, so a
        row that exits never computes the layers after its exit."""
        t = self.tensors
        length = len(ids)
        x = t["embeddings.word"][ids] + t["embeddings.position"][:length]
        x = _f32(x + t["embeddings.token_type"][types])
        x = _layer_norm(x, t["embeddings.norm.weight"], t["embeddings.norm.bias"], self.eps)
        key_bias = np.where(mask > 0, 0.0, -np.inf)
        for layer in range(self.num_layers):
            x = self._layer(x, layer, key_bias)
            if layer + 1 in self.exits:
                yield layer + 1, self._branch(x, layer + 1, key_bias)
        yield self.num_layers, self._head(x)

    # ---- public

    @property
    def num_outputs(self) -> int:
        return len(self.labels) or 1

    def _inputs(self, input_ids: Any, token_type_ids: Any, attention_mask: Any
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids = np.asarray(input_ids)
        if ids.ndim != 2 or ids.shape[1] == 0 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"input_ids must be a non-empty 2-D integer array, got shape "
                             f"{ids.shape} of {ids.dtype}")
        types = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids)
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
        arch = self.config["architecture"]
        for name, array, top in (("input_ids", ids, arch["vocab_size"]),
                                 ("token_type_ids", types, arch["type_vocab_size"]),
                                 ("attention_mask", mask, 2)):
            if array.shape != ids.shape or not np.issubdtype(array.dtype, np.integer):
                raise ValueError(f"{name} must be an integer array of shape {ids.shape}")
            if array.size and (array.min() < 0 or array.max() >= top):
                raise ValueError(f"{name} holds values outside 0..{top - 1}")
        if ids.shape[1] > arch["max_position_embeddings"]:
            raise ValueError(f"sequence length {ids.shape[1]} exceeds max_position_embeddings "
                             f"{arch['max_position_embeddings']}")
        if ids.shape[0] and not mask.any(axis=1).all():
            raise ValueError("every row needs at least one token with attention_mask 1")
        return ids.astype(np.int64), types.astype(np.int64), mask.astype(np.int64)

    def exit_logits(self, input_ids: Any, token_type_ids: Any = None, attention_mask: Any = None
                    ) -> dict[int, np.ndarray]:
        """Logits [B, C] of every exit branch and of the head (key ``num_layers``), no exiting."""
        ids, types, mask = self._inputs(input_ids, token_type_ids, attention_mask)
        layers = [*self.exits, self.num_layers]
        out = {k: np.zeros((len(ids), self.num_outputs), dtype=np.float32) for k in layers}
        for b in range(len(ids)):
            for layer, logits in self._row(ids[b], types[b], mask[b]):
                out[layer][b] = logits
        return out

    def forward(self, input_ids: Any, token_type_ids: Any = None, attention_mask: Any = None,
                speed: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Logits [B, C] and exit layer [B] per row: a row leaves after exit layer k when the
        normalized entropy of that branch's logits is < ``speed``; otherwise the head answers
        (exit layer ``num_layers``). Regression bundles never exit early."""
        speed = float(speed)
        if not 0.0 <= speed <= 1.0:  # also rejects NaN
            raise ValueError(f"speed must be in [0, 1], got {speed}")
        ids, types, mask = self._inputs(input_ids, token_type_ids, attention_mask)
        can_exit = self.task == "classification"
        logits = np.zeros((len(ids), self.num_outputs), dtype=np.float32)
        exit_layer = np.zeros(len(ids), dtype=np.int64)
        for b in range(len(ids)):
            for layer, row_logits in self._row(ids[b], types[b], mask[b]):
                last = layer == self.num_layers
                if last or (can_exit and normalized_entropy(row_logits) < speed):
                    logits[b], exit_layer[b] = row_logits, layer
                    break
        return logits, exit_layer

    __call__ = forward

    def masked_lm_logits(self, input_ids: Any, positions: Any, token_type_ids: Any = None,
                         attention_mask: Any = None) -> np.ndarray:
        """A masked_lm bundle's vocabulary logits [M, V] at the (row, token) pairs of
        ``positions`` [M, 2]: ``decoder(LayerNorm(act(transform(x))))`` of the last layer."""
        if self.task != "masked_lm":
            raise ValueError(f"masked_lm_logits needs a masked_lm bundle, not {self.task}")
        ids, types, mask = self._inputs(input_ids, token_type_ids, attention_mask)
        t = self.tensors
        out = []
        for row, token in np.asarray(positions, dtype=np.int64).reshape(-1, 2):
            x = t["embeddings.word"][ids[row]] + t["embeddings.position"][:ids.shape[1]]
            x = _f32(x + t["embeddings.token_type"][types[row]])
            x = _layer_norm(x, t["embeddings.norm.weight"], t["embeddings.norm.bias"], self.eps)
            key_bias = np.where(mask[row] > 0, 0.0, -np.inf)
            for layer in range(self.num_layers):
                x = self._layer(x, layer, key_bias)
            h = _gelu(_dense(x[token : token + 1], t["head.transform.weight"],
                             t["head.transform.bias"]), self.hidden_act)
            h = _layer_norm(h, t["head.norm.weight"], t["head.norm.bias"], self.eps)
            out.append(self._linear(h, "head.decoder")[0])
        v = self.config["architecture"]["vocab_size"]
        return np.stack(out) if out else np.zeros((0, v), dtype=np.float32)
