"""Models: loading and saving checkpoints, student presets and construction, FastBERT branches."""

from tinyfast.models.loading import (
    MINILM,
    check_max_length,
    count_parameters,
    load_classifier,
    load_encoder,
    load_tokenizer,
    resolve_model_path,
    save_classifier,
    save_encoder,
)
from tinyfast.models.students import STUDENT_PRESETS, build_student, check_heads, student_config

__all__ = [
    "MINILM",
    "STUDENT_PRESETS",
    "build_student",
    "check_heads",
    "check_max_length",
    "count_parameters",
    "load_classifier",
    "load_encoder",
    "load_tokenizer",
    "resolve_model_path",
    "save_classifier",
    "save_encoder",
    "student_config",
]
