"""The intermediate-layer step both TinyBERT stages share: embedding, hidden-state and attention
MSE against a frozen teacher through learned width projections (W_e, W_h), and those projections'
files beside a student checkpoint, so the next stage starts from them instead of from noise."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tinyfast._io import read_json_object
from tinyfast.distill.capture import forward_internals
from tinyfast.distill.losses import (
    LossWeights,
    Projection,
    intermediate_loss,
    parse_layer_map,
    uniform_layer_map,
)
from tinyfast.errors import ConfigError
from tinyfast.kernels._triton import launches_triton
from tinyfast.models import check_heads

__all__ = [
    "PROJECTION_SPEC",
    "PROJECTION_WEIGHTS",
    "IntermediateOptions",
    "IntermediateStep",
    "load_projection",
    "make_intermediate_step",
    "model_inputs",
    "options_dict",
    "save_projection",
    "uses_fused_kernels",
]

log = logging.getLogger(__name__)

PROJECTION_SPEC = "distill_projection.json"
PROJECTION_WEIGHTS = "distill_projection.safetensors"
_PROJECTION_VERSION = 1


@dataclass
class IntermediateOptions:
    """How student layers learn from teacher layers (both stages share these)."""

    layer_map: str | None = None  # "3,6,9,12": teacher layer per student layer; None = uniform
    shared_projection: bool = True  # one width map for all layers (official code) or one per layer
    use_attention: bool = True
    weights: LossWeights = field(default_factory=LossWeights)
    # The fused tinyfast:: ops wherever they run Triton (CUDA, or the interpreter); the plain torch
    # losses elsewhere or when off. Both give the same losses.
    fused_kernels: bool = True


class IntermediateStep(nn.Module):
    """Embedding + hidden (+ attention) MSE against a frozen teacher. Trains the student and the
    width projections; the teacher is kept out of the module's parameters on purpose, so neither
    the optimizer, DDP nor checkpoints ever see it."""

    def __init__(self, student: nn.Module, teacher: nn.Module, projection: Projection,
                 layer_map: list[int], options: IntermediateOptions) -> None:
        super().__init__()
        self.student = student
        self.projection = projection
        self.__dict__["teacher"] = teacher.eval().requires_grad_(False)
        self.layer_map = layer_map
        self.options = options

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        inputs = model_inputs(batch)
        attention = self.options.use_attention
        # Queries and keys instead of L x L scores when the fused attention loss takes them.
        scores = not uses_fused_kernels(self.options.fused_kernels, self.student)
        with torch.no_grad():
            t = forward_internals(self.teacher, inputs, want_attention=attention,
                                  want_logits=False, scores=scores)
        s = forward_internals(self.student, inputs, want_attention=attention, want_logits=False,
                              scores=scores)
        return intermediate_loss(s, t, inputs["attention_mask"], self.layer_map, self.projection,
                                 self.options.weights, use_attention=attention)


def uses_fused_kernels(enabled: bool, model: nn.Module) -> bool:
    """Whether a step on ``model`` computes its losses with the fused ops: when they are enabled
    and would launch their Triton kernels on the model's device."""
    return enabled and launches_triton(next(model.parameters()))


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != "labels"}


def resolve_layer_map(options: IntermediateOptions, student_layers: int,
                      teacher_layers: int) -> list[int]:
    if options.layer_map:
        return parse_layer_map(options.layer_map, student_layers, teacher_layers)
    return uniform_layer_map(student_layers, teacher_layers)


def make_intermediate_step(student, teacher, options: IntermediateOptions) -> IntermediateStep:
    s_cfg, t_cfg = student.config, teacher.config
    check_heads(s_cfg, t_cfg, options.use_attention)
    layer_map = resolve_layer_map(options, s_cfg.num_hidden_layers, t_cfg.num_hidden_layers)
    projection = Projection(s_cfg.hidden_size, t_cfg.hidden_size, s_cfg.num_hidden_layers,
                            shared=options.shared_projection)
    return IntermediateStep(student, teacher, projection, layer_map, options)


def options_dict(options: IntermediateOptions) -> dict[str, Any]:
    d = asdict(options)
    d["weights"] = asdict(options.weights)
    return d




def _projection_spec(projection: Projection) -> dict[str, Any]:
    return {"format_version": _PROJECTION_VERSION, "student_dim": projection.student_dim,
            "teacher_dim": projection.teacher_dim, "num_layers": projection.num_layers,
            "shared": projection.shared}


def save_projection(projection: Projection, directory: Path) -> None:
    """Write the width projections beside a student checkpoint (safetensors + a JSON shape)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in projection.state_dict().items()}
    save_file(state, str(directory / PROJECTION_WEIGHTS))
    (directory / PROJECTION_SPEC).write_text(json.dumps(_projection_spec(projection), indent=1)
                                             + "\n", encoding="utf-8")


def load_projection(projection: Projection, directory: str | Path) -> bool:
    """Start ``projection`` from the one saved in ``directory`` when it has the same shape;
    False (and a note in the log) when there is none or it does not fit."""
    from safetensors.torch import load_file

    directory = Path(directory)
    spec_path = directory / PROJECTION_SPEC
    if not spec_path.exists():
        return False
    spec = read_json_object(spec_path, "the projection's shape")
    wanted = _projection_spec(projection)
    if spec != wanted:
        log.warning("%s: the saved projections (%s) do not fit this student and teacher (%s); "
                    "they start afresh", spec_path, spec, wanted)
        return False
    try:
        state = load_file(str(directory / PROJECTION_WEIGHTS))
        projection.load_state_dict(state, strict=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"{directory / PROJECTION_WEIGHTS}: cannot load the projections: "
                          f"{str(exc).splitlines()[0]}") from None
    log.info("%s: width projections start from the saved ones", directory)
    return True
