"""``tinyfast pipeline`` and ``tinyfast demo``: argument parsing only; the stages live in
``tinyfast.pipeline``, imported when a command runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tinyfast.pipeline.recipe import STAGES


def add_commands(sub: Any) -> None:
    _add_pipeline(sub)
    _add_demo(sub)


def _add_pipeline(sub: Any) -> None:
    p = sub.add_parser(
        "pipeline", help="teacher -> adaptive int8 student in one command, from a recipe",
        description="Runs the recipe's stages in order: finetune (when the teacher is not yet a "
                    "classifier) -> augment -> distill general (when a corpus is given) -> "
                    "distill task -> selfdistill -> export -> evaluate over speeds -> bench -> "
                    "report. Each stage "
                    "writes into OUT/<stage> and records what it read in OUT/pipeline/; a rerun "
                    "skips the stages whose inputs and settings did not change and continues an "
                    "interrupted one from its last checkpoint.")
    p.add_argument("--teacher", default="minilm",
                   help="pretrained encoder or fine-tuned classifier checkpoint, or 'minilm' "
                        "(default: %(default)s)")
    p.add_argument("--train", required=True, help="labeled training file (TSV/JSONL)")
    p.add_argument("--dev", required=True, help="labeled dev file, same columns")
    p.add_argument("--corpus", default=None, help="plain text for general distillation")
    p.add_argument("--unlabeled", default=None,
                   help="text for self-distillation (default: the training file, labels "
                        "ignored)")
    p.add_argument("--out", required=True, help="output directory (reruns reuse it)")
    p.add_argument("--recipe", default=None,
                   help="TOML or JSON file with every stage's settings (default: the built-in "
                        "recipe; see docs/pipeline.md)")
    p.add_argument("--from", dest="from_stage", choices=STAGES, default=None,
                   help="rerun this stage and every later one even if unchanged")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=_pipeline)


def _pipeline(args: argparse.Namespace) -> int:
    from tinyfast.pipeline.runner import run_pipeline

    summary = run_pipeline(args.teacher, args.train, args.dev, args.out, corpus=args.corpus,
                           unlabeled=args.unlabeled, recipe=args.recipe,
                           from_stage=args.from_stage, progress=not args.no_progress)
    _print_summary(summary, args.out)
    return 0


def _add_demo(sub: Any) -> None:
    p = sub.add_parser(
        "demo", help="generate a small task and run the whole pipeline on it, to a report",
        description="Generates a small sentiment task (with negations) and runs `tinyfast "
                    "pipeline` on it with the demo's recipe: the packaged MiniLM teacher "
                    "fine-tuned, augmentation, a TinyBERT-4 student distilled (general, then "
                    "task), early exits trained, int8 export, evaluation over speeds, the peer "
                    "benchmark and OUT/report/report.md.")
    p.add_argument("--out", default="tinyfast-demo", help="output directory (reruns reuse it; "
                   "default: %(default)s)")
    p.add_argument("--recipe", default=None,
                   help="TOML or JSON file whose settings replace the demo recipe's")
    p.add_argument("--from", dest="from_stage", choices=STAGES, default=None,
                   help="rerun this stage and every later one even if unchanged")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke check")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=_demo)


def _demo(args: argparse.Namespace) -> int:
    from tinyfast.pipeline.demo import run_demo

    summary = run_demo(args.out, quick=args.quick, recipe=args.recipe,
                       from_stage=args.from_stage, progress=not args.no_progress)
    _print_summary(summary, args.out)
    return 0


def _print_summary(summary: dict[str, Any], out: str) -> None:
    """The stages and results as JSON on stdout; the report's path last on the terminal."""
    report = summary["artifacts"].get("report")
    shown = {k: summary[k] for k in ("stages", "results", "seconds")}
    shown["report"] = str(Path(out) / report) if report is not None else None
    print(json.dumps(shown, indent=1), flush=True)
    if report is not None:
        print(f"report: {shown['report']}", file=sys.stderr)
