"""TinyBERT on SST-2 with the MiniLM teacher: does distillation pay on 2 CPU cores?

Runs, in one process and in order:
  1. teacher:   fine-tune MiniLM-L6 on SST-2 train (3 epochs, lr 5e-5, batch 32, max length 64);
  2. general:   general distillation of tinybert4 on the movie-review corpus;
  3. distilled: task distillation (intermediate, then prediction) from the teacher, starting from 2;
  4. baseline:  the same tinybert4, random init, trained on the labels alone (no distillation);
  5. general+labels: tinybert4 from 2 trained on the labels alone (no task distillation).
Every dev accuracy (per epoch, so accuracy against budget can be read off) and wall time goes to
``--out/results.json``. A stage whose ``metrics.json`` exists is reused, so a rerun continues.

    python benches/distill_sst2.py --data ../shared/data --out bench-results/distill_sst2

The defaults are sized for a 2-core CPU (roughly 40 minutes on an idle machine); the
``--*-epochs`` flags change the budget. ``distill_budget.py`` continues from this script's output
with the budget that meets the 97%-of-teacher goal (benches/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from tinyfast import train
from tinyfast.distill import IntermediateOptions, StageSettings, distill_general, distill_task
from tinyfast.finetune import finetune

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benches/_paths.py when loaded by path
from _paths import recorded_path  # noqa: E402


def _stage(out: Path, name: str, run) -> dict[str, Any]:
    """Runs one stage unless its metrics exist already; returns its summary."""
    metrics = out / name / "metrics.json"
    if metrics.exists():
        print(f"== {name}: reusing {metrics}", flush=True)
        return json.loads(metrics.read_text())
    print(f"== {name}", flush=True)
    started = time.perf_counter()
    summary = run(out / name)
    summary["wall_seconds"] = time.perf_counter() - started
    metrics.write_text(json.dumps(summary, indent=1))
    return summary


def _curve(summary: dict[str, Any]) -> list[dict[str, float]]:
    return [
        {"step": h["step"], "accuracy": h["accuracy"]}
        for h in summary.get("history", [])
        if "accuracy" in h
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/data", help="folder with sst2/ and corpus/")
    p.add_argument("--out", default="bench-results/distill_sst2")
    p.add_argument("--teacher", default="minilm")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--teacher-epochs", type=float, default=3)
    p.add_argument("--general-epochs", type=float, default=0.3)
    p.add_argument("--general-lr", type=float, default=3e-4)
    p.add_argument("--general-batch", type=int, default=64)
    p.add_argument("--intermediate-epochs", type=float, default=2)
    p.add_argument("--intermediate-lr", type=float, default=1e-4)
    p.add_argument("--prediction-epochs", type=float, default=2)
    p.add_argument("--prediction-lr", type=float, default=5e-5)
    p.add_argument("--baseline-epochs", type=float, default=3)
    p.add_argument("--baseline-lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    # The per-load bars of transformers would drown the stage headers in the log.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if args.threads:
        torch.set_num_threads(args.threads)

    data, out = Path(args.data), Path(args.out)
    train_tsv, dev_tsv = data / "sst2" / "train.tsv", data / "sst2" / "dev.tsv"
    corpus = data / "corpus" / "movie_reviews.txt"
    for path in (train_tsv, dev_tsv, corpus):
        if not path.exists():
            print(
                f"distill_sst2: missing {path} (point --data at the shared data folder)",
                file=sys.stderr,
            )
            return 2
    out.mkdir(parents=True, exist_ok=True)
    common = dict(progress=False, save_every=500, log_every=50)
    ml = args.max_length

    teacher = _stage(
        out,
        "teacher",
        lambda d: finetune(
            args.teacher,
            train_tsv,
            dev_tsv,
            d,
            max_length=ml,
            config=train.TrainConfig(epochs=args.teacher_epochs, lr=5e-5, batch_size=32, **common),
        ),
    )
    teacher_model = str(out / "teacher" / "model")

    general = _stage(
        out,
        "general",
        lambda d: distill_general(
            args.teacher,
            corpus,
            d,
            student="tinybert4",
            max_length=ml,
            config=train.TrainConfig(
                epochs=args.general_epochs,
                lr=args.general_lr,
                batch_size=args.general_batch,
                warmup=0.05,
                eval_every=250,
                **common,
            ),
        ),
    )
    general_model = str(out / "general" / "model")

    distilled = _stage(
        out,
        "distilled",
        lambda d: distill_task(
            teacher_model,
            train_tsv,
            dev_tsv,
            d,
            student="tinybert4",
            init="checkpoint",
            init_checkpoint=general_model,
            options=IntermediateOptions(),
            intermediate=StageSettings(args.intermediate_epochs, args.intermediate_lr, 0.0),
            prediction=StageSettings(args.prediction_epochs, args.prediction_lr, 0.1),
            config=train.TrainConfig(batch_size=32, eval_every=108, **common),
        ),
    )

    baseline = _stage(
        out,
        "baseline",
        lambda d: finetune(
            args.teacher,
            train_tsv,
            dev_tsv,
            d,
            max_length=ml,
            student="tinybert4",
            init="random",
            config=train.TrainConfig(
                epochs=args.baseline_epochs,
                lr=args.baseline_lr,
                batch_size=32,
                eval_every=108,
                **common,
            ),
        ),
    )

    general_labels = _stage(
        out,
        "general_labels",
        lambda d: finetune(
            args.teacher,
            train_tsv,
            dev_tsv,
            d,
            max_length=ml,
            student="tinybert4",
            init="checkpoint",
            init_checkpoint=general_model,
            config=train.TrainConfig(
                epochs=args.prediction_epochs,
                lr=args.baseline_lr,
                batch_size=32,
                eval_every=108,
                **common,
            ),
        ),
    )

    t_acc = teacher["best"]["accuracy"]
    results = {
        "benchmark": "distill_sst2",
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "platform": platform.platform(),
        },
        "settings": vars(args) | {"data": recorded_path(data), "out": recorded_path(out)},
        "teacher": {
            "dev_accuracy": t_acc,
            "seconds": teacher["seconds"],
            "parameters": teacher["parameters"],
            "curve": _curve(teacher),
        },
        "general_distillation": {
            "seconds": general["seconds"],
            "steps": general["steps"],
            "train_rows": general["train_rows"],
            "heldout_loss": [h["heldout_loss"] for h in general["history"]],
        },
        "distilled_student": {
            "dev_accuracy": distilled["best"]["accuracy"],
            "share_of_teacher": distilled["best"]["accuracy"] / t_acc,
            "seconds": distilled["seconds"],
            "parameters": distilled["student_parameters"],
            "stages": distilled["stages"],
            "curve": _curve(distilled),
        },
        "baseline_no_distillation": {
            "dev_accuracy": baseline["best"]["accuracy"],
            "seconds": baseline["seconds"],
            "curve": _curve(baseline),
        },
        "general_then_labels": {
            "dev_accuracy": general_labels["best"]["accuracy"],
            "seconds": general_labels["seconds"],
            "curve": _curve(general_labels),
        },
        "goal": {
            "student_share_of_teacher_at_least": 0.97,
            "met": distilled["best"]["accuracy"] >= 0.97 * t_acc,
            "beats_baseline_by": distilled["best"]["accuracy"] - baseline["best"]["accuracy"],
        },
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print(
        json.dumps({k: v for k, v in results.items() if k not in ("settings", "machine")}, indent=1)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
