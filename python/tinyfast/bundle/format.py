"""The bundle's contract on the Python side (docs/bundle.md): file names, the fields of
``tinyfast.json`` and the tensors they imply. Needs numpy alone."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tinyfast._io import read_json_object
from tinyfast.errors import ConfigError

# The runtime reads tinyfast.json through the same limit.
CONFIG_LIMIT = 1 << 20

BUNDLE_FORMAT = "tinyfast-bundle"
BUNDLE_VERSION = 1
BUNDLE_CONFIG = "tinyfast.json"
BUNDLE_WEIGHTS = "model.safetensors"
BUNDLE_TOKENIZER = "tokenizer.json"

EXIT_KINDS = ("fastbert", "linear")
HIDDEN_ACTS = ("gelu", "gelu_new")
QUANTIZATIONS = ("int8", "none")
TASKS = ("classification", "regression", "masked_lm")
_ARCH_INTS = (
    "vocab_size",
    "hidden_size",
    "num_layers",
    "num_heads",
    "intermediate_size",
    "max_position_embeddings",
    "type_vocab_size",
)




def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_bundle_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate ``tinyfast.json``; every problem is a ConfigError naming the field."""
    path = Path(path)
    where = str(path)
    config = read_json_object(path, limit=CONFIG_LIMIT)
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
    if task in ("regression", "masked_lm") and labels:
        raise ConfigError(f"{where}: labels must be [] for a {task} task")
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
    smoothing = config.get("smoothing", False)
    if not isinstance(smoothing, bool):
        raise ConfigError(f"{where}: smoothing must be true or false, got {smoothing!r}")
    if smoothing and config["quantization"] != "int8":
        raise ConfigError(f"{where}: smoothing applies to int8 linears only; this bundle's "
                          f"quantization is {config['quantization']!r}")
    residual = config.get("residual_layers", [])
    if not (isinstance(residual, list) and all(_is_int(v) for v in residual)
            and residual == sorted(set(residual))
            and all(0 <= v < arch["num_layers"] for v in residual)):
        raise ConfigError(f"{where}: residual_layers must be strictly increasing layer indices "
                          f"in 0..{arch['num_layers'] - 1}, got {residual!r}")
    if residual and config["quantization"] != "int8":
        raise ConfigError(f"{where}: residual_layers apply to int8 linears only; this bundle's "
                          f"quantization is {config['quantization']!r}")
    exits = config.get("exits")
    if not isinstance(exits, list):
        raise ConfigError(f"{where}: exits must be a list")
    if task == "masked_lm" and exits:
        raise ConfigError(f"{where}: a masked_lm bundle has no exits, got {len(exits)}")
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
    smoothing = bool(config.get("smoothing", False))
    residual = set(config.get("residual_layers", []))
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
            if smoothing:
                out[prefix + ".smooth"] = ((cols,), "F32")
            if layer in residual:
                out[prefix + ".residual_weight"] = ((rows, cols), "I8")
                out[prefix + ".residual_scale"] = ((rows,), "F32")
            out[prefix + ".bias"] = ((rows,), "F32")
        for norm in ("attn_norm", "ffn_norm"):
            out[f"layers.{layer}.{norm}.weight"] = ((h,), "F32")
            out[f"layers.{layer}.{norm}.bias"] = ((h,), "F32")
    if config["task"] == "masked_lm":
        v = arch["vocab_size"]
        out["head.transform.weight"] = ((h, h), "F32")
        out["head.transform.bias"] = ((h,), "F32")
        out["head.norm.weight"] = ((h,), "F32")
        out["head.norm.bias"] = ((h,), "F32")
        # The decoder is stored like an encoder linear.
        out["head.decoder.weight"] = ((v, h), "I8" if int8 else "F32")
        if int8:
            out["head.decoder.scale"] = ((v,), "F32")
        out["head.decoder.bias"] = ((v,), "F32")
        return out
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

