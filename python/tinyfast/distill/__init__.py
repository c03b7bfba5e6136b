"""TinyBERT's two-stage distillation: general (``distill_general``) and task (``distill_task``),
their losses and the internals they read from a forward pass."""

from tinyfast.distill.general import distill_general
from tinyfast.distill.intermediate import IntermediateOptions, IntermediateStep
from tinyfast.distill.task import (
    INTERMEDIATE_DEFAULTS,
    PREDICTION_DEFAULTS,
    PredictionStep,
    StageSettings,
    distill_task,
)

__all__ = [
    "INTERMEDIATE_DEFAULTS",
    "PREDICTION_DEFAULTS",
    "IntermediateOptions",
    "IntermediateStep",
    "PredictionStep",
    "StageSettings",
    "distill_general",
    "distill_task",
]
