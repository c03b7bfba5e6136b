"""Workloads of the speed benchmark: ``BATCHxSEQ`` calls over texts that tokenize to exactly SEQ
tokens, so no contender pads or truncates; and the multiply-adds of one call."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from tinyfast.errors import ConfigError

__all__ = [
    "WORDS",
    "Workload",
    "exact_length_texts",
    "linear_gop_per_call",
    "load_source_texts",
]

# Words for generated sentences when no text file is given (fixed seed, plain English).
WORDS = (
    "the a an this that film movie story plot actor actress director scene scenes music score "
    "camera script dialogue ending start middle character characters audience critic review "
    "is was are were seems feels looks sounds becomes remains makes gives takes shows tells "
    "good great bad awful funny sad dull bright clever stupid warm cold long short slow quick "
    "beautiful ugly charming boring moving flat sharp honest fake fresh tired strong weak "
    "very quite rather too so almost never always often sometimes really truly barely "
    "and but or yet because while although when if than then also still even just only "
    "of in on at by with without for from about into over under after before through "
    "we you they he she it one some many few every most all no each other another "
    "time life love world people man woman child family friend night day year work way "
    "enough much more less little big small old new young first last best worst whole "
    "performance performances humor drama comedy thriller romance action effects pace tone"
).split()


@dataclass
class Workload:
    batch: int
    seq_len: int
    texts: list[str]  # the pool; call k uses rows [k*batch, (k+1)*batch) modulo the pool

    @property
    def name(self) -> str:
        return f"b{self.batch}_s{self.seq_len}"

    def call_texts(self, k: int) -> list[str]:
        calls = len(self.texts) // self.batch
        start = (k % calls) * self.batch
        return self.texts[start : start + self.batch]


def load_source_texts(
    path: str | None, column: str, seed: int, describe: Any = str
) -> tuple[list[str], str]:
    """Real sentences from a TSV/JSONL/text file, or generated ones; and where they came from
    (``describe(path)`` writes the path into that description)."""
    if path is not None:
        from tinyfast.data import Columns, detect_format, read_examples

        fmt = detect_format(path)
        columns = Columns(text_a=column, label=None) if fmt != "text" else Columns(label=None)
        texts = [ex.text_a for ex in read_examples(path, columns, format=fmt) if ex.text_a.strip()]
        if not texts:
            raise ConfigError(f"{path}: no non-empty texts")
        where = f"file: {describe(path)}"
        return texts, f"{where} (column {column!r})" if fmt != "text" else where
    rng = random.Random(seed)
    texts = [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 24))) + " ." for _ in range(500)
    ]
    return texts, f"generated: 500 sentences of 6-24 words from a fixed list, seed {seed}"


def _word_stream(texts: Sequence[str], start: int) -> Iterator[str]:
    """Words of the texts in order, starting at text ``start`` and wrapping around, forever."""
    n = len(texts)
    for i in range(start, start + 1_000_000):
        yield from texts[i % n].split()


def exact_length_texts(tokenizer: Any, texts: Sequence[str], seq_len: int, count: int) -> list[str]:
    """``count`` texts that tokenize to exactly ``seq_len`` tokens, special tokens included.

    Each is consecutive words of the source texts (text i starts at source text 7i); a word whose
    tokens would overshoot is skipped, so the count lands exactly. Checked on the whole text.
    """
    content = seq_len - tokenizer.num_special_tokens_to_add(pair=False)
    if content < 1:
        raise ConfigError(f"sequence length {seq_len} leaves no room for text")
    sizes: dict[str, int] = {}
    out = []
    for i in range(count):
        words: list[str] = []
        have = 0
        for tries, word in enumerate(_word_stream(texts, i * 7)):
            if word not in sizes:
                sizes[word] = len(tokenizer(word, add_special_tokens=False)["input_ids"])
            size = sizes[word]
            if size and have + size <= content:
                words.append(word)
                have += size
            if have == content:
                break
            if tries > 100 * seq_len:
                raise ConfigError(f"cannot build a text of {seq_len} tokens")
        text = " ".join(words)
        got = len(tokenizer(text)["input_ids"])
        if got != seq_len:
            raise ConfigError(
                f"built a text of {got} tokens instead of {seq_len} (the tokenizer does not "
                "count words independently); use other source text"
            )
        out.append(text)
    return out


def linear_gop_per_call(config: Any, batch: int, seq_len: int) -> float:
    """Multiply-adds x2 of the encoder's matmuls (linears and attention) per call, in GOP."""
    h, f, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    tokens = batch * seq_len
    linears = 2 * tokens * layers * (4 * h * h + 2 * h * f)
    attention = 2 * batch * layers * 2 * seq_len * seq_len * h
    head = 2 * batch * (h * h + h * config.num_labels)
    return (linears + attention + head) / 1e9
