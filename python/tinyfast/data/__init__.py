"""Task data: readers for TSV/JSONL/plain text, task metadata and tokenization (torch-free).
Tokenized splits (``tinyfast.data.splits``) and batching (``tinyfast.data.batching``) need torch
and are imported from their modules."""

from tinyfast.data.readers import (
    FORMATS,
    TASK_FILE,
    TASK_TYPES,
    Columns,
    Encoded,
    Example,
    TaskMeta,
    build_task_meta,
    detect_format,
    encode_examples,
    read_corpus,
    read_examples,
)

__all__ = [
    "FORMATS",
    "TASK_FILE",
    "TASK_TYPES",
    "Columns",
    "Encoded",
    "Example",
    "TaskMeta",
    "build_task_meta",
    "detect_format",
    "encode_examples",
    "read_corpus",
    "read_examples",
]
