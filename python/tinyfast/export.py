"""``tinyfast export``: a BERT classifier checkpoint (and its early-exit branches) -> the runtime
bundle of docs/bundle.md.

torch and transformers are imported inside the functions that need them: the CLI imports this
module to register the command, and ``tinyfast info`` must keep working without torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinyfast.errors import ConfigError
from tinyfast.reference import (
    BUNDLE_CONFIG,
    BUNDLE_FORMAT,
    BUNDLE_TOKENIZER,
    BUNDLE_VERSION,
    BUNDLE_WEIGHTS,
    HIDDEN_ACTS,
    ReferenceModel,
)

if TYPE_CHECKING:
    import torch

    from tinyfast.branches import Branches

__all__ = ["DTYPES", "SUPPORTED_ARCHITECTURE", "add_export_command", "export", "quantize_weight"]

log = logging.getLogger(__name__)

DTYPES = ("int8", "f32")
SUPPORTED_ARCHITECTURE = "BertForSequenceClassification"
# For checkpoints without tinyfast_task.json (plain Hugging Face classifiers).
DEFAULT_MAX_LENGTH = 128


# --------------------------------------------------------------------------------------------
# Quantization (docs/bundle.md, "Int8 scheme")


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: ``(q [out, in] int8, scale [out] f32)``.

    ``scale[o] = max_k |w[o, k]| / 127`` (1 for an all-zero row), ``q = clamp(round(w / scale),
    -127, 127)`` rounding half away from zero. The division runs in float64 against the stored
    float32 scale, so ``|q * scale - w| <= scale / 2`` holds for the scale the runtime reads.
    """
    import torch

    w = weight.detach().to(torch.float32)
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax))
    x = w.double() / scale.double()[:, None]
    q = torch.sign(x) * torch.floor(torch.abs(x) + 0.5)
    return torch.clamp(q, -127, 127).to(torch.int8), scale.contiguous()


# --------------------------------------------------------------------------------------------
# Checking the checkpoint


def _read_raw_config(path: Path) -> dict[str, Any]:
    """config.json as written: transformers 5 drops fields it no longer models (e.g. relative
    position embeddings), and those are exactly the ones that make a checkpoint unsupported."""
    where = path / "config.json"
    try:
        raw = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a JSON object")
    return raw


def _check_architecture(raw: dict[str, Any], where: Path) -> None:
    supported = (f"tinyfast export supports BERT sequence classifiers ({SUPPORTED_ARCHITECTURE}, "
                 "model_type 'bert')")
    model_type = raw.get("model_type")
    architectures = raw.get("architectures") or []
    if model_type != "bert":
        shown = f" ({', '.join(map(str, architectures))})" if architectures else ""
        raise ConfigError(f"{where}: model_type is {model_type!r}{shown}; {supported}")
    if architectures and SUPPORTED_ARCHITECTURE not in architectures:
        if not any(str(a).endswith("ForSequenceClassification") for a in architectures):
            raise ConfigError(
                f"{where}: architectures is {architectures}: a checkpoint without a sequence "
                f"classification head; fine-tune it first (tinyfast finetune). {supported}"
            )
        raise ConfigError(f"{where}: architectures is {architectures}; {supported}")
    act = raw.get("hidden_act", "gelu")
    if act not in HIDDEN_ACTS:
        raise ConfigError(f"{where}: hidden_act is {act!r}; the runtime computes "
                          f"{' or '.join(HIDDEN_ACTS)} only")
    positions = raw.get("position_embedding_type", "absolute")
    if positions != "absolute":
        raise ConfigError(f"{where}: position_embedding_type is {positions!r}; the runtime "
                          "supports absolute position embeddings only")
    for flag in ("is_decoder", "add_cross_attention"):
        if raw.get(flag):
            raise ConfigError(f"{where}: {flag} is true; the runtime runs bidirectional "
                              "encoders only")
    if raw.get("problem_type") == "multi_label_classification":
        raise ConfigError(f"{where}: problem_type is 'multi_label_classification'; the runtime's "
                          "softmax and early exit need single-label classification or regression")
    hidden, heads = raw.get("hidden_size"), raw.get("num_attention_heads")
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and hidden % heads:
        raise ConfigError(f"{where}: hidden_size {hidden} is not divisible by "
                          f"num_attention_heads {heads}")


