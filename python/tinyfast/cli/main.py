"""The ``tinyfast`` command line. Training commands import torch only when they run, so ``info``
works on a runtime-only install."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tinyfast.cli import augment as augment_cli
from tinyfast.cli import bench as bench_cli
from tinyfast.cli import evaluate as evaluate_cli
from tinyfast.cli import export as export_cli
from tinyfast.cli import pipeline as pipeline_cli
from tinyfast.cli import report as report_cli
from tinyfast.cli import selfdistill as selfdistill_cli
from tinyfast.cli import train as train_cli
from tinyfast.cli.args import EXIT_USAGE, Parser
from tinyfast.errors import TinyfastError


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.command != "info":
        _quiet_transformers()
    try:
        return args.run(args) or 0
    except TinyfastError as exc:
        print(f"tinyfast: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in {"torch", "transformers", "tokenizers",
                                                    "safetensors", "tqdm"}:
            print(f"tinyfast: error: '{args.command}' needs the training extras ({exc.name} is "
                  "missing): pip install 'tinyfast[train]'", file=sys.stderr)
            return EXIT_USAGE
        raise
    except KeyboardInterrupt:
        print("tinyfast: interrupted (rerun with --resume to continue from the last checkpoint)",
              file=sys.stderr)
        return 130
    finally:
        _leave_process_group()


def _leave_process_group() -> None:
    """Under torchrun a trainer joined a process group; leave it before the process exits."""
    distributed = sys.modules.get("tinyfast.train.distributed")
    if distributed is not None:
        distributed.teardown()


def _quiet_transformers() -> None:
    """Our own progress bar and summaries say what happens; transformers' per-load bars only add
    noise to logs."""
    try:
        from transformers.utils import logging as hf_logging
    except ModuleNotFoundError:
        return
    hf_logging.disable_progress_bar()


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="tinyfast",
        description="Distil BERT-family classifiers (TinyBERT) and run them fast on CPUs.")
    parser.add_argument("--version", action="version", version=f"tinyfast {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = sub.add_parser("info", help="print the version and the int8 kernels this CPU runs")
    info.set_defaults(run=_info)
    train_cli.add_commands(sub)
    selfdistill_cli.add_command(sub)
    augment_cli.add_commands(sub)

    evaluate_cli.add_command(sub)
    pipeline_cli.add_commands(sub)
    export_cli.add_export_command(sub)
    bench_cli.add_command(sub)
    report_cli.add_command(sub)
    return parser


def _version() -> str:
    from tinyfast import __version__

    return __version__


def _info(args: argparse.Namespace) -> int:
    import tinyfast

    caps = tinyfast.cpu_capabilities()
    print(f"tinyfast {tinyfast.__version__}")
    print(f"arch: {caps['arch']}")
    for name, on in caps["features"].items():
        print(f"  {name}: {'yes' if on else 'no'}")
    print(f"int8 kernels: {', '.join(caps['kernels'])}")
    print(f"default kernel: {caps['best_kernel']}")
    try:
        import torch

        print(f"torch: {torch.__version__} (training available)")
    except ModuleNotFoundError:
        print("torch: not installed (runtime only; pip install 'tinyfast[train]' to train)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
