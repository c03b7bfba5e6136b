"""``tinyfast finetune`` and ``tinyfast distill general|task``: argument parsing only; the work
happens in ``tinyfast.finetune`` and ``tinyfast.distill``, imported when a command runs so that
``info`` needs no torch."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from tinyfast.cli.args import (
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    seed,
)
from tinyfast.errors import ConfigError


def add_commands(sub: Any) -> None:
    ft = sub.add_parser("finetune", help="train a teacher (or a baseline student) on labels",
                        description="Fine-tune a BERT-family checkpoint as a classifier; the best "
                                    "dev checkpoint goes to OUT/model, metrics to "
                                    "OUT/metrics.json.")
    ft.add_argument("--teacher", default="minilm",
                    help="checkpoint directory, or 'minilm' for the packaged MiniLM-L6 "
                         "(default: %(default)s)")
    ft.add_argument("--student", default=None,
                    help="train a student of this shape (preset 'tinybert4', 'tinybert6' or a "
                         "JSON config) on labels alone instead: the no-distillation baseline")
    _add_student_init(ft)
    _add_task_data(ft)
    add_training(ft, epochs=3, lr=5e-5, batch_size=32, warmup=0.1)
    ft.set_defaults(run=_finetune)

    distill = sub.add_parser("distill", help="TinyBERT distillation (general or task)")
    stages = distill.add_subparsers(dest="stage", metavar="STAGE", required=True)

    gen = stages.add_parser("general", help="pretrained teacher -> student on a plain-text corpus",
                            description="General distillation: embedding, hidden-state and "
                                        "attention losses on unlabeled text. The student "
                                        "encoder and its width projections go to OUT/model.")
    gen.add_argument("--teacher", default="minilm", help="pretrained encoder checkpoint or "
                     "'minilm' (default: %(default)s)")
    gen.add_argument("--corpus", required=True, help="plain text, one sentence a line")
    gen.add_argument("--out", required=True, help=OUT_HELP)
    gen.add_argument("--student", default="tinybert4",
                     help="preset (tinybert4, tinybert6) or JSON config (default: %(default)s)")
    _add_student_init(gen)
    gen.add_argument("--max-length", type=positive_int, default=128,
                     help="tokens (default: %(default)s)")
    gen.add_argument("--heldout", type=nonnegative_float, default=0.01,
                     help="share of corpus lines held out to measure the loss (at most 1000; "
                          "default: %(default)s)")
    _add_intermediate(gen)
    add_training(gen, epochs=3, lr=5e-5, batch_size=256, warmup=0.0)
    gen.set_defaults(run=_distill_general)

    task = stages.add_parser("task", help="fine-tuned teacher -> student on task data",
                             description="Task distillation: step 1 intermediate layers, step 2 "
                                         "predictions (soft labels); the best dev checkpoint "
                                         "goes to OUT/model. Each step has its own epochs and "
                                         "learning rate (--intermediate-*, --prediction-*).")
    task.add_argument("--teacher", required=True, help="fine-tuned classifier (finetune's "
                      "OUT/model)")
    task.add_argument("--student", default="tinybert4",
                      help="preset (tinybert4, tinybert6) or JSON config (default: %(default)s)")
    _add_student_init(task)
    task.add_argument("--train", required=True, help="training file (TSV with header or JSONL)")
    task.add_argument("--dev", required=True, help="dev file, same columns")
    task.add_argument("--augmented", default=None,
                      help="augmented training text (TSV/JSONL with the task's columns, or .txt); "
                           "replaces --train's text in both steps")
    task.add_argument("--out", required=True, help=OUT_HELP)
    task.add_argument("--max-length", type=positive_int, default=None,
                      help="tokens (default: the teacher's)")
    task.add_argument("--intermediate-epochs", type=nonnegative_float, default=10,
                      help="step 1 epochs; 0 skips step 1 (default: %(default)s)")
    task.add_argument("--intermediate-lr", type=positive_float, default=5e-5,
                      help="(default: %(default)s)")
    task.add_argument("--prediction-epochs", type=positive_float, default=3,
                      help="(default: %(default)s)")
    task.add_argument("--prediction-lr", type=positive_float, default=3e-5,
                      help="(default: %(default)s)")
    task.add_argument("--temperature", type=positive_float, default=1.0,
                      help="soft cross-entropy temperature (default: %(default)s)")
    task.add_argument("--scale-t2", action="store_true",
                      help="multiply the prediction loss by temperature^2")
    _add_intermediate(task)
    add_training(task, epochs=None, lr=None, batch_size=32, warmup=None)
    task.set_defaults(run=_distill_task)


OUT_HELP = ("output directory: new, empty, or an earlier run of this command (other contents "
             "are refused unless --overwrite)")


def _add_task_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--train", required=True, help="training file (TSV with header or JSONL)")
    p.add_argument("--dev", required=True, help="dev file, same columns")
    p.add_argument("--out", required=True, help=OUT_HELP)
    p.add_argument("--task", choices=["classification", "regression"], default="classification")
    p.add_argument("--text-a", default="sentence", help="first text column (default: "
                   "%(default)s)")
    p.add_argument("--text-b", default=None, help="second text column, for sentence pairs")
    p.add_argument("--label", default="label", help="label column (default: %(default)s)")
    p.add_argument("--max-length", type=positive_int, default=128,
                   help="tokens (default: %(default)s)")


def _add_student_init(p: argparse.ArgumentParser) -> None:
    p.add_argument("--init", choices=["random", "checkpoint", "teacher-layers"], default=None,
                   help="student start: random, a checkpoint (--student-init), or the teacher's "
                        "layers when widths match (default: checkpoint if --student-init is "
                        "given, else random)")
    p.add_argument("--student-init", default=None, metavar="DIR",
                   help="checkpoint to start the student from (e.g. distill general's OUT/model)")
    p.add_argument("--teacher-layers", default=None, metavar="L1,L2,...",
                   help="with --init teacher-layers: which teacher layers (1-based) to copy")


def _add_intermediate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layer-map", default=None, metavar="T1,T2,...",
                   help="teacher layer (1-based) per student layer (default: uniform)")
    p.add_argument("--per-layer-projection", action="store_true",
                   help="one width projection per layer (the paper) instead of one shared (the "
                        "official code)")
    p.add_argument("--no-attention-loss", action="store_true",
                   help="drop the attention loss (needed when head counts differ)")
    p.add_argument("--no-fused-kernels", action="store_true",
                   help="compute the losses with plain torch even where the fused Triton ops "
                        "would run (CUDA); the losses are the same")


def add_training(p: argparse.ArgumentParser, *, epochs, lr, batch_size, warmup) -> None:
    g = p.add_argument_group("training")
    if epochs is not None:
        g.add_argument("--epochs", type=positive_float, default=epochs,
                       help="(default: %(default)s)")
        g.add_argument("--lr", type=positive_float, default=lr, help="(default: %(default)s)")
        g.add_argument("--warmup", type=nonnegative_float, default=warmup,
                       help="share of steps warming up, in [0, 1) (default: %(default)s)")
    g.add_argument("--batch-size", type=positive_int, default=batch_size,
                   help="rows per optimizer step over all processes (default: %(default)s)")
    g.add_argument("--grad-accum", type=positive_int, default=1)
    g.add_argument("--weight-decay", type=nonnegative_float, default=0.01)
    g.add_argument("--max-grad-norm", type=nonnegative_float, default=1.0,
                   help="0 disables clipping")
    g.add_argument("--seed", type=seed, default=42)
    g.add_argument("--eval-every", type=nonnegative_int, default=0,
                   help="steps; 0 = every epoch")
    g.add_argument("--save-every", type=nonnegative_int, default=200,
                   help="checkpoint every N steps")
    g.add_argument("--max-steps", type=nonnegative_int, default=0,
                   help="stop after N optimizer steps")
    g.add_argument("--device", choices=["cpu", "cuda"], default=None)
    g.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    g.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in OUT/work")
    g.add_argument("--overwrite", action="store_true",
                   help="write into OUT even if it holds other files or another command's run "
                        "(only this run's model/, work/ and metrics.json are replaced)")


def train_config(args: argparse.Namespace, **override: Any):
    from tinyfast.train import TrainConfig

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    fields = dict(
        batch_size=args.batch_size, grad_accum=args.grad_accum, weight_decay=args.weight_decay,
        max_grad_norm=args.max_grad_norm, seed=args.seed, eval_every=args.eval_every,
        save_every=args.save_every, max_steps=args.max_steps, device=args.device,
        amp=not args.no_amp, progress=not args.no_progress,
    )
    if hasattr(args, "epochs"):
        fields.update(epochs=args.epochs, lr=args.lr, warmup=args.warmup)
    fields.update(override)
    return TrainConfig(**fields)


def _init_mode(args: argparse.Namespace) -> str:
    if args.init is not None:
        return args.init
    return "checkpoint" if args.student_init else "random"


def _teacher_layers(args: argparse.Namespace) -> list[int] | None:
    if not args.teacher_layers:
        return None
    try:
        return [int(x) for x in args.teacher_layers.split(",")]
    except ValueError:
        raise ConfigError(f"--teacher-layers: expected comma-separated integers, got "
                          f"'{args.teacher_layers}'") from None


def _intermediate_options(args: argparse.Namespace):
    from tinyfast.distill import IntermediateOptions

    return IntermediateOptions(layer_map=args.layer_map,
                               shared_projection=not args.per_layer_projection,
                               use_attention=not args.no_attention_loss,
                               fused_kernels=not args.no_fused_kernels)


def print_summary(summary: dict[str, Any]) -> None:
    """Under torchrun every rank returns the summary; rank 0 alone prints it."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    keys = ("best", "steps", "seconds", "stages", "student_parameters", "teacher_parameters")
    print(json.dumps({k: summary[k] for k in keys if k in summary}, indent=1))


