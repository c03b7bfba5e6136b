"""TinyBERT distillation losses and the student-to-teacher width projections.

Pure torch. Every loss masks padding (the official code does not for hidden states and padded
attention queries) and treats the teacher as frozen: its side is detached. Losses are computed in at
least float32 so half-precision activations cannot overflow when squared and summed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tinyfast.distill.capture import Internals
from tinyfast.errors import ConfigError
from tinyfast.kernels._dtypes import compute_dtype
from tinyfast.kernels.attention_distill import (
    attention_distill_loss,
    check_head_counts,
    masked_score_mse,
)
from tinyfast.kernels.soft_cross_entropy import soft_cross_entropy as soft_cross_entropy_op
from tinyfast.kernels.soft_cross_entropy import soft_cross_entropy_reference

__all__ = [
    "Internals",
    "LossWeights",
    "Projection",
    "attention_mse",
    "hidden_mse",
    "intermediate_loss",
    "parse_layer_map",
    "prediction_loss",
    "regression_mse",
    "soft_cross_entropy",
    "uniform_layer_map",
]


def _real_tokens(attention_mask: Tensor, batch: int, length: int, device: torch.device) -> Tensor:
    """Boolean [B, L] mask of real tokens, checked against the activations' batch and length."""
    if attention_mask.dim() != 2 or tuple(attention_mask.shape) != (batch, length):
        raise ConfigError(
            f"attention_mask has shape {tuple(attention_mask.shape)}, expected ({batch}, {length})"
        )
    return attention_mask.to(device=device) != 0


def hidden_mse(student: Tensor, teacher: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean squared error over real tokens and all features of [B, L, D] activations.

    ``sum((s - t)^2 * m) / (num_real_tokens * D)``. The student must already be projected to the
    teacher's width. Values at padded positions never reach the result, even if inf or NaN.
    """
    if student.dim() != 3 or student.shape != teacher.shape:
        raise ConfigError(
            f"hidden states must both be [batch, length, width] of the same shape; got student "
            f"{tuple(student.shape)} and teacher {tuple(teacher.shape)} (project the student "
            "to the teacher's width first)"
        )
    batch, length, width = student.shape
    real = _real_tokens(attention_mask, batch, length, student.device)
    dtype = compute_dtype(student)
    diff = student.to(dtype) - teacher.detach().to(dtype)
    # where, not multiply: inf * 0 would be NaN.
    diff = torch.where(real.unsqueeze(-1), diff, diff.new_zeros(()))
    count = real.sum().clamp_min(1) * width
    return diff.square().sum() / count


def attention_mse(student_scores: Tensor, teacher_scores: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean squared error between pre-softmax attention scores [B, H, L, L].

    Only (query, key) pairs where both tokens are real count; the mean runs over heads and those
    pairs: ``sum (s - t)^2 m_q m_k / (H * sum_b n_b^2)``. Padded positions may hold -inf or any
    garbage without producing NaN in the value or the gradient.
    """
    if student_scores.dim() != 4 or teacher_scores.dim() != 4:
        raise ConfigError(
            f"attention scores must be [batch, heads, length, length]; got student "
            f"{tuple(student_scores.shape)} and teacher {tuple(teacher_scores.shape)}"
        )
    check_head_counts(student_scores.shape[1], teacher_scores.shape[1])
    if student_scores.shape != teacher_scores.shape:
        raise ConfigError(
            f"attention scores differ in shape: student {tuple(student_scores.shape)}, teacher "
            f"{tuple(teacher_scores.shape)}"
        )
    batch, _, length, length_k = student_scores.shape
    if length != length_k:
        raise ConfigError(f"attention scores are not square: {tuple(student_scores.shape)}")
    real = _real_tokens(attention_mask, batch, length, student_scores.device)
    # One masked mean for this score-level form and the fused op's reference.
    return masked_score_mse(student_scores, teacher_scores, real)


def soft_cross_entropy(
    student_logits: Tensor,
    teacher_logits: Tensor,
    temperature: float = 1.0,
    scale_by_t2: bool = False,
    fused: bool = False,
) -> Tensor:
    """Soft cross-entropy ``-sum_c softmax(z_T/T)_c log_softmax(z_S/T)_c``, averaged over the batch.

    Summed over classes (the official code also averages over classes, shrinking the loss by
    1/num_labels). ``scale_by_t2`` multiplies by T^2 to keep gradient size independent of T.
    ``fused`` computes it with the ``tinyfast::soft_cross_entropy`` op instead of its reference.
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"temperature must be a positive number, got {temperature}")
    if student_logits.dim() != 2 or student_logits.shape != teacher_logits.shape:
        raise ConfigError(
            f"logits must both be [batch, num_labels] of the same shape; got student "
            f"{tuple(student_logits.shape)} and teacher {tuple(teacher_logits.shape)}"
        )
    # The formula lives with the fused op (one head here).
    per_head = soft_cross_entropy_op if fused else soft_cross_entropy_reference
    loss = per_head(student_logits.unsqueeze(0), teacher_logits, temperature)[0]
    if scale_by_t2:
        loss = loss * (temperature * temperature)
    return loss


def _as_vector(logits: Tensor, who: str) -> Tensor:
    if logits.dim() == 2 and logits.shape[1] == 1:
        return logits[:, 0]
    if logits.dim() != 1:
        raise ConfigError(
            f"regression needs one output per example ([batch] or [batch, 1]); the {who} gives "
            f"{tuple(logits.shape)}"
        )
    return logits


def regression_mse(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Mean squared error between the student's and the teacher's outputs, [B] or [B, 1] each."""
    student = _as_vector(student_logits, "student")
    teacher = _as_vector(teacher_logits, "teacher")
    if student.shape != teacher.shape:
        raise ConfigError(
            f"student gives {student.shape[0]} outputs, teacher gives {teacher.shape[0]}"
        )
    dtype = compute_dtype(student)
    return (student.to(dtype) - teacher.detach().to(dtype)).square().mean()


def prediction_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    task: str,
    temperature: float = 1.0,
    scale_by_t2: bool = False,
    fused: bool = False,
) -> Tensor:
    """The prediction-layer loss: soft cross-entropy for classification, MSE for regression."""
    if task == "classification":
        return soft_cross_entropy(student_logits, teacher_logits, temperature, scale_by_t2, fused)
    if task == "regression":
        return regression_mse(student_logits, teacher_logits)
    raise ConfigError(f"unknown task {task!r}: expected 'classification' or 'regression'")


