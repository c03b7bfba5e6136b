"""TinyBERT task distillation: step 1 repeats the intermediate losses on task data, step 2 trains
the student's predictions on the teacher's soft labels, keeping the best dev checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tinyfast import train
from tinyfast.data import Columns, TaskMeta
from tinyfast.data.splits import load_labeled, load_unlabeled
from tinyfast.distill.intermediate import (
    IntermediateOptions,
    load_projection,
    make_intermediate_step,
    model_inputs,
    options_dict,
    save_projection,
    uses_fused_kernels,
)
from tinyfast.distill.losses import prediction_loss
from tinyfast.errors import ConfigError
from tinyfast.metrics import main_metric
from tinyfast.models import (
    build_student,
    check_max_length,
    count_parameters,
    load_classifier,
    load_tokenizer,
    resolve_model_path,
    save_classifier,
    student_config,
)
from tinyfast.train import distributed
from tinyfast.train.evaluation import dev_evaluator
from tinyfast.train.outputs import claim_out_dir, write_summary

__all__ = [
    "INTERMEDIATE_DEFAULTS",
    "PREDICTION_DEFAULTS",
    "PredictionStep",
    "StageSettings",
    "distill_task",
]


class PredictionStep(nn.Module):
    """Soft cross-entropy with temperature (MSE for regression) against the teacher's outputs."""

    uses_every_parameter = True  # the student's whole classifier, head included

    def __init__(self, student: nn.Module, teacher: nn.Module, task: str,
                 temperature: float = 1.0, scale_by_t2: bool = False,
                 fused_kernels: bool = True) -> None:
        super().__init__()
        self.student = student
        self.__dict__["teacher"] = teacher.eval().requires_grad_(False)
        self.task = task
        self.temperature = temperature
        self.scale_by_t2 = scale_by_t2
        self.fused_kernels = fused_kernels

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        inputs = model_inputs(batch)
        with torch.no_grad():
            teacher_logits = self.teacher(**inputs).logits
        student_logits = self.student(**inputs).logits
        fused = uses_fused_kernels(self.fused_kernels, self.student)
        loss = prediction_loss(student_logits, teacher_logits, self.task, self.temperature,
                               self.scale_by_t2, fused)
        return loss, {}


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
    overwrite: bool = False,
) -> dict[str, Any]:
    """Task distillation from a fine-tuned ``teacher`` classifier. Step 1 trains the student's
    intermediate layers (skipped when ``intermediate.epochs`` is 0), step 2 its predictions; the
    best dev checkpoint of step 2 goes to ``out/model``. ``augmented`` (TSV/JSONL with the task's
    columns, or plain text) replaces the training text of both steps when given; labels are never
    needed for distillation. Step 1's width projections start from those saved beside
    ``init_checkpoint`` (general distillation's output) and are saved beside ``out/model``."""
    options = options or IntermediateOptions()
    base = config or train.TrainConfig(batch_size=32)
    out = Path(out)
    ctx = distributed.setup(base.device)
    claim_out_dir(ctx, out, "distill task", overwrite)
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

    projection = None
    if intermediate.epochs > 0:
        step1 = make_intermediate_step(student_model, teacher_model, options)
        projection = step1.projection
        if init == "checkpoint" and init_checkpoint is not None:
            load_projection(projection, resolve_model_path(init_checkpoint))
        result1 = train.run(
            step1, train_split.dataset, train_split.lengths, _stage_config(base, intermediate),
            out / "work" / "intermediate", resume=resume, pad_id=pad_id,
            desc="distill task: intermediate", ctx=ctx,
        )
        stages["intermediate"] = {"steps": result1.steps, "seconds": result1.seconds,
                                  "layer_map": step1.layer_map, **asdict(intermediate)}

    def save_best(metrics: dict[str, float]) -> None:
        extra = None if projection is None else (lambda d: save_projection(projection, d))
        save_classifier(student_model, tokenizer, meta, out / "model", extra=extra)

    step2 = PredictionStep(student_model, teacher_model, meta.task, temperature, scale_by_t2,
                           options.fused_kernels)
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
        "options": options_dict(options),
        "world_size": ctx.world_size,
        # Whether the losses ran through the fused ops (the student is on the training device).
        "fused_kernels": uses_fused_kernels(options.fused_kernels, student_model),
    }
    write_summary(ctx, out, summary)
    return summary


def _stage_config(base: train.TrainConfig, stage: StageSettings) -> train.TrainConfig:
    if stage.epochs <= 0 or stage.lr <= 0:
        raise ConfigError(f"a distillation step needs epochs > 0 and lr > 0 (got {stage})")
    fields = asdict(base)
    fields.update(epochs=stage.epochs, lr=stage.lr, warmup=stage.warmup)
    return train.TrainConfig(**fields)


