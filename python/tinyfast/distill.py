"""TinyBERT's two-stage distillation: ``distill general`` and ``distill task``.

General distillation teaches a student the teacher's embeddings, hidden states and attention
scores on unlabeled text. Task distillation repeats that on task data (step 1, "intermediate"),
then trains the student's predictions on the teacher's soft labels (step 2, "prediction"), keeping
the best dev checkpoint. Every step runs through the shared loop in ``tinyfast.train``.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tinyfast import distributed, train
from tinyfast.batching import collate
from tinyfast.data import Columns, TaskMeta
from tinyfast.errors import ConfigError
from tinyfast.evaluation import main_metric
from tinyfast.finetune import dev_evaluator, write_summary
from tinyfast.losses import (
    LossWeights,
    Projection,
    intermediate_loss,
    parse_layer_map,
    prediction_loss,
    uniform_layer_map,
)
from tinyfast.models import (
    build_student,
    check_heads,
    check_max_length,
    count_parameters,
    forward_internals,
    load_classifier,
    load_encoder,
    load_tokenizer,
    resolve_model_path,
    save_classifier,
    student_config,
)
from tinyfast.taskdata import Split, corpus_examples, encode_split, load_labeled, load_unlabeled


@dataclass
class IntermediateOptions:
    """How student layers learn from teacher layers (both stages share these)."""

    layer_map: str | None = None  # "3,6,9,12": teacher layer per student layer; None = uniform
    shared_projection: bool = True  # one width map for all layers (official code) or one per layer
    use_attention: bool = True
    weights: LossWeights = field(default_factory=LossWeights)


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
        inputs = _inputs(batch)
        attention = self.options.use_attention
        with torch.no_grad():
            t = forward_internals(self.teacher, inputs, want_attention=attention, want_logits=False)
        s = forward_internals(self.student, inputs, want_attention=attention, want_logits=False)
        return intermediate_loss(s, t, inputs["attention_mask"], self.layer_map, self.projection,
                                 self.options.weights, use_attention=attention)


class PredictionStep(nn.Module):
    """Soft cross-entropy with temperature (MSE for regression) against the teacher's outputs."""

    def __init__(self, student: nn.Module, teacher: nn.Module, task: str,
                 temperature: float = 1.0, scale_by_t2: bool = False) -> None:
        super().__init__()
        self.student = student
        self.__dict__["teacher"] = teacher.eval().requires_grad_(False)
        self.task = task
        self.temperature = temperature
        self.scale_by_t2 = scale_by_t2

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        inputs = _inputs(batch)
        with torch.no_grad():
            teacher_logits = self.teacher(**inputs).logits
        student_logits = self.student(**inputs).logits
        loss = prediction_loss(student_logits, teacher_logits, self.task, self.temperature,
                               self.scale_by_t2)
        return loss, {}


def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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


def _heldout_split(lines: int, share: float, cap: int, seed: int) -> tuple[list[int], list[int]]:
    """Indices of training and held-out rows: a seeded random ``share`` (at most ``cap``)."""
    rng = random.Random(seed)
    order = list(range(lines))
    rng.shuffle(order)
    n_held = min(cap, max(1, int(lines * share))) if share > 0 and lines > 1 else 0
    return sorted(order[n_held:]), sorted(order[:n_held])


def _subset(split: Split, rows: list[int]) -> Split:
    return Split(_Rows(split.dataset, rows), [split.lengths[i] for i in rows], None)


class _Rows:
    """A view of some rows of a dataset (no copy)."""

    def __init__(self, dataset, rows: list[int]) -> None:
        self.dataset, self.rows = dataset, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.dataset[self.rows[i]]