def _check_layer_counts(num_student_layers: int, num_teacher_layers: int) -> None:
    if num_student_layers < 1:
        raise ConfigError(f"the student needs at least one layer, got {num_student_layers}")
    if num_student_layers > num_teacher_layers:
        raise ConfigError(
            f"the student has {num_student_layers} layers, more than the teacher's "
            f"{num_teacher_layers}: the layer map needs student layers <= teacher layers"
        )


def uniform_layer_map(num_student_layers: int, num_teacher_layers: int) -> list[int]:
    """TinyBERT's uniform map: student layer m (1-based) learns from teacher layer floor(m*N/M).

    Returns the 1-based teacher layer for each student layer; the last always maps to the last.
    """
    _check_layer_counts(num_student_layers, num_teacher_layers)
    m_total, n_total = num_student_layers, num_teacher_layers
    return [m * n_total // m_total for m in range(1, m_total + 1)]


def parse_layer_map(spec: str, num_student_layers: int, num_teacher_layers: int) -> list[int]:
    """Parse a map such as ``"3,6,9,12"``: one 1-based teacher layer per student layer."""
    if num_student_layers < 1 or num_teacher_layers < 1:
        raise ConfigError(
            f"layer counts must be positive, got student {num_student_layers}, "
            f"teacher {num_teacher_layers}"
        )
    parts = [part.strip() for part in spec.split(",")]
    layers: list[int] = []
    for part in parts:
        try:
            layers.append(int(part))
        except ValueError:
            raise ConfigError(
                f"layer map {spec!r}: {part!r} is not a layer number; write comma-separated "
                "1-based teacher layers such as '3,6,9,12'"
            ) from None
    if len(layers) != num_student_layers:
        raise ConfigError(
            f"layer map {spec!r} names {len(layers)} teacher layers but the student has "
            f"{num_student_layers}: give one teacher layer per student layer"
        )
    for layer in layers:
        if not 1 <= layer <= num_teacher_layers:
            raise ConfigError(
                f"layer map {spec!r}: teacher layer {layer} is out of range 1..{num_teacher_layers}"
            )
    return layers


class Projection(nn.Module):
    """Learned maps from student width to teacher width, for embeddings (0) and layers (1..M).

    ``shared=True`` uses one ``nn.Linear`` for every index (the official code); ``shared=False``
    one per index (the paper). With equal widths the maps start as the identity so distillation
    starts from the student's own geometry; ``identity=True`` makes them a parameter-free no-op.
    """

    def __init__(
        self,
        student_dim: int,
        teacher_dim: int,
        num_layers: int,
        shared: bool = True,
        identity: bool = False,
    ) -> None:
        super().__init__()
        if student_dim < 1 or teacher_dim < 1 or num_layers < 1:
            raise ConfigError(
                f"projection sizes must be positive: student_dim={student_dim}, "
                f"teacher_dim={teacher_dim}, num_layers={num_layers}"
            )
        if identity and student_dim != teacher_dim:
            raise ConfigError(
                f"an identity projection needs equal widths, but the student is {student_dim} "
                f"wide and the teacher {teacher_dim}"
            )
        self.student_dim = student_dim
        self.teacher_dim = teacher_dim
        self.num_layers = num_layers
        self.shared = shared
        self.identity = identity
        count = 0 if identity else (1 if shared else num_layers + 1)
        self.maps = nn.ModuleList(nn.Linear(student_dim, teacher_dim) for _ in range(count))
        if student_dim == teacher_dim:
            with torch.no_grad():
                for linear in self.maps:
                    linear.weight.copy_(torch.eye(student_dim))
                    linear.bias.zero_()

    def forward(self, x: Tensor, index: int) -> Tensor:
        if not 0 <= index <= self.num_layers:
            raise IndexError(f"projection index {index} is out of range 0..{self.num_layers}")
        if self.identity:
            return x
        return self.maps[0 if self.shared else index](x)


@dataclass
class LossWeights:
    """Weights of the TinyBERT loss terms."""

    embedding: float = 1.0
    hidden: float = 1.0
    attention: float = 1.0
    prediction: float = 1.0

    def __post_init__(self) -> None:
        for name in ("embedding", "hidden", "attention", "prediction"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"loss weight {name} must be a finite number >= 0, got {value}")


def intermediate_loss(
    student: Internals,
    teacher: Internals,
    attention_mask: Tensor,
    layer_map: list[int],
    projection: Projection,
    weights: LossWeights,
    use_attention: bool = True,
) -> tuple[Tensor, dict[str, float]]:
    """Embedding + hidden (+ attention) losses of TinyBERT's Transformer distillation.

    Student layer m (1-based) learns from teacher layer ``layer_map[m - 1]``; the embedding output
    learns from the teacher's. Per-layer terms are summed, not averaged. Returns the weighted loss
    and the unweighted sums ``{"emb", "hid", "att"}`` as floats for logging. When both sides carry
    queries and keys (``attention_qk``) instead of scores, the attention term is the fused
    ``tinyfast::attention_distill_loss``, which never stores an L x L score tensor.
    """
    num_student = len(student.hidden_states) - 1
    num_teacher = len(teacher.hidden_states) - 1
    if num_student < 1 or num_teacher < 1:
        raise ConfigError(
            "hidden_states must hold the embedding output and one entry per layer; got "
            f"{num_student + 1} for the student and {num_teacher + 1} for the teacher"
        )
    if len(layer_map) != num_student:
        raise ConfigError(
            f"the layer map has {len(layer_map)} entries but the student has {num_student} layers"
        )
    for layer in layer_map:
        if not 1 <= layer <= num_teacher:
            raise ConfigError(
                f"the layer map names teacher layer {layer}, outside 1..{num_teacher}"
            )
    if projection.num_layers != num_student:
        raise ConfigError(
            f"the projection covers {projection.num_layers} student layers but the student has "
            f"{num_student}"
        )
    fused = student.attention_qk is not None and teacher.attention_qk is not None
    if use_attention:
        for who, internals, count in (
            ("student", student, num_student),
            ("teacher", teacher, num_teacher),
        ):
            per_layer = internals.attention_qk if fused else internals.attention_scores
            if per_layer is None or len(per_layer) != count:
                got = "none" if per_layer is None else str(len(per_layer))
                raise ConfigError(
                    f"the attention loss needs the {who}'s pre-softmax scores for each of its "
                    f"{count} layers, got {got}"
                )

    emb = hidden_mse(
        projection(student.hidden_states[0], 0), teacher.hidden_states[0], attention_mask
    )
    hid = emb.new_zeros(())
    att = emb.new_zeros(())
    for m, g in enumerate(layer_map, start=1):
        student_hidden = projection(student.hidden_states[m], m)
        hid = hid + hidden_mse(student_hidden, teacher.hidden_states[g], attention_mask)
        if use_attention and fused:
            s, t = student.attention_qk[m - 1], teacher.attention_qk[g - 1]
            att = att + attention_distill_loss(s.q, s.k, t.q, t.k, attention_mask, s.scale,
                                               t.scale)
        elif use_attention:
            att = att + attention_mse(
                student.attention_scores[m - 1], teacher.attention_scores[g - 1], attention_mask
            )
    loss = weights.embedding * emb + weights.hidden * hid
    if use_attention:
        loss = loss + weights.attention * att
    logs = {"emb": float(emb.detach()), "hid": float(hid.detach()), "att": float(att.detach())}
    return loss, logs
