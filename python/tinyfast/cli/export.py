"""``tinyfast export MODEL OUT``: argument parsing for the bundle writer (``tinyfast.export``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from tinyfast._io import read_json_object
from tinyfast.bundle import BUNDLE_CONFIG
from tinyfast.cli.args import nonnegative_int, positive_int
from tinyfast.export import DTYPES, export


def add_export_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``tinyfast export MODEL OUT`` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "export",
        help="write the int8 runtime bundle of a BERT classifier",
        description="Write the runtime bundle (tinyfast.json, model.safetensors, tokenizer.json) "
                    "of a BERT classifier checkpoint: a tinyfast finetune teacher, a TinyBERT "
                    "student or a Hugging Face BertForSequenceClassification. Early-exit "
                    "branches (branches.json + branches.safetensors) beside the checkpoint are "
                    "included. A checkpoint without tinyfast_task.json takes its labels from "
                    "config.json's id2label and max length 128.",
    )
    p.add_argument("model", metavar="MODEL", help="classifier checkpoint directory")
    p.add_argument("out", metavar="OUT", help="bundle directory to write (replaced if it holds a "
                   "bundle; any other non-empty directory is refused)")
    p.add_argument("--dtype", choices=DTYPES, default="int8",
                   help="int8 weights, or f32 for an unquantized bundle to compare against "
                        "(default: %(default)s)")
    p.add_argument("--branches", metavar="DIR", default=None,
                   help="directory with branches.json + branches.safetensors (default: MODEL "
                        "when it has them; none otherwise)")
    p.add_argument("--max-length", metavar="N", type=positive_int, default=None,
                   help="tokens per text or pair (default: the task's, from "
                        "tinyfast_task.json, else 128)")
    p.add_argument("--calibration", metavar="FILE", default=None,
                   help="unlabeled text (the task's TSV/JSONL, or plain text; a checkpoint without "
                        "tinyfast_task.json reads a 'sentence' column) to calibrate the "
                        "int8 linears on: smoothing factors for their inputs and GPTQ-rounded "
                        "weights, which keep int8 outputs and exit decisions closer to the float "
                        "model's (default: none, plain rounding)")
    p.add_argument("--calibration-rows", metavar="N", type=positive_int, default=None,
                   help="rows of the calibration file to use, spread over it (default: 1024)")
    p.add_argument("--residual-layers", metavar="N", type=nonnegative_int, default=0,
                   help="layers, from the first, whose int8 linears also correct the rounding of "
                        "their weights and inputs with two more int8 passes: about 16-bit "
                        "precision at three times those layers' matrix products (default: "
                        "%(default)s)")
    p.add_argument("--no-progress", action="store_true", help="do not print each stage")
    p.set_defaults(run=_run_export)
    return p


def _run_export(args: argparse.Namespace) -> int:
    out = export(args.model, args.out, dtype=args.dtype, branches_dir=args.branches,
                 max_length=args.max_length, progress=not args.no_progress,
                 calibration=args.calibration, calibration_rows=args.calibration_rows,
                 residual_layers=args.residual_layers)
    bundle = read_json_object(out / BUNDLE_CONFIG)
    summary = {
        "bundle": str(out),
        "quantization": bundle["quantization"],
        "smoothing": bundle.get("smoothing", False),
        "residual_layers": bundle.get("residual_layers", []),
        "task": bundle["task"],
        "labels": bundle["labels"],
        "max_length": bundle["max_length"],
        "exits": bundle["exits"],
        "bytes": sum(f.stat().st_size for f in out.iterdir()),
    }
    print(json.dumps(summary, indent=1))
    return 0
