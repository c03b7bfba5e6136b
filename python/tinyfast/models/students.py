"""Student presets and construction: random, from a student checkpoint, or from chosen teacher
layers. A student is always a ``BertForSequenceClassification`` that shares the teacher's
tokenizer, so its vocabulary, position and token-type tables come from the teacher's config."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
)

from tinyfast._io import read_json_object
from tinyfast.errors import ConfigError
from tinyfast.models.loading import (
    apply_meta,
    load_config,
    load_encoder,
    read_state_dict,
    resolve_model_path,
)

if TYPE_CHECKING:
    from tinyfast.data import TaskMeta

__all__ = ["STUDENT_PRESETS", "build_student", "check_heads", "student_config"]

log = logging.getLogger(__name__)

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
# Students


def _read_spec_file(path: Path) -> dict[str, Any]:
    fields = read_json_object(path, "a JSON object of BertConfig fields (the student config)")
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
        apply_meta(config, meta)
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
    ckpt_cfg = load_config(path)
    for name in _SHAPE_FIELDS:
        ours, theirs = getattr(student.config, name), getattr(ckpt_cfg, name, None)
        if ours != theirs:
            raise ConfigError(
                f"{path}: the checkpoint's {name} is {theirs} but the student's is {ours}; "
                "init 'checkpoint' needs the same architecture"
            )
    prefix = student.base_model_prefix
    base_names = {name for name, _ in _base(student).named_children()}
    state = {_normalise_key(k, prefix, base_names): v for k, v in read_state_dict(path).items()}
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
        apply_meta(config, meta)
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

