"""A tokenizer's vocabulary seen as words: ``surface_words(tokenizer)[id]`` is the whole word
that token ``id`` writes when it starts a word, or "" when it writes none (a ``##``
continuation, a byte-level BPE piece inside a word, a special token). The Rust side decides from
this list which words are one piece and which outputs may be proposed."""

from __future__ import annotations

import json
from typing import Any


def surface_words(tokenizer: Any) -> list[str]:
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    kind = model.get("type")
    special = set(tokenizer.all_special_ids)
    words = [""] * len(tokenizer)
    for token, i in tokenizer.get_vocab().items():
        if i in special or i >= len(words):
            continue
        words[i] = _word_of(token, kind, model)
    return words


def _word_of(token: str, kind: str | None, model: dict[str, Any]) -> str:
    if kind == "WordPiece":
        prefix = model.get("continuing_subword_prefix") or "##"
        return "" if token.startswith(prefix) else token
    # Byte-level BPE (RoBERTa, GPT-2) marks a word start with "Ġ", SentencePiece with "▁".
    for start in ("Ġ", "▁"):
        if token.startswith(start):
            return token[len(start):]
    return ""


def lowercases(tokenizer: Any) -> bool:
    """Whether the tokenizer lowercases its input (then words are looked up lowercased)."""
    normalizer = json.loads(tokenizer.backend_tokenizer.to_str()).get("normalizer") or {}
    if normalizer.get("type") == "BertNormalizer":
        return bool(normalizer.get("lowercase", True))
    return bool(getattr(tokenizer, "do_lower_case", False))
