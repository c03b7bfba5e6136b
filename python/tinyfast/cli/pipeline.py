"""``tinyfast pipeline``: argument parsing only; the stages live in ``tinyfast.pipeline``,
imported when the command runs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from tinyfast.pipeline.recipe import STAGES


def add_command(sub: Any) -> None:
    p = sub.add_parser(
        "pipeline", help="teacher -> adaptive int8 student in one command, from a recipe",
        description="Runs the recipe's stages in order: finetune (when the teacher is not yet a "
                    "classifier) -> augment -> distill general (when a corpus is given) -> "
                    "distill task -> selfdistill -> export -> evaluate over speeds. Each stage "
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
    keys = ("stages", "results", "seconds")
    print(json.dumps({k: summary[k] for k in keys}, indent=1))
    return 0
