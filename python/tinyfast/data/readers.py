"""Reading task data (TSV, JSONL, plain text), the task's metadata, and tokenization.

No torch here: the runtime reuses the readers and ``TaskMeta`` without it. Every problem in a data
file becomes one ``DataError`` whose message starts with ``path:line``; no row is dropped silently.

Texts are kept verbatim (only the line ending is removed); labels are stripped of surrounding
whitespace. Line numbers are 1-based, as an editor shows them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyfast._io import json_type, read_json_object, read_limited
from tinyfast.errors import ConfigError, DataError

TASK_TYPES = ("classification", "regression")
FORMATS = ("tsv", "jsonl", "text")
TASK_FILE = "tinyfast_task.json"
TASK_FILE_VERSION = 1

_EXTENSIONS = {".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".txt": "text"}
_MIN_MAX_LENGTH = 8  # room for [CLS] a [SEP] b [SEP] and a few real tokens
# A data file is read whole; this only stops an endless source (a device) from eating memory.
DATA_LIMIT = 64 << 30
_ENCODE_CHUNK = 2048  # rows per tokenizer call: bounds the memory of the tokenizer's outputs

PathLike = str | os.PathLike


@dataclass(frozen=True)
class Columns:
    """Column names in a TSV header, or keys in JSONL objects."""

    text_a: str = "sentence"
    text_b: str | None = None  # set for sentence-pair tasks
    label: str | None = "label"  # None = unlabeled data


@dataclass(frozen=True)
class Example:
    """One row: raw texts, raw label and where it came from."""

    text_a: str
    text_b: str | None
    label: str | float | None  # str for classification, float for regression, None if unlabeled
    where: str  # "path:line"


# ---------------------------------------------------------------------------------------------
# Reading files


def detect_format(path: PathLike) -> str:
    """Return ``"tsv"``, ``"jsonl"`` or ``"text"`` from the file extension."""
    suffix = Path(path).suffix.lower()
    if suffix not in _EXTENSIONS:
        raise DataError(
            str(path),
            f"cannot tell the format from the extension {suffix or '(none)'!r}; "
            "use .tsv/.tab, .jsonl/.json or .txt, or name the format explicitly",
        )
    return _EXTENSIONS[suffix]


def _read_lines(path: PathLike) -> list[str]:
    """All lines of a UTF-8 file without line endings; errors name the file (and line)."""
    name = str(path)
    data = read_limited(path, DATA_LIMIT, error=DataError)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{name}:{line}", f"not valid UTF-8 (byte {column} of the line); save the file as UTF-8"
        ) from None
    text = text.removeprefix("\ufeff")  # editors on Windows add a byte-order mark
    if not text.strip():
        raise DataError(name, "file is empty")
    # Split on "\n" only: str.splitlines() would also break on \x0b, \x1c, \u2028 ... inside texts.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start a new one
    return [line.removesuffix("\r") for line in lines]


def _text_lines(path: PathLike) -> list[tuple[int, str]]:
    """(line number, line) for every non-blank line of a plain-text file."""
    rows = [(i, line) for i, line in enumerate(_read_lines(path), 1) if line.strip()]
    return rows  # _read_lines already rejected files with no text at all


def read_corpus(path: PathLike) -> list[str]:
    """Read plain text, one sentence or document a line.

    Blank lines are separators and are skipped; every other line is kept verbatim except for its
    line ending (``\\n`` or ``\\r\\n``).
    """
    return [line for _, line in _text_lines(path)]


def read_examples(
    path: PathLike,
    columns: Columns = Columns(),  # noqa: B008 - frozen dataclass, safe as a default
    task: str = "classification",
    format: str | None = None,
) -> list[Example]:
    """Read a TSV (header line first), JSONL or plain-text file into examples.

    Plain text holds one unlabeled text a line, so it needs ``Columns(label=None)`` and no
    ``text_b``. Classification labels are strings (JSON integers become strings); regression
    labels must be finite numbers.
    """
    _check_task(task)
    fmt = format if format is not None else detect_format(path)
    if fmt not in FORMATS:
        raise ConfigError(f"unknown data format {fmt!r} (expected one of {', '.join(FORMATS)})")
    if fmt == "tsv":
        return _read_tsv(path, columns, task)
    if fmt == "jsonl":
        return _read_jsonl(path, columns, task)
    return _read_text(path, columns)


def _read_text(path: PathLike, columns: Columns) -> list[Example]:
    if columns.label is not None:
        raise DataError(
            str(path),
            "text files carry no labels; read them as unlabeled (Columns(label=None)) "
            "or use TSV/JSONL for labeled data",
        )
    if columns.text_b is not None:
        raise DataError(str(path), "text files hold one text a line; sentence pairs need TSV/JSONL")
    return [Example(line, None, None, f"{path}:{i}") for i, line in _text_lines(path)]


def _read_tsv(path: PathLike, columns: Columns, task: str) -> list[Example]:
    lines = _read_lines(path)
    header = lines[0].split("\t")
    for i, name in enumerate(header):
        if name in header[:i]:
            raise DataError(f"{path}:1", f"column {name!r} appears twice in the header")
    wanted = [c for c in (columns.text_a, columns.text_b, columns.label) if c is not None]
    for name in wanted:
        if name not in header:
            known = ", ".join(repr(h) for h in header)
            raise DataError(f"{path}:1", f"no column {name!r} in the header (columns: {known})")
    ia = header.index(columns.text_a)
    ib = header.index(columns.text_b) if columns.text_b is not None else None
    il = header.index(columns.label) if columns.label is not None else None

    # Empty lines are allowed only at the very end (editors often leave one there).
    end = len(lines)
    while end > 1 and lines[end - 1] == "":
        end -= 1
    if end == 1:
        raise DataError(str(path), "no data rows after the header")

    examples = []
    for lineno in range(2, end + 1):
        line = lines[lineno - 1]
        where = f"{path}:{lineno}"
        if line == "":
            raise DataError(where, "empty line (empty lines may only end the file)")
        fields = line.split("\t")
        if len(fields) != len(header):
            raise DataError(
                where, f"row has {len(fields)} fields, the header has {len(header)} (tab-separated)"
            )
        text_a = text_field(fields[ia], columns.text_a, where)
        text_b = text_field(fields[ib], columns.text_b, where) if ib is not None else None
        label = None
        if il is not None:
            label = parse_label(fields[il], task, where)
        examples.append(Example(text_a, text_b, label, where))
    return examples


def _read_jsonl(path: PathLike, columns: Columns, task: str) -> list[Example]:
    examples = []
    for lineno, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue  # blank lines are harmless in JSONL
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(where, f"invalid JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(where, f"expected a JSON object, got {json_type(obj)}")
        keys = [k for k in (columns.text_a, columns.text_b, columns.label) if k is not None]
        for key in keys:
            if key not in obj:
                known = ", ".join(repr(k) for k in obj) or "none"
                raise DataError(where, f"missing key {key!r} (keys: {known})")
        text_a = json_text_field(obj[columns.text_a], columns.text_a, where)
        text_b = None
        if columns.text_b is not None:
            text_b = json_text_field(obj[columns.text_b], columns.text_b, where)
        label = None
        if columns.label is not None:
            label = _json_label(obj[columns.label], task, where)
        examples.append(Example(text_a, text_b, label, where))
    return examples  # not empty: _read_lines rejected files with only blank lines


# The per-field rules, shared with the streaming readers (tinyfast.augment.rows).


def text_field(value: str, name: str, where: str) -> str:
    """A TSV text field: anything but blank."""
    if not value.strip():
        raise DataError(where, f"empty {name!r} field")
    return value


def json_text_field(value: Any, name: str, where: str) -> str:
    """A JSON text field: a string, not blank."""
    if not isinstance(value, str):
        raise DataError(where, f"{name!r} must be a string, got {json_type(value)}")
    return text_field(value, name, where)


def _json_label(value: Any, task: str, where: str) -> str | float:
    if isinstance(value, str):
        return parse_label(value, task, where)
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if task == "classification" and isinstance(value, int) and numeric:
        return str(value)
    if task == "regression" and numeric:
        return parse_label(str(value), task, where)
    wanted = "a string or an integer" if task == "classification" else "a number"
    raise DataError(where, f"label must be {wanted}, got {json_type(value)} {value!r}")


def parse_label(raw: str, task: str, where: str) -> str | float:
    """A label as written: a class name, or a finite number for regression."""
    label = raw.strip()
    if not label:
        raise DataError(where, "empty label")
    if task == "classification":
        return label
    try:
        value = float(label)
    except ValueError:
        raise DataError(where, f"label {label!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(where, f"label {label!r} is not a finite number")
    return value


def _check_task(task: str) -> None:
    if task not in TASK_TYPES:
        raise ConfigError(f"unknown task {task!r} (expected one of {', '.join(TASK_TYPES)})")


# ---------------------------------------------------------------------------------------------
# Task metadata


@dataclass
class TaskMeta:
    """Everything about a task that is saved next to every model (``tinyfast_task.json``)."""

    task: str  # "classification" | "regression"
    # id -> name; empty for regression, and for label-free work such as general distillation
    labels: list[str]
    columns: Columns
    max_length: int = 128

    def __post_init__(self) -> None:
        _check_task(self.task)
        if self.task == "regression" and self.labels:
            raise ConfigError("a regression task has no label names")
        if not all(isinstance(x, str) for x in self.labels):
            raise ConfigError("label names must be strings")
        if len(set(self.labels)) != len(self.labels):
            raise ConfigError(f"label names repeat: {self.labels}")
        if not isinstance(self.max_length, int) or self.max_length < _MIN_MAX_LENGTH:
            raise ConfigError(f"max_length must be an integer >= {_MIN_MAX_LENGTH}")

    @property
    def num_labels(self) -> int:
        """Output width of the classifier head: one per label, 1 for regression."""
        return len(self.labels) or 1

    def label_id(self, label: str, where: str) -> int:
        """Index of a classification label; ``DataError`` at ``where`` if it is unknown."""
        if self.task != "classification":
            raise ConfigError("label ids exist only for classification tasks")
        try:
            return self.labels.index(label)
        except ValueError:
            raise DataError(
                where, f"unknown label {label!r} (known: {_names(self.labels)})"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": TASK_FILE_VERSION,
            "task": self.task,
            "labels": list(self.labels),
            "columns": {
                "text_a": self.columns.text_a,
                "text_b": self.columns.text_b,
                "label": self.columns.label,
            },
            "max_length": self.max_length,
        }

    @classmethod
    def from_dict(cls, d: Any, where: str) -> TaskMeta:
        """Validate and build from ``to_dict`` output; problems raise ``DataError`` at ``where``."""
        if not isinstance(d, dict):
            raise DataError(where, f"expected a JSON object, got {json_type(d)}")
        version = d.get("version", TASK_FILE_VERSION)
        if not isinstance(version, int) or version > TASK_FILE_VERSION:
            raise DataError(where, f"version {version!r} is newer than this tinyfast understands")
        for key in ("task", "labels", "columns"):
            if key not in d:
                raise DataError(where, f"missing field {key!r}")
        cols = d["columns"]
        if not isinstance(cols, dict) or not isinstance(cols.get("text_a"), str):
            raise DataError(where, "'columns' must be an object with a string 'text_a'")
        for key in ("text_b", "label"):
            if cols.get(key) is not None and not isinstance(cols[key], str):
                raise DataError(where, f"'columns.{key}' must be a string or null")
        if not isinstance(d["labels"], list):
            raise DataError(where, "'labels' must be a list of strings")
        try:
            return cls(
                task=d["task"],
                labels=list(d["labels"]),
                columns=Columns(cols["text_a"], cols.get("text_b"), cols.get("label")),
                max_length=d.get("max_length", 128),
            )
        except ConfigError as e:
            raise DataError(where, str(e)) from None

    def save(self, directory: PathLike) -> Path:
        """Write ``directory/tinyfast_task.json`` (creating the directory) and return its path."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        path = out / TASK_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)  # atomic: a crash never leaves a half-written file
        return path

    @classmethod
    def load(cls, directory: PathLike) -> TaskMeta:
        """Read ``directory/tinyfast_task.json``; ``DataError`` if it is missing or malformed."""
        path = Path(directory) / TASK_FILE
        if not path.is_file():
            raise DataError(str(path), "no task file here (is this a tinyfast model directory?)")
        return cls.from_dict(read_json_object(path, "the task's metadata object",
                                              error=DataError), str(path))


