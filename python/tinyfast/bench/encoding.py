"""Tokenization inside every timed call: the same ids for every contender, from one of two
encoders. ``hf_encoder`` calls a Hugging Face fast tokenizer (as a transformers user would);
``FileEncoder`` reads the checkpoint's ``tokenizer.json`` with the ``tokenizers`` library alone,
so a contender that needs neither torch nor transformers (ONNX Runtime, OpenVINO) runs without
them, as it would be deployed. Both truncate to the longest sequence asked for (longest first for
pairs) and pad with zeros past each row's length."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["Encode", "FileEncoder", "hf_encoder", "split_pairs"]

#: ``encode(inputs, seq_len)`` -> int64 arrays ``input_ids``, ``attention_mask`` and
#: ``token_type_ids`` [rows, width]: width the longest row (at most ``seq_len``) or, for a static
#: engine, ``seq_len`` itself.
Encode = Callable[[list[Any], int], dict[str, np.ndarray]]


def split_pairs(inputs: list[Any]) -> tuple[list[str], list[str] | None]:
    """Texts, or (text, text) pairs split into the first and second texts."""
    if inputs and isinstance(inputs[0], tuple):
        return [a for a, _ in inputs], [b for _, b in inputs]
    return list(inputs), None


def hf_encoder(tokenizer: Any, tensors: str = "np", static: bool = False
               ) -> Callable[[list[Any], int], Any]:
    """A Hugging Face fast tokenizer with truncation and padding to the longest row (``static``:
    to ``seq_len``)."""
    padding: bool | str = "max_length" if static else True

    def encode(inputs: list[Any], seq_len: int) -> Any:
        first, second = split_pairs(inputs)
        return tokenizer(first, second, padding=padding, truncation=True, max_length=seq_len,
                         return_tensors=tensors)

    return encode


class FileEncoder:
    """``tokenizer.json`` through the ``tokenizers`` library (no transformers, no torch).

    ``static=True`` pads every row to ``seq_len`` (engines compiled for one shape)."""

    def __init__(self, path: str | os.PathLike[str], pad_id: int, static: bool = False) -> None:
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(os.fspath(path))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.pad_id = int(pad_id)
        self.static = static
        self._length: int | None = None

    def __call__(self, inputs: list[Any], seq_len: int) -> dict[str, np.ndarray]:
        if self._length != seq_len:
            self.tokenizer.enable_truncation(seq_len)  # longest_first for pairs, as HF's
            self._length = seq_len
        first, second = split_pairs(inputs)
        items = first if second is None else list(zip(first, second, strict=True))
        encodings = self.tokenizer.encode_batch(items)
        width = seq_len if self.static else max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), width), self.pad_id, dtype=np.int64)
        types = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros((len(encodings), width), dtype=np.int64)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            ids[row, :n] = e.ids
            types[row, :n] = e.type_ids
            mask[row, :n] = 1
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
