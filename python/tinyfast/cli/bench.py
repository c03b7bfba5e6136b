"""``tinyfast bench MODEL_OR_BUNDLE --data F``: argument parsing for the peer comparison
(``tinyfast.bench.command``), which is imported only when the command runs."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from tinyfast.cli.args import nonnegative_int, positive_int, seed
from tinyfast.cli.evaluate import speed_list
from tinyfast.errors import ConfigError

__all__ = ["add_command"]

DEFAULT_SPEEDS = "0,0.1,0.3"


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated contender names")
    return names


def add_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``tinyfast bench`` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "bench",
        help="accuracy, latency, throughput, size and memory against PyTorch, ONNX Runtime and "
             "OpenVINO",
        description="Every contender on the same labeled data in one run, each in a fresh "
                    "process, same threads, tokenization included: the teacher (--teacher) and "
                    "the model in PyTorch fp32, PyTorch dynamic int8, ONNX Runtime int8 (plain "
                    "and graph-fused), OpenVINO static int8 (NNCF; when installed) and the "
                    "tinyfast runtime at each --speeds. For each: accuracy and macro F1, "
                    "latency p50/p95 at batch 1, rows/s at --batch-size, size on disk and peak "
                    "resident memory. A contender that cannot run is listed with the reason.",
    )
    p.add_argument("model", metavar="MODEL_OR_BUNDLE",
                   help="classifier checkpoint (its int8 bundle is exported into the work "
                        "directory), or runtime bundle")
    p.add_argument("--data", required=True, metavar="FILE",
                   help="labeled TSV with header, or JSONL")
    p.add_argument("--teacher", metavar="DIR", default=None,
                   help="teacher checkpoint, run in PyTorch fp32 as one more contender")
    p.add_argument("--checkpoint", metavar="DIR", default=None,
                   help="with a bundle: the checkpoint it was exported from, for the PyTorch, "
                        "ONNX Runtime and OpenVINO contenders (skipped without it)")
    p.add_argument("--speeds", type=speed_list, default=speed_list(DEFAULT_SPEEDS),
                   metavar="S1,S2,...",
                   help=f"early-exit speeds of the tinyfast runtime (default: {DEFAULT_SPEEDS}; "
                        "above 0 only for a model with exit branches)")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="threads of every contender (default: %(default)s)")
    p.add_argument("--out", metavar="FILE", default=None, help="write the report as JSON")
    p.add_argument("--batch-size", type=positive_int, default=32,
                   help="rows per call of the throughput passes (default: %(default)s)")
    p.add_argument("--rounds", type=positive_int, default=3,
                   help="rounds of turns: throughput passes per contender (default: "
                        "%(default)s)")
    p.add_argument("--latency-rows", type=positive_int, default=None, metavar="N",
                   help="rows timed one by one for the batch-1 latency (default: all, at most "
                        "1000)")
    p.add_argument("--max-rows", type=positive_int, default=None, metavar="N",
                   help="use the first N rows of --data only")
    p.add_argument("--warmup", type=nonnegative_int, default=8, metavar="N",
                   help="untimed batch-1 calls per contender first (default: %(default)s)")
    p.add_argument("--calibration-rows", type=positive_int, default=300, metavar="N",
                   help="rows of --data that calibrate OpenVINO's static quantization "
                        "(default: %(default)s)")
    p.add_argument("--contenders", type=_names, default=None, metavar="A,B,...",
                   help="run only these (teacher_torch_fp32, torch_fp32, torch_int8_dynamic, "
                        "ort_int8, ort_int8_fused, openvino_int8, tinyfast_int8); the others "
                        "are listed as not selected")
    p.add_argument("--work-dir", metavar="DIR", default=None,
                   help="keep the bundle, ONNX and OpenVINO models and worker logs here "
                        "(default: a temporary directory)")
    p.add_argument("--text-a", default=None, metavar="COLUMN",
                   help="first text column (default: the checkpoint's, else 'sentence')")
    p.add_argument("--text-b", default=None, metavar="COLUMN",
                   help="second text column of sentence pairs (default: the checkpoint's)")
    p.add_argument("--label", default=None, metavar="COLUMN",
                   help="label column (default: the checkpoint's, else 'label')")
    p.add_argument("--seed", type=seed, default=0, help="seed of the calibration sample")
    p.add_argument("--no-progress", action="store_true", help="do not print each stage")
    p.set_defaults(run=_run)
    return p


def _command(args: argparse.Namespace) -> str:
    """The command line, as far as it differs from the defaults."""
    parts = ["tinyfast", "bench", args.model, "--data", args.data, "--threads", str(args.threads)]
    for flag in ("teacher", "checkpoint", "out", "batch_size", "rounds",
                 "latency_rows", "max_rows", "warmup", "calibration_rows", "work_dir", "text_a",
                 "text_b", "label", "seed"):
        value = getattr(args, flag)
        if value is not None and value != _DEFAULTS.get(flag):
            parts += [f"--{flag.replace('_', '-')}", str(value)]
    if args.speeds != speed_list(DEFAULT_SPEEDS):
        parts += ["--speeds", ",".join(f"{s:g}" for s in args.speeds)]
    if args.contenders:
        parts += ["--contenders", ",".join(args.contenders)]
    return shlex.join(parts)


_DEFAULTS = {"batch_size": 32, "rounds": 3, "warmup": 8, "calibration_rows": 300,
             "seed": 0}


def _run(args: argparse.Namespace) -> int:
    from tinyfast.bench.command import BenchOptions, failed, run_bench
    from tinyfast.bench.report import format_table

    options = BenchOptions(
        model=args.model, data=args.data, out=args.out, teacher=args.teacher,
        checkpoint=args.checkpoint, speeds=args.speeds, threads=args.threads,
        batch_size=args.batch_size, rounds=args.rounds, latency_rows=args.latency_rows,
        max_rows=args.max_rows, warmup=args.warmup, calibration_rows=args.calibration_rows,
        contenders=args.contenders, work_dir=args.work_dir, text_a=args.text_a,
        text_b=args.text_b, label=args.label, seed=args.seed, progress=not args.no_progress,
        command=_command(args))
    report = run_bench(options)
    if args.out is not None:
        try:
            Path(args.out).expanduser().write_text(json.dumps(report, indent=1) + "\n",
                                                   encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--out {args.out}: cannot write it: {exc.strerror}") from None
    print(format_table(report))
    bad = failed(report)
    if bad:
        print(f"tinyfast: bench: {len(bad)} contender(s) failed: {', '.join(bad)} (reasons in "
              "the table" + (f" and {args.out})" if args.out else ")"), file=sys.stderr)
        return 1
    return 0
