"""Writing a bundle directory (docs/bundle.md) from numpy tensors: the bundle's names for a BERT
state dict, ``tinyfast.json``'s architecture, and the write itself (beside the target, checked
against the contract, then swapped in, so a reader never sees half a bundle).

``tinyfast export`` (classifiers) and ``tinyfast augment`` (masked LMs for the int8 runtime)
both write through here; numpy only, like the rest of this package.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinyfast._io import replace_dir
from tinyfast.bundle.format import (
    BUNDLE_CONFIG,
    BUNDLE_FORMAT,
    BUNDLE_TOKENIZER,
    BUNDLE_VERSION,
    BUNDLE_WEIGHTS,
)
from tinyfast.bundle.gptq import quantize_weights_gptq
from tinyfast.bundle.quantize import quantize_weights, weight_residual
from tinyfast.bundle.reference import ReferenceModel
from tinyfast.bundle.smoothing import smoothing_factors
from tinyfast.errors import ConfigError

__all__ = ["InputStats", "add_linear", "architecture", "bert_tensors", "check_out_dir",
           "runtime_tokenizer", "write_bundle", "write_masked_lm_arrays"]


@dataclass(frozen=True)
class InputStats:
    """What calibration inputs showed of one linear's input: per-feature max |x| [in] and the
    second moments ``sum_t x_t x_t^T`` [in, in] (float64), over ``tokens`` tokens."""

    amax: np.ndarray
    second_moments: np.ndarray
    tokens: int


DTYPES = ("int8", "f32")


def add_linear(out: dict[str, np.ndarray], name: str, weight: np.ndarray, bias: np.ndarray,
               quantize: bool, stats: InputStats | None = None, residual: bool = False) -> None:
    """An encoder-style linear under ``name``: int8 codes and scales (or the f32 weight), and
    its bias. With calibration ``stats`` (int8 only), the input gets smoothing factors
    (``name.smooth``) and the smoothed weight is rounded by GPTQ over the smoothed inputs.
    ``residual`` (int8 only) adds the codes of what rounding left of the (smoothed) weight
    (``name.residual_weight``, ``name.residual_scale``; docs/bundle.md, "Residual layers")."""
    weight = np.asarray(weight, dtype=np.float32)
    if residual and not quantize:
        raise ConfigError(f"{name}: residual weights apply to int8 linears only")
    if not quantize:
        out[name + ".weight"] = weight
    else:
        try:
            if stats is not None:
                smooth = smoothing_factors(stats.amax, weight)
                # x' = x * m and W' = W / m: x' x'^T = diag(m) (x x^T) diag(m).
                m = smooth.astype(np.float64)
                moments = stats.second_moments * m[:, None] * m[None, :]
                weight = (weight / smooth[None, :]).astype(np.float32)
                codes, scales = quantize_weights_gptq(weight, moments)
            else:
                codes, scales = quantize_weights(weight)
            out[name + ".weight"], out[name + ".scale"] = codes, scales
            if stats is not None:
                out[name + ".smooth"] = smooth
            if residual:
                out[name + ".residual_weight"], out[name + ".residual_scale"] = \
                    weight_residual(weight, codes, scales)
        except ValueError as exc:
            raise ConfigError(f"cannot quantize {name}: {exc}") from None
    out[name + ".bias"] = np.asarray(bias, dtype=np.float32)


def bert_tensors(sd: dict[str, np.ndarray], num_layers: int, quantize: bool,
                 calibration: dict[str, InputStats] | None = None,
                 residual_layers: frozenset[int] = frozenset()) -> dict[str, np.ndarray]:
    """The embeddings and encoder layers of a BERT state dict (``bert.`` names, float32 arrays)
    under the bundle's names. ``calibration`` (int8 only): the input statistics of every encoder
    linear by bundle name (``layers.0.qkv``, ...), for smoothed, GPTQ-rounded linears.
    ``residual_layers`` (int8 only): layers whose linears also get residual weights."""
    def stats(name: str) -> InputStats | None:
        # A smoothed bundle smooths every encoder linear (docs/bundle.md): all or none.
        return None if calibration is None else calibration[name]

    emb = "bert.embeddings."
    out = {
        "embeddings.word": sd[emb + "word_embeddings.weight"],
        "embeddings.position": sd[emb + "position_embeddings.weight"],
        "embeddings.token_type": sd[emb + "token_type_embeddings.weight"],
        "embeddings.norm.weight": sd[emb + "LayerNorm.weight"],
        "embeddings.norm.bias": sd[emb + "LayerNorm.bias"],
    }
    for layer in range(num_layers):
        hf = f"bert.encoder.layer.{layer}."
        ours = f"layers.{layer}."
        attn = hf + "attention.self."
        # Query, key, value stacked along the output axis: one GEMM serves all three.
        parts = ("query", "key", "value")
        r = layer in residual_layers
        add_linear(out, ours + "qkv",
                   np.concatenate([sd[attn + n + ".weight"] for n in parts], axis=0),
                   np.concatenate([sd[attn + n + ".bias"] for n in parts], axis=0), quantize,
                   stats(ours + "qkv"), r)
        add_linear(out, ours + "attn_out", sd[hf + "attention.output.dense.weight"],
                   sd[hf + "attention.output.dense.bias"], quantize, stats(ours + "attn_out"), r)
        out[ours + "attn_norm.weight"] = sd[hf + "attention.output.LayerNorm.weight"]
        out[ours + "attn_norm.bias"] = sd[hf + "attention.output.LayerNorm.bias"]
        add_linear(out, ours + "ffn_in", sd[hf + "intermediate.dense.weight"],
                   sd[hf + "intermediate.dense.bias"], quantize, stats(ours + "ffn_in"), r)
        add_linear(out, ours + "ffn_out", sd[hf + "output.dense.weight"],
                   sd[hf + "output.dense.bias"], quantize, stats(ours + "ffn_out"), r)
        out[ours + "ffn_norm.weight"] = sd[hf + "output.LayerNorm.weight"]
        out[ours + "ffn_norm.bias"] = sd[hf + "output.LayerNorm.bias"]
    return out


def architecture(config: Any) -> dict[str, Any]:
    """``tinyfast.json``'s architecture of a BERT config."""
    return {
        "type": "bert",
        "vocab_size": int(config.vocab_size),
        "hidden_size": int(config.hidden_size),
        "num_layers": int(config.num_hidden_layers),
        "num_heads": int(config.num_attention_heads),
        "intermediate_size": int(config.intermediate_size),
        "max_position_embeddings": int(config.max_position_embeddings),
        "type_vocab_size": int(config.type_vocab_size),
        "layer_norm_eps": float(config.layer_norm_eps),
        "hidden_act": str(config.hidden_act),
    }


