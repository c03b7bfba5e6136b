"""TinyBERT general distillation: a pretrained teacher teaches a student its embeddings, hidden
states and attention scores on unlabeled text; a held-out share of the corpus measures progress."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tinyfast import train
from tinyfast.data import Columns, TaskMeta
from tinyfast.data.batching import collate
from tinyfast.data.splits import Split, corpus_examples, encode_split, heldout_split
from tinyfast.distill.intermediate import (
    IntermediateOptions,
    load_projection,
    make_intermediate_step,
    options_dict,
    save_projection,
    uses_fused_kernels,
)
from tinyfast.errors import ConfigError
from tinyfast.models import (
    build_student,
    check_max_length,
    count_parameters,
    load_encoder,
    load_tokenizer,
    resolve_model_path,
    save_encoder,
    student_config,
)
from tinyfast.train import distributed
from tinyfast.train.outputs import claim_out_dir, write_summary

__all__ = ["distill_general"]


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
    overwrite: bool = False,
) -> dict[str, Any]:
    """General distillation of a pretrained encoder into ``student`` on a plain-text corpus
    (one sentence or document a line). The student encoder goes to ``out/model`` with the width
    projections it learned beside it (a later stage starting from it starts from them too)."""
    options = options or IntermediateOptions()
    config = config or train.TrainConfig(epochs=3, lr=5e-5, batch_size=256, warmup=0.0)
    out = Path(out)
    ctx = distributed.setup(config.device)
    claim_out_dir(ctx, out, "distill general", overwrite)
    tokenizer = load_tokenizer(teacher)
    teacher_model = load_encoder(teacher)
    check_max_length(max_length, teacher_model.config, "the teacher")
    if not 0 <= heldout < 1:
        raise ConfigError(f"heldout is a share of the corpus in [0, 1) (got {heldout})")
    meta = TaskMeta(task="classification", labels=[], columns=Columns(label=None),
                    max_length=max_length)
    corpus_split = encode_split(tokenizer, corpus_examples(corpus), meta, with_labels=False)
    train_split, held_split = heldout_split(corpus_split, heldout, 1000, config.seed)

    s_cfg = student_config(student, teacher_model.config, None)
    torch.manual_seed(config.seed)  # the same seed gives the same student and projections
    student_model = build_student(s_cfg, init=init, teacher=teacher_model,
                                  checkpoint=init_checkpoint)
    step = make_intermediate_step(student_model, teacher_model, options)
    if init == "checkpoint" and init_checkpoint is not None:
        load_projection(step.projection, resolve_model_path(init_checkpoint))
    teacher_model.to(ctx.device)
    pad_id = tokenizer.pad_token_id or 0

    def save_best(metrics: dict[str, float]) -> None:
        save_encoder(student_model, tokenizer, out / "model",
                     extra=lambda d: save_projection(step.projection, d))

    result = train.run(
        step, train_split.dataset, train_split.lengths, config, out / "work",
        evaluate=_heldout_loss(step, held_split, ctx.device, pad_id) if len(held_split) else None,
        metric="heldout_loss", greater_is_better=False, on_best=save_best, resume=resume,
        pad_id=pad_id, desc="distill general", ctx=ctx,
    )
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
        "options": options_dict(options),
        "world_size": ctx.world_size,
        # Whether the losses ran through the fused ops (the student is on the training device).
        "fused_kernels": uses_fused_kernels(options.fused_kernels, student_model),
        "max_length": max_length,
    }
    write_summary(ctx, out, summary)
    return summary