def _finetune(args: argparse.Namespace) -> int:
    from tinyfast.data import Columns
    from tinyfast.finetune import finetune

    summary = finetune(
        args.teacher, args.train, args.dev, args.out,
        columns=Columns(text_a=args.text_a, text_b=args.text_b, label=args.label),
        task=args.task, max_length=args.max_length, config=train_config(args),
        student=args.student, init=_init_mode(args), init_checkpoint=args.student_init,
        resume=args.resume, overwrite=args.overwrite)
    print_summary(summary)
    return 0


def _distill_general(args: argparse.Namespace) -> int:
    from tinyfast.distill import distill_general

    summary = distill_general(
        args.teacher, args.corpus, args.out, student=args.student, init=_init_mode(args),
        init_checkpoint=args.student_init, max_length=args.max_length,
        options=_intermediate_options(args), config=train_config(args), heldout=args.heldout,
        resume=args.resume, overwrite=args.overwrite)
    print_summary(summary)
    return 0


def _distill_task(args: argparse.Namespace) -> int:
    from tinyfast.distill import StageSettings, distill_task

    summary = distill_task(
        args.teacher, args.train, args.dev, args.out, student=args.student,
        init=_init_mode(args), init_checkpoint=args.student_init,
        teacher_layers=_teacher_layers(args), augmented=args.augmented,
        max_length=args.max_length, options=_intermediate_options(args),
        intermediate=StageSettings(args.intermediate_epochs, args.intermediate_lr, 0.0),
        prediction=StageSettings(args.prediction_epochs, args.prediction_lr, 0.1),
        temperature=args.temperature, scale_by_t2=args.scale_t2, config=train_config(args),
        resume=args.resume, overwrite=args.overwrite)
    print_summary(summary)
    return 0