def runtime_tokenizer(text: str, source: Path | str, vocab_size: int) -> str:
    """A tokenizers JSON text with truncation and padding off (the runtime truncates to the
    bundle's max_length and pads per batch), checked to stay inside the vocabulary."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    data["truncation"] = None
    data["padding"] = None
    text = json.dumps(data, ensure_ascii=False)
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_str(text)
    except Exception as exc:  # tokenizers raises plain Exception subclasses
        raise ConfigError(f"{source}: not a valid tokenizers file: {exc}") from None
    top = max(tokenizer.get_vocab(with_added_tokens=True).values(), default=-1)
    if top >= vocab_size:
        raise ConfigError(f"{source}: the tokenizer produces ids up to {top}, but the model's "
                          f"vocab_size is {vocab_size}")
    return text


def check_out_dir(out: Path) -> None:
    """Replace only what is clearly a bundle (or nothing): never a user's other files."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory")
    if any(out.iterdir()) and not (out / BUNDLE_CONFIG).is_file():
        raise ConfigError(f"{out}: exists, is not empty and holds no {BUNDLE_CONFIG}; refusing to "
                          "replace it (choose a new directory)")


def _usual_permissions(directory: Path) -> None:
    """mkdtemp makes a private (0700) directory and safetensors a 0600 file; a bundle is meant
    to be deployed and read by other users, so give it what the umask gives any new file."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for file in directory.iterdir():
        os.chmod(file, 0o666 & ~umask)


def _publish(new: Path, target: Path) -> None:
    """Swap the finished bundle in; a concurrent writer of the same OUT makes one of the two
    renames fail, and that loser says so in one line (the winner's bundle stays whole)."""
    try:
        replace_dir(new, target)
    except OSError as exc:
        raise ConfigError(f"{target}: another process replaced it while this export was writing "
                          f"({exc.strerror}); nothing of this export was published") from None


def write_bundle(out: Path, tensors: dict[str, np.ndarray], config: dict[str, Any],
                 tokenizer_text: str, say: Callable[[str], None] = lambda _: None) -> None:
    """Write the bundle beside ``out``, read it back through the contract's checks, then swap it
    in; nothing is left behind on failure."""
    from safetensors.numpy import save_file

    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        say(f"writing {out}")
        save_file(tensors, str(tmp / BUNDLE_WEIGHTS))
        (tmp / BUNDLE_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        (tmp / BUNDLE_TOKENIZER).write_text(tokenizer_text, encoding="utf-8")
        _usual_permissions(tmp)
        say("checking the bundle against docs/bundle.md")
        ReferenceModel.load(tmp)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_masked_lm_arrays(encoder: dict[str, np.ndarray], head: dict[str, np.ndarray],
                           config: Any, tokenizer_text: str, out: str | os.PathLike[str],
                           dtype: str = "int8", max_length: int = 512,
                           source: str = "") -> Path:
    """The ``masked_lm`` bundle of a BERT masked LM: ``encoder`` its ``bert.`` state dict,
    ``head`` its prediction head as ``transform.weight``, ``transform.bias``, ``norm.weight``,
    ``norm.bias``, ``decoder.weight`` and ``decoder.bias`` (float32 arrays); ``config`` its BERT
    config. Returns the bundle's path."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    positions = int(config.max_position_embeddings)
    if not 2 <= max_length <= positions:
        raise ConfigError(f"max_length must be in 2..{positions}, got {max_length}")
    path = Path(out).expanduser().resolve()
    check_out_dir(path)
    quantize = dtype == "int8"
    tensors = bert_tensors(encoder, int(config.num_hidden_layers), quantize)
    for name in ("transform.weight", "transform.bias", "norm.weight", "norm.bias"):
        tensors["head." + name] = np.asarray(head[name], dtype=np.float32)
    add_linear(tensors, "head.decoder", head["decoder.weight"], head["decoder.bias"], quantize)
    from tinyfast import __version__

    bundle = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "architecture": architecture(config),
        "task": "masked_lm",
        "labels": [],
        "max_length": max_length,
        "quantization": "int8" if quantize else "none",
        "exits": [],
        "source": {"model": source, "tinyfast_version": __version__},
    }
    write_bundle(path, tensors, bundle, tokenizer_text)
    return path
