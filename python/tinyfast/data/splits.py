"""Task data as the trainers need it: read, label-mapped, tokenized, ready for the loop."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from tinyfast.data.batching import EncodedDataset
from tinyfast.data.readers import (
    Columns,
    Example,
    TaskMeta,
    build_task_meta,
    encode_examples,
    read_corpus,
    read_examples,
)
from tinyfast.errors import DataError


@dataclass
class Split:
    """One tokenized split: the dataset the loop indexes, its row lengths, and gold labels."""

    dataset: EncodedDataset
    lengths: list[int]
    labels: list | None

    def __len__(self) -> int:
        return len(self.lengths)


def encode_split(tokenizer, examples: list[Example], meta: TaskMeta, with_labels: bool) -> Split:
    encoded = encode_examples(tokenizer, examples, meta, with_labels=with_labels)
    return Split(EncodedDataset(encoded), list(encoded.lengths), encoded.labels)


def load_labeled(
    tokenizer,
    train: str | Path,
    dev: str | Path,
    *,
    columns: Columns,
    task: str,
    max_length: int,
    meta: TaskMeta | None = None,
) -> tuple[TaskMeta, Split, Split]:
    """Reads a train and a dev file. The label map comes from ``meta`` when given (a teacher's),
    else from the training labels."""
    train_examples = read_examples(train, columns, task)
    dev_examples = read_examples(dev, columns, task)
    if meta is None:
        meta = build_task_meta(train_examples, task, columns, max_length)
    train_split = encode_split(tokenizer, train_examples, meta, with_labels=True)
    dev_split = encode_split(tokenizer, dev_examples, meta, with_labels=True)
    return meta, train_split, dev_split


def load_unlabeled(tokenizer, path: str | Path, meta: TaskMeta) -> Split:
    """Text for distillation, which needs no labels: a task file (TSV/JSONL with the task's
    columns; a label column, if present, is ignored) or a plain-text corpus."""
    return encode_split(tokenizer, read_unlabeled(path, meta), meta, with_labels=False)


def read_unlabeled(path: str | Path, meta: TaskMeta) -> list[Example]:
    """The rows of :func:`load_unlabeled`'s file, untokenized."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        if meta.columns.text_b is not None:
            raise DataError(str(path), "plain text holds one text a line, but this task takes "
                            f"pairs ({meta.columns.text_a}, {meta.columns.text_b}); give a "
                            "TSV/JSONL file with both columns")
        examples = corpus_examples(path)
    else:
        unlabeled = Columns(text_a=meta.columns.text_a, text_b=meta.columns.text_b, label=None)
        examples = read_examples(path, unlabeled, meta.task)
    return examples


def corpus_examples(path: str | Path) -> list[Example]:
    return [Example(text, None, None, f"{path}") for text in read_corpus(path)]


def heldout_split(split: Split, share: float, cap: int, seed: int) -> tuple[Split, Split]:
    """``split`` cut into training rows and a seeded random held-out ``share`` of its rows (at
    most ``cap``; none when ``share`` is 0 or there is a single row). Both keep the original row
    order and share the tokenized rows (no copy); labels are dropped (distillation needs none)."""
    rng = random.Random(seed)
    order = list(range(len(split)))
    rng.shuffle(order)
    n_held = min(cap, max(1, int(len(order) * share))) if share > 0 and len(order) > 1 else 0
    return _subset(split, sorted(order[n_held:])), _subset(split, sorted(order[:n_held]))


def _subset(split: Split, rows: list[int]) -> Split:
    return Split(_Rows(split.dataset, rows), [split.lengths[i] for i in rows], None)


class _Rows:
    """A view of some rows of a dataset (no copy)."""

    def __init__(self, dataset, rows: list[int]) -> None:
        self.dataset, self.rows = dataset, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.dataset[self.rows[i]]
