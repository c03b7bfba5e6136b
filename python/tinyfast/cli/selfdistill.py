"""``tinyfast selfdistill``: argument parsing only; the work happens in ``tinyfast.selfdistill``,
imported when the command runs."""

from __future__ import annotations

import argparse
from typing import Any

from tinyfast.cli.args import nonnegative_float, positive_float, positive_int
from tinyfast.cli.train import OUT_HELP, add_training, print_summary, train_config
from tinyfast.errors import ConfigError


def add_command(sub: Any) -> None:
    sd = sub.add_parser(
        "selfdistill", help="train early-exit branches of a classifier (FastBERT)",
        description="FastBERT self-distillation: freeze a fine-tuned classifier (finetune's or "
                    "distill task's OUT/model) and train a branch classifier after its layers to "
                    "match its final classifier (sum of KL divergences) on unlabeled text. "
                    "OUT/model is the unchanged model plus branches.json and "
                    "branches.safetensors; 'tinyfast export OUT/model' makes an early-exit "
                    "bundle.")
    sd.add_argument("model", help="fine-tuned classifier checkpoint directory")
    sd.add_argument("--unlabeled", required=True,
                    help="text to distill on: a TSV/JSONL file with the model's text columns "
                         "(labels, if any, are ignored), e.g. the task's training file, or plain "
                         "text with one text a line")
    sd.add_argument("--out", required=True, help=OUT_HELP)
    sd.add_argument("--branch", choices=["fastbert", "linear"], default="fastbert",
                    help="FastBERT's branch (dense, 2-head self-attention, [CLS] classifier) or "
                         "one linear layer on [CLS] (default: %(default)s)")
    sd.add_argument("--layers", default=None, metavar="L1,L2,...",
                    help="1-based layers followed by a branch (default: every layer but the "
                         "last)")
    sd.add_argument("--temperature", type=positive_float, default=1.0,
                    help="softmax temperature of the KL (default: %(default)s)")
    sd.add_argument("--width", type=positive_int, default=128,
                    help="fastbert branch width (default: %(default)s)")
    sd.add_argument("--heads", type=positive_int, default=2,
                    help="fastbert branch attention heads (default: %(default)s)")
    sd.add_argument("--max-length", type=positive_int, default=None,
                    help="tokens (default: the model's)")
    sd.add_argument("--heldout", type=nonnegative_float, default=0.05,
                    help="share of the text held out to pick the best branches (at most 1000 "
                         "rows; default: %(default)s)")
    add_training(sd, epochs=10, lr=2e-4, batch_size=32, warmup=0.1)
    sd.set_defaults(run=_selfdistill)


def _layers(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"--layers: expected comma-separated integers, got '{text}'") from None


def _selfdistill(args: argparse.Namespace) -> int:
    from tinyfast.selfdistill import selfdistill

    summary = selfdistill(
        args.model, args.unlabeled, args.out, branch=args.branch, layers=_layers(args.layers),
        temperature=args.temperature, width=args.width, heads=args.heads,
        max_length=args.max_length, config=train_config(args), heldout=args.heldout,
        resume=args.resume, overwrite=args.overwrite)
    print_summary(summary)
    return 0
