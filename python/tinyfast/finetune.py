"""``tinyfast finetune``: train a teacher classifier on a labeled task."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tinyfast import train
from tinyfast.data import Columns
from tinyfast.data.splits import load_labeled
from tinyfast.metrics import main_metric
from tinyfast.models import (
    build_student,
    check_max_length,
    count_parameters,
    load_classifier,
    load_encoder,
    load_tokenizer,
    save_classifier,
    student_config,
)
from tinyfast.train import distributed
from tinyfast.train.evaluation import dev_evaluator
from tinyfast.train.outputs import claim_out_dir, write_summary


class ClassifierStep(nn.Module):
    """Cross-entropy (or MSE for regression) against the gold labels; what finetune trains and
    the no-distillation baseline uses."""

    uses_every_parameter = True  # the whole classifier, head included

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        loss = self.model(**batch).loss
        return loss, {}


def finetune(
    teacher: str,
    train_path: str | Path,
    dev_path: str | Path,
    out: str | Path,
    *,
    columns: Columns = Columns(),
    task: str = "classification",
    max_length: int = 128,
    config: train.TrainConfig | None = None,
    student: str | None = None,
    init: str = "random",
    init_checkpoint: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fine-tunes ``teacher`` (a checkpoint directory or "minilm") and keeps the best dev
    checkpoint in ``out/model``. Returns the metrics also written to ``out/metrics.json``.

    With ``student`` (a preset or JSON config), a student of that shape is trained on the labels
    instead, sharing the teacher's tokenizer: the no-distillation baseline. ``init`` and
    ``init_checkpoint`` choose its start as in ``distill task``. ``out`` must be new, empty or an
    earlier finetune run (``overwrite`` lifts that)."""
    config = config or train.TrainConfig(epochs=3, lr=5e-5, batch_size=32)
    out = Path(out)
    ctx = distributed.setup(config.device)
    claim_out_dir(ctx, out, "finetune", overwrite)
    tokenizer = load_tokenizer(teacher)
    meta, train_split, dev_split = load_labeled(
        tokenizer, train_path, dev_path, columns=columns, task=task, max_length=max_length)
    torch.manual_seed(config.seed)  # new heads and students start the same for the same seed
    if student is None:
        model = load_classifier(teacher, meta)
    else:
        # The teacher only lends its shape, vocabulary and (for "teacher-layers") its weights.
        source = load_encoder(teacher)
        model = build_student(student_config(student, source.config, meta), init=init,
                              teacher=source, checkpoint=init_checkpoint, meta=meta)
    check_max_length(max_length, model.config)
    pad_id = tokenizer.pad_token_id or 0

    def save_best(metrics: dict[str, float]) -> None:
        save_classifier(model, tokenizer, meta, out / "model")

    result = train.run(
        ClassifierStep(model), train_split.dataset, train_split.lengths, config, out / "work",
        evaluate=dev_evaluator(task, dev_split, ctx.device, pad_id, "model"),
        metric=main_metric(task), on_best=save_best, resume=resume, pad_id=pad_id, desc="finetune",
        ctx=ctx,
    )
    summary = {
        "command": "finetune",
        "teacher": str(teacher),
        "student": student,
        "init": init if student else None,
        "parameters": count_parameters(model),
        "train": str(train_path),
        "dev": str(dev_path),
        "train_rows": len(train_split),
        "dev_rows": len(dev_split),
        "labels": meta.labels,
        "best": result.best,
        "history": result.history,
        "steps": result.steps,
        "seconds": result.seconds,
        "config": asdict(config),
        "max_length": max_length,
        "world_size": ctx.world_size,
    }
    write_summary(ctx, out, summary)
    return summary
