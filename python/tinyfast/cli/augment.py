"""``tinyfast augment`` and ``tinyfast fit-mlm-head``: argument parsing only; the work happens in
``tinyfast.augment``, imported when a command runs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from tinyfast.cli.args import nonnegative_int, positive_float, positive_int, seed
from tinyfast.cli.train import OUT_HELP, add_training, train_config
from tinyfast.errors import ConfigError


def _probability(text: str) -> float:
    from tinyfast.cli.args import finite_float

    value = finite_float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1] (got {text})")
    return value


def add_commands(sub: Any) -> None:
    aug = sub.add_parser(
        "augment", help="TinyBERT data augmentation of a task file",
        description="Writes N variants of every row of a TSV/JSONL task file (plus the row "
                    "itself): each replaceable word (alphabetic, not a stop word) is replaced "
                    "with probability P by one of its K candidates, from the masked LM when the "
                    "word is one word piece, else from its nearest words by word vectors. Rows "
                    "keep their other fields and gain 'source_line', the input line they came "
                    "from; for pairs, each side varies alone.")
    aug.add_argument("--input", required=True, help="TSV (header first) or JSONL task file")
    aug.add_argument("--out", required=True, help="output file, same format as the input")
    aug.add_argument("--n", type=nonnegative_int, default=20,
                     help="variants per sentence (default: %(default)s)")
    aug.add_argument("--p", type=_probability, default=0.4,
                     help="probability of replacing a word (default: %(default)s)")
    aug.add_argument("--k", type=positive_int, default=15,
                     help="candidates per word (default: %(default)s)")
    aug.add_argument("--seed", type=seed, default=42)
    aug.add_argument("--mlm", default=None, metavar="DIR",
                     help="masked-LM checkpoint (e.g. fit-mlm-head's OUT/model); without it every "
                          "word takes word-vector candidates")
    aug.add_argument("--vectors", default=None, metavar="FILE",
                     help="GloVe / word2vec text file or a saved index (default: vectors of "
                          "whole words from the word-piece embeddings of --mlm, else --teacher)")
    aug.add_argument("--index", default=None, metavar="FILE",
                     help="where the parsed --vectors index is saved and reused (default: "
                          "FILE.tfindex beside it)")
    aug.add_argument("--teacher", default="minilm",
                     help="checkpoint whose word pieces give the vectors when neither --vectors "
                          "nor --mlm is given (default: %(default)s)")
    aug.add_argument("--text-a", default="sentence", help="(default: %(default)s)")
    aug.add_argument("--text-b", default=None, help="second text column, for sentence pairs")
    aug.add_argument("--label", default="label",
                     help="label column, kept as is ('' for unlabeled data; default: "
                          "%(default)s)")
    m = aug.add_argument_group("masked LM")
    m.add_argument("--mask-mode", choices=["multi", "word"], default="multi",
                   help="multi: several far-apart words masked in one input; word: one word per "
                        "input, as TinyBERT (default: %(default)s)")
    m.add_argument("--context", choices=["pair", "masked"], default="pair",
                   help="pair: '[CLS] masked [SEP] sentence [SEP]' as TinyBERT; masked: the "
                        "masked sentence alone (default: %(default)s)")
    m.add_argument("--min-gap", type=positive_int, default=3,
                   help="tokens between two words masked together (default: %(default)s)")
    m.add_argument("--batch-tokens", type=positive_int, default=8192,
                   help="torch backend: padded tokens per forward (default: %(default)s)")
    m.add_argument("--mlm-backend", choices=["auto", "int8", "torch"], default="auto",
                   help="int8: tinyfast's int8 CPU runtime (BERT masked LMs); torch: the "
                        "checkpoint in torch; auto: int8 on the CPU for BERT, else torch")
    m.add_argument("--device", choices=["cpu", "cuda"], default=None)
    m.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                   default="auto", help="torch backend: auto is bfloat16/float16 on CUDA, float32 "
                                        "on the CPU")
    r = aug.add_argument_group("run")
    r.add_argument("--threads", type=nonnegative_int, default=0,
                   help="Rust worker threads, 0 = one per core (torch: --torch-threads)")
    r.add_argument("--torch-threads", type=positive_int, default=None)
    r.add_argument("--chunk-rows", type=positive_int, default=1024,
                   help="rows read, augmented and written together (default: %(default)s)")
    r.add_argument("--resume", action="store_true",
                   help="continue an interrupted run (OUT.partial) instead of starting again")
    r.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    aug.set_defaults(run=_augment)

    head = sub.add_parser(
        "fit-mlm-head", help="fit a masked-LM head on a frozen encoder (for augment --mlm)",
        description="Fits BERT's masked-LM head (dense, GELU, LayerNorm, decoder tied to the "
                    "word embeddings) on the frozen encoder over a plain-text corpus; the masked "
                    "LM goes to OUT/model, the held-out top-1/top-15 accuracy to "
                    "OUT/metrics.json.")
    head.add_argument("--teacher", default="minilm",
                      help="encoder checkpoint or 'minilm' (default: %(default)s)")
    head.add_argument("--corpus", required=True, help="plain text, one sentence a line")
    head.add_argument("--out", required=True, help=OUT_HELP)
    head.add_argument("--max-length", type=positive_int, default=64,
                      help="tokens (default: %(default)s)")
    head.add_argument("--mask-prob", type=positive_float, default=0.15,
                      help="share of tokens masked (default: %(default)s)")
    head.add_argument("--heldout", type=_probability, default=0.02,
                      help="share of lines held out (at most 2000; default: %(default)s)")
    add_training(head, epochs=1, lr=1e-3, batch_size=64, warmup=0.05)
    head.set_defaults(run=_fit_head)


def _augment(args: argparse.Namespace) -> int:
    from tinyfast.augment import AugmentOptions, MaskedLMOptions, augment
    from tinyfast.data import Columns

    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    if args.label == "":
        args.label = None
    summary = augment(
        args.input, args.out,
        columns=Columns(text_a=args.text_a, text_b=args.text_b, label=args.label),
        options=AugmentOptions(n=args.n, p=args.p, k=args.k, seed=args.seed,
                               chunk_rows=args.chunk_rows, threads=args.threads),
        mlm=args.mlm,
        mlm_options=MaskedLMOptions(mode=args.mask_mode, context=args.context,
                                    min_gap=args.min_gap, batch_tokens=args.batch_tokens,
                                    device=args.device, dtype=args.dtype,
                                    backend=args.mlm_backend, threads=args.threads),
        vectors=args.vectors, index=args.index, teacher=args.teacher, resume=args.resume,
        overwrite=args.overwrite, progress=not args.no_progress)
    keys = ("rows", "rows_out", "masked_lm_words", "vector_words", "seconds", "out")
    print(json.dumps({k: summary[k] for k in keys}, indent=1))
    return 0


def _fit_head(args: argparse.Namespace) -> int:
    from tinyfast.augment import fit_mlm_head

    if args.mask_prob >= 1:
        raise ConfigError(f"--mask-prob must be below 1 (got {args.mask_prob})")
    summary = fit_mlm_head(args.teacher, args.corpus, args.out, max_length=args.max_length,
                           mask_prob=args.mask_prob, heldout=args.heldout,
                           config=train_config(args), resume=args.resume,
                           overwrite=args.overwrite)
    print(json.dumps({k: summary[k] for k in ("best", "steps", "seconds")}, indent=1))
    return 0
