"""Task data as the trainers need it: read, label-mapped, tokenized, ready for the loop."""

from __future__ import annotations

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
    path = Path(path)
    if path.suffix.lower() == ".txt":
        examples = corpus_examples(path)
    else:
        unlabeled = Columns(text_a=meta.columns.text_a, text_b=meta.columns.text_b, label=None)
        examples = read_examples(path, unlabeled, meta.task)
    return encode_split(tokenizer, examples, meta, with_labels=False)


def corpus_examples(path: str | Path) -> list[Example]:
    return [Example(text, None, None, f"{path}") for text in read_corpus(path)]
