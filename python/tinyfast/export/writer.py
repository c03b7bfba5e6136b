"""``tinyfast export``: a BERT classifier checkpoint (and its early-exit branches) -> the runtime
bundle of docs/bundle.md.

torch and transformers are imported inside the functions that need them: the CLI imports this
module to register the command, and ``tinyfast info`` must keep working without torch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tinyfast._io import read_json_object, read_limited
from tinyfast.bundle import BUNDLE_FORMAT, BUNDLE_VERSION, HIDDEN_ACTS
from tinyfast.bundle.gptq import DEFAULT_DAMP
from tinyfast.bundle.quantize import quantize_weights
from tinyfast.bundle.smoothing import DEFAULT_ALPHA
from tinyfast.bundle.writer import (
    DTYPES,
    InputStats,
    architecture,
    bert_tensors,
    check_out_dir,
    runtime_tokenizer,
    write_bundle,
)
from tinyfast.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from tinyfast.models.branches import Branches

__all__ = ["DTYPES", "SUPPORTED_ARCHITECTURE", "export", "quantize_weight"]

log = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURE = "BertForSequenceClassification"
# The runtime's own limit for tokenizer.json: a bundle must load where it was written.
TOKENIZER_LIMIT = 128 << 20
# For checkpoints without tinyfast_task.json (plain Hugging Face classifiers).
DEFAULT_MAX_LENGTH = 128


# --------------------------------------------------------------------------------------------
# Quantization (docs/bundle.md, "Int8 scheme")


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 of a torch weight ``[out, in]``: ``(q int8, scale f32)``
    by the one rule of ``tinyfast.bundle.quantize``."""
    import torch

    w = weight.detach().to(torch.float32).cpu().numpy()
    try:
        q, scale = quantize_weights(w)
    except ValueError as exc:
        raise ConfigError(f"cannot quantize a weight: {exc}") from None
    return torch.from_numpy(q), torch.from_numpy(scale)


# --------------------------------------------------------------------------------------------
# Checking the checkpoint


def _read_raw_config(path: Path) -> dict[str, Any]:
    """config.json as written: transformers 5 drops fields it no longer models (e.g. relative
    position embeddings), and those are exactly the ones that make a checkpoint unsupported."""
    return read_json_object(path / "config.json", "a model config object")


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


def _encoder_tensors(model: Any, quantize: bool, calibration: dict[str, InputStats] | None = None,
                     residual_layers: frozenset[int] = frozenset()) -> dict[str, np.ndarray]:
    """Every non-branch tensor of a classifier's bundle, named as docs/bundle.md names them."""
    import torch

    sd = {k: v.detach().to(torch.float32).cpu().numpy() for k, v in model.state_dict().items()}
    out = bert_tensors(sd, model.config.num_hidden_layers, quantize, calibration,
                       residual_layers)
    out["head.pooler.weight"] = sd["bert.pooler.dense.weight"]
    out["head.pooler.bias"] = sd["bert.pooler.dense.bias"]
    out["head.classifier.weight"] = sd["classifier.weight"]
    out["head.classifier.bias"] = sd["classifier.bias"]
    return out


def _load_branches(
    path: Path, branches_dir: str | os.PathLike[str] | None, config: Any
) -> Branches | None:
    from tinyfast.models.branches import BRANCHES_FILE, Branches

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
    if source.exists():
        try:
            text = read_limited(source, TOKENIZER_LIMIT).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{source}: not UTF-8 text (byte {exc.start})") from None
    else:
        from tinyfast.models import load_tokenizer

        # transformers converts a slow tokenizer's files to a fast one (or says it cannot).
        text = load_tokenizer(path).backend_tokenizer.to_str()
    return runtime_tokenizer(text, source, vocab_size)