def _names(labels: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(repr(x) for x in labels[:limit]) or "none"
    return shown + (f", ... ({len(labels) - limit} more)" if len(labels) > limit else "")


def _natural_key(labels: Sequence[str]) -> Any:
    """Sort numerically if every label is an integer ("2" before "10"), else as strings."""
    try:
        [int(x) for x in labels]
    except ValueError:
        return None
    return lambda x: (int(x), x)  # x breaks ties such as "1" vs "01"


def build_task_meta(
    examples: Sequence[Example],
    task: str,
    columns: Columns,
    max_length: int = 128,
    labels: list[str] | None = None,
) -> TaskMeta:
    """Collect the label set from labeled examples (or check them against ``labels``).

    Without ``labels``, names are sorted naturally: numerically if all are integers, else as
    strings. A classification task needs at least two distinct labels in the data.
    """
    _check_task(task)
    for ex in examples:
        if ex.label is None:
            raise DataError(ex.where, "row has no label, but a labeled task is being built")
    if task == "regression":
        if labels:
            raise ConfigError("a regression task takes no label names")
        return TaskMeta(task, [], columns, max_length)

    seen = {str(ex.label) for ex in examples}
    if labels is not None:
        meta = TaskMeta(task, list(labels), columns, max_length)
        for ex in examples:
            if ex.label not in meta.labels:
                raise DataError(
                    ex.where,
                    f"label {ex.label!r} is not one of the given labels ({_names(labels)})",
                )
        return meta
    if not examples:
        raise ConfigError("no examples to collect labels from")
    if len(seen) < 2:
        raise DataError(
            examples[0].where.rsplit(":", 1)[0],
            f"only one label ({_names(sorted(seen))}) in the data; a classifier needs two or more",
        )
    return TaskMeta(task, sorted(seen, key=_natural_key(list(seen))), columns, max_length)


# ---------------------------------------------------------------------------------------------
# Tokenization


@dataclass
class Encoded:
    """Token ids per example, unpadded (plain lists, no torch)."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: list[int] | list[float] | None = field(default=None)

    def __post_init__(self) -> None:
        n = len(self.input_ids)
        if len(self.token_type_ids) != n or (self.labels is not None and len(self.labels) != n):
            raise ValueError("input_ids, token_type_ids and labels must have the same length")

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


def encode_examples(
    tokenizer: Any, examples: Sequence[Example], meta: TaskMeta, with_labels: bool = True
) -> Encoded:
    """Tokenize with a Hugging Face fast tokenizer: truncated to ``meta.max_length``, no padding.

    Pairs are truncated longest-first. Labels become ids (classification) or floats (regression);
    they are checked before any tokenizing so a bad row fails fast.
    """
    labels = _encoded_labels(examples, meta) if with_labels else None
    pair = meta.columns.text_b is not None
    for ex in examples:
        if pair and ex.text_b is None:
            raise DataError(ex.where, "the task takes sentence pairs but this row has one text")
        if not pair and ex.text_b is not None:
            raise DataError(ex.where, "the task takes single sentences but this row has a pair")

    input_ids: list[list[int]] = []
    token_type_ids: list[list[int]] = []
    for start in range(0, len(examples), _ENCODE_CHUNK):
        chunk = examples[start : start + _ENCODE_CHUNK]
        out = tokenizer(
            [ex.text_a for ex in chunk],
            [ex.text_b for ex in chunk] if pair else None,
            truncation="longest_first",
            max_length=meta.max_length,
            padding=False,
            return_token_type_ids=True,
            return_attention_mask=False,
        )
        ids = [list(x) for x in out["input_ids"]]
        types = out.get("token_type_ids")  # some tokenizers (RoBERTa-like) may not produce them
        input_ids.extend(ids)
        token_type_ids.extend([list(t) for t in types] if types else [[0] * len(x) for x in ids])
    return Encoded(input_ids, token_type_ids, labels)


def _encoded_labels(examples: Sequence[Example], meta: TaskMeta) -> list[int] | list[float]:
    for ex in examples:
        if ex.label is None:
            raise DataError(ex.where, "row has no label, but labels are needed here")
    if meta.task == "regression":
        # Examples read for classification carry strings; parse them the same way the reader does.
        return [float(parse_label(str(ex.label), "regression", ex.where)) for ex in examples]
    ids = {name: i for i, name in enumerate(meta.labels)}  # one dict instead of a scan per row
    return [
        ids[ex.label] if ex.label in ids else meta.label_id(ex.label, ex.where) for ex in examples
    ]
