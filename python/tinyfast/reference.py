"""The runtime bundle's forward pass in plain numpy: the oracle the Rust runtime is tested against.

Written to be read beside docs/bundle.md, not to be fast: one row at a time, one step per line of
the doc's pseudo-code, int8 activations quantized exactly as the doc specifies and multiplied in
integers. Needs numpy alone (no torch, no safetensors package), so it also runs where only the
runtime is installed.

Numerics: values between steps are float32, as in the runtime; each step computes in float64 and
rounds to float32 once, so the oracle's own rounding error is negligible next to the runtime's.
The activation quantization itself is done in float32, as the runtime does it, so both see the
same codes except at exact rounding ties.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tinyfast.errors import ConfigError

__all__ = [
    "BUNDLE_CONFIG",
    "BUNDLE_FORMAT",
    "BUNDLE_TOKENIZER",
    "BUNDLE_VERSION",
    "BUNDLE_WEIGHTS",
    "ReferenceModel",
    "expected_tensors",
    "int8_linear",
    "quantize_activations",
    "read_bundle_config",
    "read_safetensors",
    "round_half_away",
]

BUNDLE_FORMAT = "tinyfast-bundle"
BUNDLE_VERSION = 1
BUNDLE_CONFIG = "tinyfast.json"
BUNDLE_WEIGHTS = "model.safetensors"
BUNDLE_TOKENIZER = "tokenizer.json"

EXIT_KINDS = ("fastbert", "linear")
HIDDEN_ACTS = ("gelu", "gelu_new")
QUANTIZATIONS = ("int8", "none")
TASKS = ("classification", "regression")
_ARCH_INTS = (
    "vocab_size",
    "hidden_size",
    "num_layers",
    "num_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
)
_DTYPES = {"F32": np.dtype("<f4"), "I8": np.dtype("i1")}


# --------------------------------------------------------------------------------------------
# Quantization, as docs/bundle.md "Int8 scheme" specifies it


def round_half_away(x: np.ndarray) -> np.ndarray:
    """Round to nearest, ties away from zero (numpy's own rint rounds ties to even)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def quantize_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-token u8 codes of ``x`` [T, K] with their scale ``s`` [T] and zero point ``zp`` [T].

    The range is widened to include 0 so that 0 is exact. A row whose range is empty (all zeros)
    gets s = 1: the doc leaves this case open, and any s gives codes equal to zp = 0 there.
    """
    x = np.asarray(x, dtype=np.float32)
    lo = np.minimum(x.min(axis=1), np.float32(0))
    hi = np.maximum(x.max(axis=1), np.float32(0))
    s = (hi - lo) / np.float32(255)
    s = np.where(s > 0, s, np.float32(1)).astype(np.float32)
    zp = round_half_away(-lo / s).astype(np.int64)
    q = np.clip(round_half_away(x / s[:, None]) + zp[:, None], 0, 255).astype(np.uint8)
    return q, s, zp


def int8_linear(
    x: np.ndarray, weight: np.ndarray, scale: np.ndarray, bias: np.ndarray,
    col_sums: np.ndarray | None = None,
) -> np.ndarray:
    """``y[t,o] = s[t] * scale[o] * (sum_k q[t,k] * qw[o,k] - zp[t] * sum_k qw[o,k]) + bias[o]``.

    ``x`` [T, K] float32 activations, ``weight`` [O, K] int8 codes. The sums are exact integers
    (int64); ``col_sums`` (sum_k qw[o, k]) may be passed precomputed, as the runtime prepacks it.
    """
    q, s, zp = quantize_activations(x)
    w = weight.astype(np.int64)
    if col_sums is None:
        col_sums = w.sum(axis=1)
    acc = q.astype(np.int64) @ w.T
    acc = acc - zp[:, None] * col_sums[None, :]
    y = s.astype(np.float64)[:, None] * scale.astype(np.float64)[None, :] * acc + bias
    return y.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Reading a bundle


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_bundle_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate ``tinyfast.json``; every problem is a ConfigError naming the field."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise ConfigError(f"{where}: no such file")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    if config.get("format") != BUNDLE_FORMAT:
        raise ConfigError(f"{where}: format is {config.get('format')!r}, expected "
                          f"{BUNDLE_FORMAT!r}")
    version = config.get("format_version")
    if not _is_int(version) or version != BUNDLE_VERSION:
        raise ConfigError(f"{where}: format_version is {version!r}; this reader knows version "
                          f"{BUNDLE_VERSION}")
    arch = config.get("architecture")
    if not isinstance(arch, dict):
        raise ConfigError(f"{where}: architecture must be an object")
    if arch.get("type") != "bert":
        raise ConfigError(f"{where}: architecture.type is {arch.get('type')!r}, expected 'bert'")
    for key in _ARCH_INTS:
        value = arch.get(key)
        if not _is_int(value) or value < 1:
            raise ConfigError(f"{where}: architecture.{key} must be a positive integer, got "
                              f"{value!r}")
    if arch["hidden_size"] % arch["num_heads"]:
        raise ConfigError(f"{where}: architecture.hidden_size {arch['hidden_size']} is not "
                          f"divisible by num_heads {arch['num_heads']}")
    eps = arch.get("layer_norm_eps")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not 0 < eps < 1:
        raise ConfigError(f"{where}: architecture.layer_norm_eps must be a number in (0, 1), got "
                          f"{eps!r}")
    if arch.get("hidden_act") not in HIDDEN_ACTS:
        raise ConfigError(f"{where}: architecture.hidden_act is {arch.get('hidden_act')!r}, "
                          f"expected one of {', '.join(HIDDEN_ACTS)}")
    task, labels = config.get("task"), config.get("labels")
    if task not in TASKS:
        raise ConfigError(f"{where}: task is {task!r}, expected one of {', '.join(TASKS)}")
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise ConfigError(f"{where}: labels must be a list of strings")
    if task == "regression" and labels:
        raise ConfigError(f"{where}: labels must be [] for a regression task")
    if task == "classification" and len(labels) < 2:
        raise ConfigError(f"{where}: a classification bundle needs at least 2 labels")
    max_length = config.get("max_length")
    positions = arch["max_position_embeddings"]
    if not _is_int(max_length) or not 2 <= max_length <= positions:
        raise ConfigError(f"{where}: max_length must be an integer in 2..{positions} "
                          f"(max_position_embeddings), got {max_length!r}")
    if config.get("quantization") not in QUANTIZATIONS:
        raise ConfigError(f"{where}: quantization is {config.get('quantization')!r}, expected "
                          f"one of {', '.join(QUANTIZATIONS)}")
    exits = config.get("exits")
    if not isinstance(exits, list):
        raise ConfigError(f"{where}: exits must be a list")
    previous = 0
    for i, entry in enumerate(exits):
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: exits[{i}] must be an object")
        layer, kind = entry.get("layer"), entry.get("kind")
        top = arch["num_layers"] - 1
        if not _is_int(layer) or not previous < layer <= top:
            raise ConfigError(f"{where}: exits[{i}].layer is {layer!r}; exit layers are strictly "
                              f"increasing, in 1..{top}")
        if kind not in EXIT_KINDS:
            raise ConfigError(f"{where}: exits[{i}].kind is {kind!r}, expected one of "
                              f"{', '.join(EXIT_KINDS)}")
        previous = layer
    if any(entry["kind"] == "fastbert" for entry in exits):
        branch = config.get("branch")
        if not isinstance(branch, dict):
            raise ConfigError(f"{where}: branch (width, heads) is needed by fastbert exits")
        width, heads = branch.get("width"), branch.get("heads")
        if not (_is_int(width) and _is_int(heads) and width >= 1 and heads >= 1):
            raise ConfigError(f"{where}: branch.width and branch.heads must be positive integers")
        if width % heads:
            raise ConfigError(f"{where}: branch.width {width} is not divisible by branch.heads "
                              f"{heads}")
    return config


def expected_tensors(config: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every tensor of docs/bundle.md for a validated ``tinyfast.json``: name -> (shape, dtype)."""
    arch = config["architecture"]
    h, f = arch["hidden_size"], arch["intermediate_size"]
    c = len(config["labels"]) or 1
    int8 = config["quantization"] == "int8"
    out: dict[str, tuple[tuple[int, ...], str]] = {
        "embeddings.word": ((arch["vocab_size"], h), "F32"),
        "embeddings.position": ((arch["max_position_embeddings"], h), "F32"),
        "embeddings.token_type": ((arch["type_vocab_size"], h), "F32"),
        "embeddings.norm.weight": ((h,), "F32"),
        "embeddings.norm.bias": ((h,), "F32"),
    }
    linears = {"qkv": (3 * h, h), "attn_out": (h, h), "ffn_in": (f, h), "ffn_out": (h, f)}
    for layer in range(arch["num_layers"]):
        for name, (rows, cols) in linears.items():
            prefix = f"layers.{layer}.{name}"
            out[prefix + ".weight"] = ((rows, cols), "I8" if int8 else "F32")
            if int8:
                out[prefix + ".scale"] = ((rows,), "F32")
            out[prefix + ".bias"] = ((rows,), "F32")
        for norm in ("attn_norm", "ffn_norm"):
            out[f"layers.{layer}.{norm}.weight"] = ((h,), "F32")
            out[f"layers.{layer}.{norm}.bias"] = ((h,), "F32")
    out["head.pooler.weight"] = ((h, h), "F32")
    out["head.pooler.bias"] = ((h,), "F32")
    out["head.classifier.weight"] = ((c, h), "F32")
    out["head.classifier.bias"] = ((c,), "F32")
    width = (config.get("branch") or {}).get("width")
    for entry in config["exits"]:
        prefix = f"exits.{entry['layer']}."
        if entry["kind"] == "linear":
            out[prefix + "classifier.weight"] = ((c, h), "F32")
            out[prefix + "classifier.bias"] = ((c,), "F32")
            continue
        out[prefix + "dense_in.weight"] = ((width, h), "F32")
        out[prefix + "dense_in.bias"] = ((width,), "F32")
        for name in ("query", "key", "value", "attn_out", "dense"):
            out[prefix + name + ".weight"] = ((width, width), "F32")
            out[prefix + name + ".bias"] = ((width,), "F32")
        out[prefix + "classifier.weight"] = ((c, width), "F32")
        out[prefix + "classifier.bias"] = ((c,), "F32")
    return out


def read_safetensors(path: str | os.PathLike[str]) -> dict[str, tuple[str, np.ndarray]]:
    """Parse a safetensors file (F32 and I8 only): name -> (dtype name, array).

    The format is an 8-byte little-endian header length, a JSON header, then raw little-endian
    data; parsing it here keeps the reference free of any dependency beyond numpy.
    """
    path = Path(path)
    where = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot be read: {exc.strerror or exc}") from None
    if len(data) < 8:
        raise ConfigError(f"{where}: truncated (no safetensors header)")
    header_len = int.from_bytes(data[:8], "little")
    if header_len > len(data) - 8:
        raise ConfigError(f"{where}: header length {header_len} exceeds the file size")
    try:
        header = json.loads(data[8 : 8 + header_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{where}: the safetensors header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ConfigError(f"{where}: the safetensors header is not a JSON object")
    body = memoryview(data)[8 + header_len :]
    tensors: dict[str, tuple[str, np.ndarray]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise ConfigError(f"{where}: tensor '{name}': header entry is not an object")
        dtype_name, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype_name not in _DTYPES:
            raise ConfigError(f"{where}: tensor '{name}' has dtype {dtype_name!r}; bundles hold "
                              "F32 and I8 only")
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise ConfigError(f"{where}: tensor '{name}' has an invalid shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(_is_int(o) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= len(body)):
            raise ConfigError(f"{where}: tensor '{name}' has data offsets {offsets!r} outside the "
                              f"file's {len(body)} data bytes")
        dtype = _DTYPES[dtype_name]
        count = math.prod(shape)
        if offsets[1] - offsets[0] != count * dtype.itemsize:
            raise ConfigError(f"{where}: tensor '{name}' has {offsets[1] - offsets[0]} bytes for "
                              f"shape {shape} of {dtype_name}")
        array = np.frombuffer(body[offsets[0] : offsets[1]], dtype=dtype, count=count)
        tensors[name] = (dtype_name, array.reshape(shape).copy())
    return tensors


# --------------------------------------------------------------------------------------------
# The forward pass


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
        return int8_linear(x, weight, self.tensors[name + ".scale"], bias,
                           self._col_sums[name + ".weight"])

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
