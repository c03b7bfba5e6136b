"""``tinyfast evaluate MODEL_OR_BUNDLE DATA [--speed 0,0.1,...]``: argument parsing and the glue
between the data readers, the two engines and ``tinyfast.exits``.

A directory holding ``tinyfast.json`` is a runtime bundle and runs through ``tinyfast.Runtime``
without torch; anything else is a classifier checkpoint and runs through PyTorch (with its
branches, ``tinyfast.models.early_exit``, when a speed above 0 asks for early exit).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from tinyfast.bundle import BUNDLE_CONFIG
from tinyfast.cli.args import positive_int
from tinyfast.data import Columns, Example, read_examples
from tinyfast.errors import ConfigError, DataError
from tinyfast.exits import ModelShape, format_table, parse_speeds, runtime_predictor, speed_curve
from tinyfast.metrics import task_metrics

__all__ = ["add_command"]

MINILM = "minilm"  # the packaged teacher's name (tinyfast.models.MINILM, without torch)


def speed_list(text: str) -> list[float]:
    """argparse type of ``--speed``: the one-line message of ``parse_speeds``."""
    try:
        return parse_speeds(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_command(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``tinyfast evaluate`` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "evaluate",
        help="metrics of a checkpoint or runtime bundle on a labeled file; --speed for early exit",
        description="Accuracy and macro F1 (Pearson, Spearman, MSE for regression) of a "
                    "classifier checkpoint or a runtime bundle (a directory with tinyfast.json) "
                    "on a labeled TSV/JSONL file, printed as JSON. With --speed, one row of a "
                    "table per speed: the metrics, mean exit layer, share of rows answered after "
                    "each layer, FLOPs relative to the full model, and rows per second.",
    )
    p.add_argument("model", metavar="MODEL_OR_BUNDLE",
                   help="classifier checkpoint directory, or runtime bundle directory")
    p.add_argument("data", metavar="DATA", help="labeled TSV with header, or JSONL")
    p.add_argument("--speed", type=speed_list, default=None, metavar="S1,S2,...",
                   help="early-exit speeds in [0, 1], comma-separated: a row leaves after the "
                        "first branch whose normalized entropy is below the speed (0 never "
                        "exits); prints a table of one row per speed")
    p.add_argument("--json", metavar="FILE", default=None,
                   help="also write the table as JSON to FILE (at speed 0 when --speed is not "
                        "given)")
    p.add_argument("--batch-size", type=positive_int, default=64,
                   help="rows per batch (default: %(default)s)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads: torch's for a checkpoint, the runtime's pool for a bundle "
                        "(default: one per core)")
    p.add_argument("--text-a", default=None, metavar="COLUMN",
                   help="first text column (default: the checkpoint's; 'sentence' for a bundle, "
                        "which does not record its columns)")
    p.add_argument("--text-b", default=None, metavar="COLUMN",
                   help="second text column of sentence pairs (default: the checkpoint's; none "
                        "for a bundle)")
    p.add_argument("--label", default=None, metavar="COLUMN",
                   help="label column (default: the checkpoint's; 'label' for a bundle)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=_run)
    return p


def is_bundle(path: str | os.PathLike[str]) -> bool:
    """A runtime bundle is a directory holding ``tinyfast.json``."""
    return (Path(path) / BUNDLE_CONFIG).is_file()


def _columns(args: argparse.Namespace, default: Columns) -> Columns:
    return Columns(text_a=args.text_a or default.text_a,
                   text_b=args.text_b if args.text_b is not None else default.text_b,
                   label=args.label or default.label or "label")


def _run(args: argparse.Namespace) -> int:
    speeds: list[float] | None = args.speed
    curve = speeds is not None or args.json is not None
    if speeds is None:
        speeds = [0.0]
    if args.json is not None:
        parent = Path(args.json).expanduser().absolute().parent
        if not parent.is_dir():
            raise ConfigError(f"--json {args.json}: no such directory {parent}")
    if str(args.model) != MINILM and not Path(args.model).expanduser().exists():
        raise ConfigError(f"{args.model}: no such checkpoint or bundle directory")
    if is_bundle(args.model):
        run = _bundle_run(args, speeds, curve)
    else:
        run = _checkpoint_run(args, speeds, curve)
    if run is None:
        return 0
    kind, task, shape, predict, labels, lengths = run
    points = speed_curve(predict, labels, lengths, speeds, shape, task=task)
    print(format_table(points, shape.num_layers))
    if args.json is not None:
        document = {
            "model": str(args.model),
            "data": str(args.data),
            "kind": kind,
            "task": task,
            "rows": len(lengths),
            "num_layers": shape.num_layers,
            "exits": [{"layer": layer, "kind": k} for layer, k in sorted(shape.exits.items())],
            "batch_size": args.batch_size,
            "threads": args.threads,
            "points": points,
        }
        try:
            Path(args.json).expanduser().write_text(json.dumps(document, indent=1) + "\n",
                                                    encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"--json {args.json}: cannot write it: {exc.strerror}") from None
    return 0


def _print_metrics(task: str, logits: Any, labels: Any) -> None:
    print(json.dumps({"rows": len(labels), **task_metrics(task, logits, labels)}, indent=1))


# --------------------------------------------------------------------------------------------
# A runtime bundle (numpy and the Rust extension only)


def _label_ids(examples: list[Example], names: list[str]) -> list[int]:
    ids = {name: i for i, name in enumerate(names)}
    for ex in examples:
        if ex.label not in ids:
            known = ", ".join(repr(n) for n in names)
            raise DataError(ex.where, f"unknown label {ex.label!r} (the bundle's labels: {known})")
    return [ids[ex.label] for ex in examples]  # type: ignore[index]


def _bundle_run(args: argparse.Namespace, speeds: list[float], curve: bool) -> Any:
    from tinyfast.runtime import Runtime

    path = Path(args.model).expanduser()
    try:
        runtime = Runtime.load(path, threads=args.threads or 0)
    except OSError as exc:
        raise ConfigError(f"{exc.filename or path}: {exc.strerror or exc}") from None
    if runtime.task == "regression" and any(speed > 0 for speed in speeds):
        raise ConfigError(f"{path}: a regression bundle never exits early (early exit needs the "
                          "entropy of class probabilities); evaluate it at --speed 0")
    examples = read_examples(args.data, _columns(args, Columns()), runtime.task)
    inputs = [ex.text_a if ex.text_b is None else (ex.text_a, ex.text_b) for ex in examples]
    if runtime.task == "classification":
        labels: list[Any] = _label_ids(examples, runtime.labels)
    else:
        labels = [float(ex.label) for ex in examples]  # type: ignore[arg-type]
    predict = runtime_predictor(runtime, inputs, args.batch_size)
    if not curve:
        _print_metrics(runtime.task, predict(0.0)[0], labels)
        return None
    lengths = runtime.tokenize(inputs)["lengths"].tolist()
    # One batch first: the first timed call should not pay for starting the worker pool.
    runtime.predict(inputs[:args.batch_size], speed=max(speeds), batch_size=args.batch_size)
    return "bundle", runtime.task, ModelShape.from_bundle(path), predict, labels, lengths


# --------------------------------------------------------------------------------------------
# A checkpoint (PyTorch)


def _checkpoint_run(args: argparse.Namespace, speeds: list[float], curve: bool) -> Any:
    import numpy as np
    import torch

    from tinyfast.data import TaskMeta
    from tinyfast.data.splits import encode_split
    from tinyfast.models import load_classifier, load_tokenizer, resolve_model_path
    from tinyfast.models.branches import BRANCHES_FILE
    from tinyfast.models.early_exit import EarlyExitClassifier
    from tinyfast.train.evaluation import classifier_logits, predict_logits

    if args.threads:
        torch.set_num_threads(args.threads)
    path = resolve_model_path(args.model)
    meta = TaskMeta.load(path)
    meta = dataclasses.replace(meta, columns=_columns(args, meta.columns))
    if meta.task == "regression" and any(speed > 0 for speed in speeds):
        raise ConfigError(f"{path}: a regression model never exits early (early exit needs the "
                          "entropy of class probabilities); evaluate it at --speed 0")
    tokenizer = load_tokenizer(path)
    progress = None if args.no_progress else "evaluate"
    # Branches are loaded when a speed asks for them, or to list them (classification only).
    early = any(speed > 0 for speed in speeds) or (
        curve and meta.task == "classification" and (path / BRANCHES_FILE).is_file())
    if early:
        model = EarlyExitClassifier.load(path)
        config = model.model.config
    else:
        plain = load_classifier(path).eval()
        config = plain.config
    examples = read_examples(args.data, meta.columns, meta.task)
    split = encode_split(tokenizer, examples, meta, with_labels=True)
    pad_id = tokenizer.pad_token_id or 0

    first = [split.dataset[i] for i in range(min(len(split), args.batch_size))]
    if early:
        shape = ModelShape.from_config(config, model.branches)
        predict = model.predictor(split, batch_size=args.batch_size, progress=progress)
        model.predict(first, max(speeds), batch_size=args.batch_size)  # warm up, untimed
    else:
        shape = ModelShape.from_config(config)

        def predict(speed: float) -> tuple[np.ndarray, np.ndarray]:
            logits = predict_logits(classifier_logits(plain), split.dataset, split.lengths,
                                    batch_size=args.batch_size, pad_id=pad_id,
                                    progress=progress)
            return logits, np.full(len(split), shape.num_layers, dtype=np.int32)

        if not curve:
            _print_metrics(meta.task, predict(0.0)[0], split.labels)
            return None
        predict_logits(classifier_logits(plain), first, [len(r["input_ids"]) for r in first],
                       batch_size=args.batch_size, pad_id=pad_id)  # warm up, untimed
    return "checkpoint", meta.task, shape, predict, split.labels, split.lengths