def _heldout_loss(step: nn.Module, split: Split, device, pad_id: int, batch_size: int = 64):
    """Mean distillation loss over held-out rows: general distillation's progress measure."""

    def evaluate(module: nn.Module) -> dict[str, float]:
        order = np.argsort(np.asarray(split.lengths), kind="stable")
        total, rows = 0.0, 0
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = collate([split.dataset[int(i)] for i in idx], pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            loss, _ = step(batch)
            total += float(loss) * len(idx)
            rows += len(idx)
        return {"heldout_loss": total / max(rows, 1)}

    return evaluate


def distill_general(
    teacher: str,
    corpus: str | Path,
    out: str | Path,
    *,
    student: str = "tinybert4",
    init: str = "random",
    init_checkpoint: str | None = None,
    max_length: int = 128,
    options: IntermediateOptions | None = None,
    config: train.TrainConfig | None = None,
    heldout: float = 0.01,
    resume: bool = False,
) -> dict[str, Any]:
    """General distillation of a pretrained encoder into ``student`` on a plain-text corpus
    (one sentence or document a line). The student encoder goes to ``out/model``."""
    options = options or IntermediateOptions()
    config = config or train.TrainConfig(epochs=3, lr=5e-5, batch_size=256, warmup=0.0)
    out = Path(out)
    ctx = distributed.setup(config.device)
    tokenizer = load_tokenizer(teacher)
    teacher_model = load_encoder(teacher)
    check_max_length(max_length, teacher_model.config, "the teacher")
    if not 0 <= heldout < 1:
        raise ConfigError(f"heldout is a share of the corpus in [0, 1) (got {heldout})")
    meta = TaskMeta(task="classification", labels=[], columns=Columns(label=None),
                    max_length=max_length)
    corpus_split = encode_split(tokenizer, corpus_examples(corpus), meta, with_labels=False)
    train_rows, held_rows = _heldout_split(len(corpus_split), heldout, 1000, config.seed)
    train_split, held_split = _subset(corpus_split, train_rows), _subset(corpus_split, held_rows)

    s_cfg = student_config(student, teacher_model.config, None)
    torch.manual_seed(config.seed)  # the same seed gives the same student and projections
    student_model = build_student(s_cfg, init=init, teacher=teacher_model,
                                  checkpoint=init_checkpoint)
    step = make_intermediate_step(student_model, teacher_model, options)
    teacher_model.to(ctx.device)
    pad_id = tokenizer.pad_token_id or 0

    def save_encoder(metrics: dict[str, float]) -> None:
        _save_encoder(student_model, tokenizer, out / "model")

    result = train.run(
        step, train_split.dataset, train_split.lengths, config, out / "work",
        evaluate=_heldout_loss(step, held_split, ctx.device, pad_id) if len(held_split) else None,
        metric="heldout_loss", greater_is_better=False, on_best=save_encoder, resume=resume,
        pad_id=pad_id, desc="distill general", ctx=ctx,
    )
    if not len(held_split) and ctx.is_main:
        save_encoder({})
    summary = {
        "command": "distill general",
        "teacher": str(teacher),
        "corpus": str(corpus),
        "student": student,
        "student_parameters": count_parameters(student_model),
        "teacher_parameters": count_parameters(teacher_model),
        "layer_map": step.layer_map,
        "train_rows": len(train_split),
        "heldout_rows": len(held_split),
        "best": result.best,
        "history": result.history,
        "steps": result.steps,
        "seconds": result.seconds,
        "config": asdict(config),
        "options": _options_dict(options),
        "max_length": max_length,
    }
    write_summary(ctx, out, summary)
    return summary


def _save_encoder(student_model, tokenizer, path: Path) -> None:
    """Saves the student as a plain checkpoint; its classifier head is untrained, so the next step
    (task distillation with ``--student-init``) replaces it."""
    meta = TaskMeta(task="classification", labels=[str(i) for i in
                    range(student_model.config.num_labels)], columns=Columns(), max_length=512)
    save_classifier(student_model, tokenizer, meta, path)


@dataclass
class StageSettings:
    """Epochs and learning rate of one task-distillation step (TinyBERT's defaults below)."""

    epochs: float
    lr: float
    warmup: float


INTERMEDIATE_DEFAULTS = StageSettings(epochs=10, lr=5e-5, warmup=0.0)
PREDICTION_DEFAULTS = StageSettings(epochs=3, lr=3e-5, warmup=0.1)


def distill_task(
    teacher: str,
    train_path: str | Path,
    dev_path: str | Path,
    out: str | Path,
    *,
    student: str = "tinybert4",
    init: str = "random",
    init_checkpoint: str | None = None,
    teacher_layers: list[int] | None = None,
    augmented: str | Path | None = None,
    columns: Columns | None = None,
    max_length: int | None = None,
    options: IntermediateOptions | None = None,
    intermediate: StageSettings = INTERMEDIATE_DEFAULTS,
    prediction: StageSettings = PREDICTION_DEFAULTS,
    temperature: float = 1.0,
    scale_by_t2: bool = False,
    config: train.TrainConfig | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Task distillation from a fine-tuned ``teacher`` classifier. Step 1 trains the student's
    intermediate layers (skipped when ``intermediate.epochs`` is 0), step 2 its predictions; the
    best dev checkpoint of step 2 goes to ``out/model``. ``augmented`` (TSV/JSONL with the task's
    columns, or plain text) replaces the training text of both steps when given; labels are never
    needed for distillation."""
    options = options or IntermediateOptions()
    base = config or train.TrainConfig(batch_size=32)
    out = Path(out)
    ctx = distributed.setup(base.device)
    teacher_model = load_classifier(teacher)
    tokenizer = load_tokenizer(teacher)
    teacher_meta = TaskMeta.load(resolve_model_path(teacher))
    meta = TaskMeta(task=teacher_meta.task, labels=teacher_meta.labels,
                    columns=columns or teacher_meta.columns,
                    max_length=max_length or teacher_meta.max_length)
    meta, train_split, dev_split = load_labeled(
        tokenizer, train_path, dev_path, columns=meta.columns, task=meta.task,
        max_length=meta.max_length, meta=meta)
    if augmented is not None:
        train_split = load_unlabeled(tokenizer, augmented, meta)

    check_max_length(meta.max_length, teacher_model.config, "the teacher")
    s_cfg = student_config(student, teacher_model.config, meta)
    torch.manual_seed(base.seed)  # the same seed gives the same student and projections
    student_model = build_student(s_cfg, init=init, teacher=teacher_model,
                                  teacher_layers=teacher_layers, checkpoint=init_checkpoint,
                                  meta=meta)
    teacher_model.to(ctx.device)
    pad_id = tokenizer.pad_token_id or 0
    stages: dict[str, Any] = {}

    if intermediate.epochs > 0:
        step1 = make_intermediate_step(student_model, teacher_model, options)
        result1 = train.run(
            step1, train_split.dataset, train_split.lengths, _stage_config(base, intermediate),
            out / "work" / "intermediate", resume=resume, pad_id=pad_id,
            desc="distill task: intermediate", ctx=ctx,
        )
        stages["intermediate"] = {"steps": result1.steps, "seconds": result1.seconds,
                                  "layer_map": step1.layer_map, **asdict(intermediate)}

    def save_best(metrics: dict[str, float]) -> None:
        save_classifier(student_model, tokenizer, meta, out / "model")

    step2 = PredictionStep(student_model, teacher_model, meta.task, temperature, scale_by_t2)
    result2 = train.run(
        step2, train_split.dataset, train_split.lengths, _stage_config(base, prediction),
        out / "work" / "prediction",
        evaluate=dev_evaluator(meta.task, dev_split, ctx.device, pad_id, "student"),
        metric=main_metric(meta.task), on_best=save_best, resume=resume, pad_id=pad_id,
        desc="distill task: prediction", ctx=ctx,
    )
    stages["prediction"] = {"steps": result2.steps, "seconds": result2.seconds,
                            "temperature": temperature, **asdict(prediction)}
    summary = {
        "command": "distill task",
        "teacher": str(teacher),
        "student": student,
        "init": init,
        "init_checkpoint": init_checkpoint,
        "student_parameters": count_parameters(student_model),
        "teacher_parameters": count_parameters(teacher_model),
        "train": str(augmented or train_path),
        "train_rows": len(train_split),
        "dev_rows": len(dev_split),
        "best": result2.best,
        "history": result2.history,
        "stages": stages,
        "seconds": sum(s["seconds"] for s in stages.values()),
        "config": asdict(base),
        "options": _options_dict(options),
    }
    write_summary(ctx, out, summary)
    return summary


def _stage_config(base: train.TrainConfig, stage: StageSettings) -> train.TrainConfig:
    if stage.epochs <= 0 or stage.lr <= 0:
        raise ConfigError(f"a distillation step needs epochs > 0 and lr > 0 (got {stage})")
    fields = asdict(base)
    fields.update(epochs=stage.epochs, lr=stage.lr, warmup=stage.warmup)
    return train.TrainConfig(**fields)


def _options_dict(options: IntermediateOptions) -> dict[str, Any]:
    d = asdict(options)
    d["weights"] = asdict(options.weights)
    return d


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
