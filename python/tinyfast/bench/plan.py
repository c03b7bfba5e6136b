"""What ``tinyfast bench`` compares, checked before anything runs: the contenders' names, the
options, the model (a checkpoint or a bundle, and the checkpoint and teacher beside it) and the
labeled data. Every problem is a one-line ``ConfigError`` or ``DataError``."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyfast._io import read_json_object
from tinyfast.bundle import BUNDLE_CONFIG, read_bundle_config
from tinyfast.data import TASK_FILE, Columns, TaskMeta, read_examples
from tinyfast.errors import ConfigError, DataError

__all__ = [
    "CONTENDERS",
    "FAMILIES",
    "PEERS",
    "REFERENCE",
    "TINYFAST",
    "BenchOptions",
    "Model",
    "Plan",
    "is_bundle",
    "plan",
    "tinyfast_name",
]

REFERENCE = "torch_fp32"
PEERS = ("torch_fp32", "torch_int8_dynamic", "ort_int8", "ort_int8_fused", "openvino_int8")
CONTENDERS = ("teacher_torch_fp32", *PEERS)
TINYFAST = "tinyfast_int8"
#: What ``--contenders`` chooses from (tinyfast_int8: every speed).
FAMILIES = (*CONTENDERS, TINYFAST)


def tinyfast_name(speed: float) -> str:
    return f"{TINYFAST}_speed{speed:g}"


def is_bundle(path: str | os.PathLike[str]) -> bool:
    """A runtime bundle is a directory holding ``tinyfast.json``."""
    return (Path(path) / BUNDLE_CONFIG).is_file()


@dataclass
class BenchOptions:
    model: str
    data: str
    out: str | None = None
    teacher: str | None = None
    checkpoint: str | None = None
    speeds: Sequence[float] = (0.0, 0.1, 0.3)
    threads: int = 1
    batch_size: int = 32
    rounds: int = 3
    latency_rows: int | None = None  # default: every row, at most DEFAULT_LATENCY_ROWS
    max_rows: int | None = None
    warmup: int = 8
    calibration_rows: int = 300
    contenders: Sequence[str] | None = None  # families; None: all
    work_dir: str | None = None
    text_a: str | None = None
    text_b: str | None = None
    label: str | None = None
    seed: int = 0
    progress: bool = True
    command: str | None = None



@dataclass
class Model:
    """A checkpoint's or bundle's task, as far as the comparison needs it."""

    path: Path
    labels: list[str]
    task: str
    max_length: int
    num_layers: int
    columns: Columns | None = None  # a checkpoint's, from tinyfast_task.json
    exits: list[dict[str, Any]] = field(default_factory=list)


def _checkpoint(path_text: str, flag: str) -> Model:
    path = Path(path_text).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{flag} {path_text}: no such checkpoint directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{flag} {path_text}: not a checkpoint directory (no config.json)")
    config = read_json_object(config_file)
    layers = config.get("num_hidden_layers")
    if not isinstance(layers, int):
        raise ConfigError(f"{config_file}: num_hidden_layers must be an integer")
    if (path / TASK_FILE).is_file():
        meta = TaskMeta.load(path)
        return Model(path, list(meta.labels), meta.task, meta.max_length, layers, meta.columns)
    # A plain Hugging Face classifier: its labels and length as tinyfast export takes them.
    id2label = config.get("id2label") or {}
    count = config.get("num_labels", len(id2label) or 2)
    labels = [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(count)]
    task = "regression" if config.get("problem_type") == "regression" else "classification"
    length = min(128, int(config.get("max_position_embeddings", 128)))
    return Model(path, labels, task, length, layers)


def _bundle(path: Path) -> Model:
    config = read_bundle_config(path / BUNDLE_CONFIG)
    return Model(path, list(config["labels"]), config["task"], int(config["max_length"]),
                 int(config["architecture"]["num_layers"]), exits=list(config["exits"]))


@dataclass
class Plan:
    given: Model  # MODEL_OR_BUNDLE
    kind: str  # "checkpoint" | "bundle"
    checkpoint: Model | None
    teacher: Model | None
    columns: Columns
    inputs: list[Any]  # texts or (text, text) pairs
    label_ids: list[int]


def plan(opts: BenchOptions) -> Plan:
    """Check every path, flag and file; read the data. Problems are one-line errors."""
    path = Path(opts.model).expanduser()
    if not path.exists():
        raise ConfigError(f"{opts.model}: no such checkpoint or bundle directory")
    if is_bundle(path):
        given, kind = _bundle(path), "bundle"
        checkpoint = _checkpoint(opts.checkpoint, "--checkpoint") if opts.checkpoint else None
    elif (path / "config.json").is_file():
        if opts.checkpoint:
            raise ConfigError(f"--checkpoint is for a bundle, and {opts.model} is a checkpoint "
                              "already")
        given, kind = _checkpoint(opts.model, "MODEL_OR_BUNDLE"), "checkpoint"
        checkpoint = given
    else:
        raise ConfigError(f"{opts.model}: neither a runtime bundle ({BUNDLE_CONFIG}) nor a "
                          "checkpoint directory (config.json)")
    if given.task != "classification":
        raise ConfigError(f"{opts.model}: a {given.task} model; tinyfast bench compares "
                          "classifiers (accuracy, macro F1)")
    if checkpoint is not None and checkpoint is not given:
        if (checkpoint.labels, checkpoint.num_layers) != (given.labels, given.num_layers):
            raise ConfigError(
                f"--checkpoint {opts.checkpoint}: labels {checkpoint.labels} and "
                f"{checkpoint.num_layers} layers, but the bundle has labels {given.labels} and "
                f"{given.num_layers} layers: not the checkpoint it was exported from")
    teacher = _checkpoint(opts.teacher, "--teacher") if opts.teacher else None
    if teacher is not None and teacher.labels != given.labels:
        raise ConfigError(f"--teacher {opts.teacher}: labels {teacher.labels}, but the model's "
                          f"are {given.labels}")
    if opts.out is not None:
        parent = Path(opts.out).expanduser().absolute().parent
        if not parent.is_dir():
            raise ConfigError(f"--out {opts.out}: no such directory {parent}")
    if opts.work_dir is not None and Path(opts.work_dir).exists() and \
            not Path(opts.work_dir).is_dir():
        raise ConfigError(f"--work-dir {opts.work_dir}: not a directory")
    unknown = sorted(set(opts.contenders or ()) - set(FAMILIES))
    if unknown:
        raise ConfigError(f"--contenders: unknown {', '.join(unknown)} (choose from "
                          f"{', '.join(FAMILIES)})")
    base = (checkpoint.columns if checkpoint is not None else None) or Columns()
    columns = Columns(text_a=opts.text_a or base.text_a,
                      text_b=opts.text_b if opts.text_b is not None else base.text_b,
                      label=opts.label or base.label or "label")
    examples = read_examples(opts.data, columns, "classification")
    if opts.max_rows is not None:
        examples = examples[: opts.max_rows]
    ids = {name: i for i, name in enumerate(given.labels)}
    label_ids = []
    for ex in examples:
        if ex.label not in ids:
            known = ", ".join(repr(n) for n in given.labels)
            raise DataError(ex.where, f"unknown label {ex.label!r} (the model's labels: {known})")
        label_ids.append(ids[ex.label])  # type: ignore[index]
    inputs = [ex.text_a if ex.text_b is None else (ex.text_a, ex.text_b) for ex in examples]
    return Plan(given, kind, checkpoint, teacher, columns, inputs, label_ids)
