"""Task rows in and out, streamed: the augmenter reads a TSV (header first) or JSONL file one line
at a time and writes each source row's variants as soon as they exist, so memory stays bounded
on any number of rows.

A row keeps every field of its source (other columns, the label, JSON keys in order); only the
text fields change, and a ``source_line`` field names the input line the row came from. The
per-field rules (non-empty texts, labels) are the task readers' (``tinyfast.data.readers``).
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinyfast._io import json_type
from tinyfast.data.readers import Columns, detect_format, json_text_field, parse_label, text_field
from tinyfast.errors import ConfigError, DataError

SOURCE_FIELD = "source_line"
# A text this long is no sentence (and one masked-LM input holds at most a few hundred words).
MAX_TEXT_CHARS = 100_000
FORMATS = ("tsv", "jsonl")


@dataclass
class Row:
    """One input row: its texts, everything else it holds, and its 1-based line number."""

    line: int
    texts: tuple[str, ...]  # text_a, then text_b for pairs
    fields: list[str] | dict[str, Any]  # TSV fields or the JSON object


def row_format(path: Path) -> str:
    fmt = detect_format(path)
    if fmt not in FORMATS:
        raise DataError(str(path), f"augmentation reads and writes TSV or JSONL, not {fmt}")
    return fmt


def text_columns(columns: Columns) -> tuple[str, ...]:
    return (columns.text_a,) if columns.text_b is None else (columns.text_a, columns.text_b)


class RowReader:
    """Streams the rows of ``path``; every problem is a ``DataError`` at ``path:line``."""

    def __init__(self, path: Path, columns: Columns, task: str = "classification") -> None:
        self.path = path
        self.columns = columns
        self.task = task
        self.format = row_format(path)
        self.header: list[str] | None = None

    def _lines(self) -> Iterator[tuple[int, str]]:
        """(line number, text without its line ending), decoding line by line."""
        _check_regular(self.path)
        with open(self.path, "rb") as f:
            for number, raw in enumerate(f, 1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{self.path}:{number}", f"not valid UTF-8 (byte {e.start + 1} "
                                    "of the line); save the file as UTF-8") from None
                if number == 1:
                    text = text.removeprefix("\ufeff")
                yield number, text.removesuffix("\n").removesuffix("\r")

    def __iter__(self) -> Iterator[Row]:
        if self.format == "tsv":
            yield from self._tsv()
        else:
            yield from self._jsonl()

    def _tsv(self) -> Iterator[Row]:
        lines = self._lines()
        first = next(lines, None)
        if first is None or not first[1].strip():
            raise DataError(str(self.path), "file is empty (a TSV file starts with its header)")
        header = first[1].split("\t")
        for i, name in enumerate(header):
            if name in header[:i]:
                raise DataError(f"{self.path}:1", f"column {name!r} appears twice in the header")
        wanted = [*text_columns(self.columns)]
        if self.columns.label:
            wanted.append(self.columns.label)
        for name in wanted:
            if name not in header:
                known = ", ".join(repr(h) for h in header)
                raise DataError(f"{self.path}:1", f"no column {name!r} in the header "
                                f"(columns: {known})")
        if SOURCE_FIELD in header:
            raise DataError(f"{self.path}:1", f"the input already has a {SOURCE_FIELD!r} column "
                            "(is it an augmented file?)")
        self.header = header
        at = [header.index(c) for c in text_columns(self.columns)]
        label_at = header.index(self.columns.label) if self.columns.label else None
        blank: int | None = None
        rows = 0
        for number, line in lines:
            if line == "":
                blank = blank or number
                continue
            if blank is not None:
                raise DataError(f"{self.path}:{blank}", "empty line (empty lines may only end "
                                "the file)")
            where = f"{self.path}:{number}"
            fields = line.split("\t")
            if len(fields) != len(header):
                raise DataError(where, f"row has {len(fields)} fields, the header has "
                                f"{len(header)} (tab-separated)")
            texts = tuple(_checked_text(text_field(fields[i], header[i], where), header[i], where)
                          for i in at)
            if label_at is not None:
                parse_label(fields[label_at], self.task, where)
            rows += 1
            yield Row(number, texts, fields)
        if rows == 0:
            raise DataError(str(self.path), "no data rows after the header")

    def _jsonl(self) -> Iterator[Row]:
        rows = 0
        keys = [*text_columns(self.columns)]
        if self.columns.label:
            keys.append(self.columns.label)
        for number, line in self._lines():
            if not line.strip():
                continue
            where = f"{self.path}:{number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(where, f"invalid JSON: {e.msg} (column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(where, f"expected a JSON object, got {json_type(obj)}")
            for key in keys:
                if key not in obj:
                    known = ", ".join(repr(k) for k in obj) or "none"
                    raise DataError(where, f"missing key {key!r} (keys: {known})")
            if SOURCE_FIELD in obj:
                raise DataError(where, f"the row already has a {SOURCE_FIELD!r} key (is it an "
                                "augmented file?)")
            texts = tuple(_checked_text(json_text_field(obj[c], c, where), c, where)
                          for c in text_columns(self.columns))
            if self.columns.label:
                label = obj[self.columns.label]
                if not isinstance(label, (str, int, float)) or isinstance(label, bool):
                    raise DataError(where, f"label must be a string or a number, got "
                                    f"{json_type(label)}")
            rows += 1
            yield Row(number, texts, obj)
        if rows == 0:
            raise DataError(str(self.path), "file is empty (no JSON rows)")


def _check_regular(path: Path) -> None:
    """A device or FIFO in place of the input would never end or block: refuse it up front."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise DataError(str(path), "no such file") from None
    except OSError as e:
        raise DataError(str(path), f"cannot be read: {e.strerror}") from None
    if not stat.S_ISREG(mode):
        raise DataError(str(path), "not a regular file")


def _checked_text(text: str, name: str, where: str) -> str:
    if len(text) > MAX_TEXT_CHARS:
        raise DataError(where, f"{name!r} holds {len(text)} characters; a text to augment may "
                        f"hold at most {MAX_TEXT_CHARS}")
    return text


class RowWriter:
    """Writes rows in the format of the input they came from."""

    def __init__(self, fmt: str, columns: Columns, header: list[str] | None) -> None:
        self.format = fmt
        self.names = text_columns(columns)
        self.header = header
        self._at = [header.index(c) for c in self.names] if header is not None else []

    def header_line(self) -> str:
        if self.format != "tsv" or self.header is None:
            return ""
        return "\t".join([*self.header, SOURCE_FIELD]) + "\n"

    def line(self, row: Row, texts: tuple[str, ...]) -> str:
        if self.format == "tsv":
            fields = list(row.fields)
            for i, text in zip(self._at, texts, strict=True):
                fields[i] = text
            return "\t".join([*fields, str(row.line)]) + "\n"
        obj = dict(row.fields)
        for name, text in zip(self.names, texts, strict=True):
            obj[name] = text
        obj[SOURCE_FIELD] = row.line
        return json.dumps(obj, ensure_ascii=False) + "\n"


def check_same_format(source: Path, out: Path) -> str:
    fmt = row_format(source)
    out_fmt = detect_format(out)
    if out_fmt != fmt:
        raise ConfigError(f"{out}: the output is written in the input's format ({fmt}); give it "
                          f"a .{fmt} name")
    return fmt