def export(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    dtype: str = "int8",
    branches_dir: str | os.PathLike[str] | None = None,
    max_length: int | None = None,
    progress: bool = False,
    calibration: str | os.PathLike[str] | None = None,
    calibration_rows: int | None = None,
    residual_layers: int = 0,
) -> Path:
    """Write the runtime bundle of a BERT classifier checkpoint to ``out_dir``; return its path.

    ``dtype``: ``"int8"`` (quantized encoder linears) or ``"f32"`` (``quantization: "none"``).
    ``branches_dir``: where ``branches.json`` + ``branches.safetensors`` are; by default the
    checkpoint itself when it has them. ``max_length``: by default tinyfast_task.json's, or 128
    for a plain Hugging Face classifier (whose labels then come from config.json's id2label).
    ``progress`` prints each stage to stderr.

    ``calibration`` (int8 only): unlabeled text in the task's format or plain text (as
    ``selfdistill --unlabeled`` takes it). Up to ``calibration_rows`` rows of it (default 1024,
    spread over the file) run through the model; every encoder linear then gets smoothing factors
    for its input and GPTQ-rounded weights (``"smoothing": true`` in the bundle), which keeps the
    int8 model's outputs, and so its exit decisions, closer to the float model's.

    ``residual_layers`` (int8 only): how many layers, from the first, also quantize what rounding
    left of their weights and inputs and add those passes (docs/bundle.md, "Residual layers"):
    about 16-bit precision for three int8 GEMMs instead of one in those layers. Errors of the
    first layers reach every exit, so a few of them buy most of the agreement with the float
    model (benches/RESULTS.md, int8 sensitivity).
    """
    import torch

    from tinyfast import __version__
    from tinyfast.models import resolve_model_path

    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    path = resolve_model_path(model_dir)
    out = Path(out_dir).expanduser().resolve()  # "." or "x/.." still name a real directory
    check_out_dir(out)
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
    layers = int(config.num_hidden_layers)
    if isinstance(residual_layers, bool) or not isinstance(residual_layers, int) \
            or not 0 <= residual_layers <= layers:
        raise ConfigError(f"residual layers must be an integer in 0..{layers} (the model's "
                          f"layers), got {residual_layers!r}")
    if residual_layers and dtype != "int8":
        raise ConfigError("residual layers apply to int8 bundles; an f32 bundle has no "
                          "rounding to correct")
    if calibration is not None and dtype != "int8":
        raise ConfigError("calibration applies to int8 bundles; an f32 bundle has nothing to "
                          "calibrate")
    if calibration is None and calibration_rows is not None:
        raise ConfigError("calibration rows given without a calibration file")
    if calibration is not None:
        calibration = Path(calibration).expanduser()
        if not calibration.is_file():
            what = "not a regular file" if calibration.exists() else "no such file"
            raise ConfigError(f"{calibration}: {what} (the calibration text)")
    say = _stage_printer(progress)
    say(f"reading {path}")
    branches = _load_branches(path, branches_dir, config)
    tokenizer_text = _tokenizer_json(path, int(config.vocab_size))
    model = _load_model(path, config)

    stats, calibration_record = None, None
    if calibration is not None:
        from tinyfast.data import Columns, TaskMeta
        from tinyfast.export.calibration import DEFAULT_CALIBRATION_ROWS, calibration_stats
        from tinyfast.models import load_tokenizer

        # A plain Hugging Face classifier names no columns: its text is a "sentence" column
        # (or a .txt file), tokenized to the bundle's max_length.
        meta = dataclasses.replace(TaskMeta.load(path), max_length=max_length) \
            if task_length is not None else TaskMeta(task=task, labels=labels,
                                                     columns=Columns(label=None),
                                                     max_length=max_length)
        say(f"calibrating on {calibration}")
        stats, calibration_record = calibration_stats(
            model, calibration, load_tokenizer(path), meta,
            rows=DEFAULT_CALIBRATION_ROWS if calibration_rows is None else calibration_rows)
    say("quantizing the encoder's linears" if dtype == "int8" else "collecting f32 tensors")
    with torch.no_grad():
        tensors = _encoder_tensors(model, quantize=dtype == "int8", calibration=stats,
                                   residual_layers=frozenset(range(residual_layers)))
        if branches is not None:
            tensors.update({k: v.detach().to(torch.float32).cpu().numpy() for k, v in
                            branches.state_dict().items()})
    exits = [] if branches is None else [
        {"layer": layer, "kind": kind} for layer, kind in branches.kinds.items()
    ]
    bundle: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "architecture": architecture(config),
        "task": task,
        "labels": labels,
        "max_length": max_length,
        "quantization": "int8" if dtype == "int8" else "none",
        "exits": exits,
    }
    if stats is not None:
        bundle["smoothing"] = True
    if residual_layers:
        bundle["residual_layers"] = list(range(residual_layers))
    if any(e["kind"] == "fastbert" for e in exits):
        assert branches is not None
        bundle["branch"] = {"width": branches.width, "heads": branches.heads}
    bundle["source"] = {"model": str(path), "tinyfast_version": __version__}
    if calibration_record is not None:
        bundle["source"]["calibration"] = {
            **calibration_record, "smoothing_alpha": DEFAULT_ALPHA, "weight_rounding": "gptq",
            "gptq_damp": DEFAULT_DAMP}

    write_bundle(out, tensors, bundle, tokenizer_text, say)
    log.info("wrote %s (%s, %d exits)", out, bundle["quantization"], len(exits))
    return out


def _stage_printer(enabled: bool):
    def say(message: str) -> None:
        if enabled:
            print(f"export: {message}", file=sys.stderr, flush=True)

    return say