def _task_and_labels(path: Path, config: Any) -> tuple[str, list[str], int | None]:
    """(task, labels, max_length) from tinyfast_task.json, else from config.json (and no
    max_length)."""
    from tinyfast.data import TASK_FILE, TaskMeta

    num_labels = int(config.num_labels)
    if (path / TASK_FILE).is_file():
        meta = TaskMeta.load(path)
        if meta.num_labels != num_labels:
            raise ConfigError(
                f"{path / TASK_FILE}: the task has {meta.num_labels} outputs but the checkpoint's "
                f"classifier has {num_labels} (config.json num_labels)"
            )
        if meta.task == "classification" and num_labels < 2:
            raise ConfigError(f"{path / TASK_FILE}: a classification task needs at least 2 labels")
        return meta.task, list(meta.labels), meta.max_length
    # A plain Hugging Face classifier: transformers' own conventions decide the task.
    if config.problem_type == "regression" or num_labels == 1:
        task, labels = "regression", []
    else:
        id2label = dict(config.id2label or {})
        labels = [str(id2label.get(i, f"LABEL_{i}")) for i in range(num_labels)]
        task = "classification"
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{path / 'config.json'}: id2label repeats names: {labels}")
    return task, labels, None


def _load_model(path: Path, config: Any) -> Any:
    """The classifier with every weight from the checkpoint: a missing weight would otherwise be
    initialised at random and exported silently."""
    from transformers import BertForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # we report missing weights ourselves, below
    try:
        model, info = BertForSequenceClassification.from_pretrained(
            path, config=config, local_files_only=True, output_loading_info=True
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"{path}: cannot load the model weights: {exc}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = sorted(info.get("missing_keys", ()))
    if missing:
        shown = ", ".join(missing[:6]) + (" ..." if len(missing) > 6 else "")
        raise ConfigError(f"{path}: the checkpoint lacks {len(missing)} weights of a "
                          f"{SUPPORTED_ARCHITECTURE}: {shown}")
    return model.float().eval()


# --------------------------------------------------------------------------------------------
# Building the bundle


def _encoder_tensors(model: Any, quantize: bool) -> dict[str, torch.Tensor]:
    """Every non-branch tensor of the bundle, named as docs/bundle.md names them."""
    import torch

    sd = {k: v.detach().to(torch.float32) for k, v in model.state_dict().items()}
    emb = "bert.embeddings."
    out = {
        "embeddings.word": sd[emb + "word_embeddings.weight"],
        "embeddings.position": sd[emb + "position_embeddings.weight"],
        "embeddings.token_type": sd[emb + "token_type_embeddings.weight"],
        "embeddings.norm.weight": sd[emb + "LayerNorm.weight"],
        "embeddings.norm.bias": sd[emb + "LayerNorm.bias"],
    }

    def linear(name: str, weight: torch.Tensor, bias: torch.Tensor) -> None:
        if quantize:
            out[name + ".weight"], out[name + ".scale"] = quantize_weight(weight)
        else:
            out[name + ".weight"] = weight
        out[name + ".bias"] = bias

    for layer in range(model.config.num_hidden_layers):
        hf = f"bert.encoder.layer.{layer}."
        ours = f"layers.{layer}."
        attn = hf + "attention.self."
        # Query, key, value stacked along the output axis: one GEMM serves all three.
        qkv_w = torch.cat([sd[attn + n + ".weight"] for n in ("query", "key", "value")], dim=0)
        qkv_b = torch.cat([sd[attn + n + ".bias"] for n in ("query", "key", "value")], dim=0)
        linear(ours + "qkv", qkv_w, qkv_b)
        linear(ours + "attn_out", sd[hf + "attention.output.dense.weight"],
               sd[hf + "attention.output.dense.bias"])
        out[ours + "attn_norm.weight"] = sd[hf + "attention.output.LayerNorm.weight"]
        out[ours + "attn_norm.bias"] = sd[hf + "attention.output.LayerNorm.bias"]
        linear(ours + "ffn_in", sd[hf + "intermediate.dense.weight"],
               sd[hf + "intermediate.dense.bias"])
        linear(ours + "ffn_out", sd[hf + "output.dense.weight"], sd[hf + "output.dense.bias"])
        out[ours + "ffn_norm.weight"] = sd[hf + "output.LayerNorm.weight"]
        out[ours + "ffn_norm.bias"] = sd[hf + "output.LayerNorm.bias"]
    out["head.pooler.weight"] = sd["bert.pooler.dense.weight"]
    out["head.pooler.bias"] = sd["bert.pooler.dense.bias"]
    out["head.classifier.weight"] = sd["classifier.weight"]
    out["head.classifier.bias"] = sd["classifier.bias"]
    return out


def _load_branches(
    path: Path, branches_dir: str | os.PathLike[str] | None, config: Any
) -> Branches | None:
    from tinyfast.branches import BRANCHES_FILE, Branches

    if branches_dir is None:
        if not (path / BRANCHES_FILE).is_file():
            return None
        directory = path
    else:
        directory = Path(branches_dir).expanduser()
        if not (directory / BRANCHES_FILE).is_file():
            raise ConfigError(f"{directory}: no {BRANCHES_FILE} (given as the branches directory)")
    branches = Branches.load(directory, config.hidden_size, config.num_hidden_layers)
    if branches.num_labels != config.num_labels:
        raise ConfigError(
            f"{directory / BRANCHES_FILE}: num_labels is {branches.num_labels} but the model "
            f"has {config.num_labels} outputs"
        )
    return branches


def _tokenizer_json(path: Path, vocab_size: int) -> str:
    """The checkpoint's tokenizer.json (converted from a slow tokenizer if need be), with no
    truncation or padding: the runtime truncates to the bundle's max_length and pads per batch,
    and a fixed setting saved with the checkpoint (MiniLM's pads every text to 128) must not."""
    source = path / "tokenizer.json"
    if source.is_file():
        text = source.read_text(encoding="utf-8")
    else:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: no usable tokenizer files: {exc}") from None
        if not getattr(tokenizer, "is_fast", False):
            raise ConfigError(f"{path}: the tokenizer cannot be converted to tokenizer.json")
        text = tokenizer.backend_tokenizer.to_str()
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


def _check_out_dir(out: Path) -> None:
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
    """Swap the complete ``new`` directory in at ``target``; readers never see a partial one."""
    if not target.exists():
        os.replace(new, target)
        return
    # A rename cannot replace a non-empty directory: move the old bundle aside first.
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, aside / target.name)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(aside / target.name, target)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def export(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    dtype: str = "int8",
    branches_dir: str | os.PathLike[str] | None = None,
    max_length: int | None = None,
) -> Path:
    """Write the runtime bundle of a BERT classifier checkpoint to ``out_dir``; return its path.

    ``dtype``: ``"int8"`` (quantized encoder linears) or ``"f32"`` (``quantization: "none"``).
    ``branches_dir``: where ``branches.json`` + ``branches.safetensors`` are; by default the
    checkpoint itself when it has them. ``max_length``: by default tinyfast_task.json's, or 128
    for a plain Hugging Face classifier (whose labels then come from config.json's id2label).
    """
    import torch
    from safetensors.torch import save_file

    from tinyfast import __version__
    from tinyfast.models import resolve_model_path

    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    path = resolve_model_path(model_dir)
    out = Path(out_dir).expanduser().resolve()  # "." or "x/.." still name a real directory
    _check_out_dir(out)
    _check_architecture(_read_raw_config(path), path / "config.json")
    from transformers import BertConfig

    try:
        config = BertConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        where = path / "config.json"
        raise ConfigError(f"{where}: cannot be read as a BERT config: {exc}") from None
    task, labels, task_length = _task_and_labels(path, config)
    positions = int(config.max_position_embeddings)
    if task_length is None:
        # A plain Hugging Face classifier: say where the bundle's task comes from.
        if max_length is None:
            max_length = min(DEFAULT_MAX_LENGTH, positions)
        log.warning("%s: no tinyfast_task.json; the bundle takes its task (%s, labels %s) from "
                    "config.json, max_length %s", path, task, labels, max_length)
    elif max_length is None:
        max_length = task_length
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ConfigError(f"max_length must be an integer >= 2, got {max_length!r}")
    if max_length > positions:
        raise ConfigError(f"max_length {max_length} exceeds the model's max_position_embeddings "
                          f"{positions}; pass --max-length {positions} or less")
    branches = _load_branches(path, branches_dir, config)
    tokenizer_text = _tokenizer_json(path, int(config.vocab_size))
    model = _load_model(path, config)

    with torch.no_grad():
        tensors = _encoder_tensors(model, quantize=dtype == "int8")
        if branches is not None:
            tensors.update({k: v.detach().to(torch.float32) for k, v in
                            branches.state_dict().items()})
    tensors = {k: v.contiguous().clone() for k, v in tensors.items()}  # no shared storage
    exits = [] if branches is None else [
        {"layer": layer, "kind": kind} for layer, kind in branches.kinds.items()
    ]
    bundle: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "architecture": {
            "type": "bert",
            "vocab_size": int(config.vocab_size),
            "hidden_size": int(config.hidden_size),
            "num_layers": int(config.num_hidden_layers),
            "num_heads": int(config.num_attention_heads),
            "intermediate_size": int(config.intermediate_size),
            "max_position_embeddings": positions,
            "type_vocab_size": int(config.type_vocab_size),
            "layer_norm_eps": float(config.layer_norm_eps),
            "hidden_act": str(config.hidden_act),
        },
        "task": task,
        "labels": labels,
        "max_length": max_length,
        "quantization": "int8" if dtype == "int8" else "none",
        "exits": exits,
    }
    if any(e["kind"] == "fastbert" for e in exits):
        assert branches is not None
        bundle["branch"] = {"width": branches.width, "heads": branches.heads}
    bundle["source"] = {"model": str(path), "tinyfast_version": __version__}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        save_file(tensors, str(tmp / BUNDLE_WEIGHTS))
        (tmp / BUNDLE_CONFIG).write_text(json.dumps(bundle, indent=2) + "\n", encoding="utf-8")
        (tmp / BUNDLE_TOKENIZER).write_text(tokenizer_text, encoding="utf-8")
        _usual_permissions(tmp)
        # Read it back through the contract's checks before anyone can see it.
        ReferenceModel.load(tmp)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %s (%s, %d exits)", out, bundle["quantization"], len(exits))
    return out


# --------------------------------------------------------------------------------------------
# Command line


def add_export_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``tinyfast export MODEL OUT`` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "export",
        help="write the int8 runtime bundle of a BERT classifier",
        description="Write the runtime bundle (tinyfast.json, model.safetensors, tokenizer.json) "
                    "of a BERT classifier checkpoint: a tinyfast finetune teacher, a TinyBERT "
                    "student or a Hugging Face BertForSequenceClassification. Early-exit "
                    "branches (branches.json + branches.safetensors) beside the checkpoint are "
                    "included. A checkpoint without tinyfast_task.json takes its labels from "
                    "config.json's id2label and max length 128.",
    )
    p.add_argument("model", metavar="MODEL", help="classifier checkpoint directory")
    p.add_argument("out", metavar="OUT", help="bundle directory to write (replaced if it holds a "
                   "bundle; any other non-empty directory is refused)")
    p.add_argument("--dtype", choices=DTYPES, default="int8",
                   help="int8 weights, or f32 for an unquantized bundle to compare against "
                        "(default: %(default)s)")
    p.add_argument("--branches", metavar="DIR", default=None,
                   help="directory with branches.json + branches.safetensors (default: MODEL "
                        "when it has them; none otherwise)")
    p.add_argument("--max-length", metavar="N", type=int, default=None,
                   help="tokens per text or pair (default: the task's, from "
                        "tinyfast_task.json, else 128)")
    p.set_defaults(run=_run_export)
    return p


def _run_export(args: argparse.Namespace) -> int:
    out = export(args.model, args.out, dtype=args.dtype, branches_dir=args.branches,
                 max_length=args.max_length)
    bundle = json.loads((out / BUNDLE_CONFIG).read_text(encoding="utf-8"))
    summary = {
        "bundle": str(out),
        "quantization": bundle["quantization"],
        "task": bundle["task"],
        "labels": bundle["labels"],
        "max_length": bundle["max_length"],
        "exits": bundle["exits"],
        "bytes": sum(f.stat().st_size for f in out.iterdir()),
    }
    print(json.dumps(summary, indent=1))
    return 0
