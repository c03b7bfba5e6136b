"""``tinyfast augment``: read task rows in chunks, plan and draw their variants in Rust, ask the
masked LM for candidates in between, and write each chunk as soon as it is done.

The output grows as ``OUT.partial`` beside ``OUT``; after every chunk the rows written so far
are flushed to disk and ``OUT.partial.json`` records how far the run got. A killed run is
continued with ``resume=True`` (the partial file is cut back to the last recorded chunk, the
input is skipped up to it, and the result is byte for byte that of an uninterrupted run), or
started again without it. ``OUT`` itself only ever appears complete, by a rename.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinyfast import _native
from tinyfast.augment.masked_lm import MaskedLM, MaskedLMOptions, load_masked_lm
from tinyfast.augment.rows import RowReader, RowWriter, check_same_format
from tinyfast.augment.vocab import lowercases, surface_words
from tinyfast.augment.word_vectors import PieceVectors, input_embeddings, load_vectors
from tinyfast.data import Columns
from tinyfast.errors import ConfigError

STATE_VERSION = 1
# What the Rust side accepts (tinyfast-augment's augmenter).
MAX_VARIANTS = 10_000
MAX_CANDIDATES = 1_000


@dataclass(frozen=True)
class AugmentOptions:
    """The algorithm's settings (TinyBERT's defaults) and how the work is cut."""

    n: int = 20  # variants per sentence
    p: float = 0.4  # probability of replacing a word that has candidates
    k: int = 15  # candidates per word
    seed: int = 42
    chunk_rows: int = 1024  # input rows planned, sampled and written together
    threads: int = 0  # Rust worker threads (0 = one per core)

    def check(self) -> None:
        if not (0.0 <= self.p <= 1.0):
            raise ConfigError(f"p must be in [0, 1] (got {self.p})")
        limits = {"n": (0, MAX_VARIANTS), "k": (1, MAX_CANDIDATES), "chunk_rows": (1, 1 << 20),
                  "threads": (0, 1024), "seed": (0, 2**64 - 1)}
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise ConfigError(f"{name} must be in {low}..{high} (got {value})")


def augment(
    input: str | Path,
    out: str | Path,
    *,
    columns: Columns = Columns(),  # noqa: B008 - frozen dataclass
    options: AugmentOptions = AugmentOptions(),  # noqa: B008
    mlm: str | None = None,
    mlm_options: MaskedLMOptions = MaskedLMOptions(),  # noqa: B008
    vectors: str | Path | None = None,
    index: str | Path | None = None,
    teacher: str = "minilm",
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Augments the task file ``input`` into ``out`` (same format) and returns a summary.

    ``mlm``: a masked-LM checkpoint for single-piece words (None: word vectors for every word).
    ``vectors``: a GloVe / word2vec text file or saved index (None: vectors from the word-piece
    embeddings of ``mlm``, or of ``teacher`` without one). See ``tinyfast augment --help``.
    """
    options.check()
    source, target = Path(input), Path(out)
    check_same_format(source, target)
    if target.exists() and not overwrite:
        raise ConfigError(f"{target}: exists; choose another output or pass --overwrite")
    if target.exists() and not target.is_file():
        raise ConfigError(f"{target}: exists and is not a regular file")
    if target.resolve() == source.resolve():
        raise ConfigError(f"{target}: is the input itself")
    if not target.parent.is_dir():
        raise ConfigError(f"{target}: its directory does not exist")

    started = time.perf_counter()
    masked = None
    pieces = None
    if mlm is not None:
        model, tokenizer = load_masked_lm(mlm)
        masked = (model, tokenizer)
    else:
        _say("tinyfast: note: no masked LM given (--mlm); every word takes its candidates from "
             "word vectors")
    if vectors is not None:
        word_vectors = load_vectors(vectors, index)
    else:
        if masked is not None:
            tokenizer, embeddings = masked[1], input_embeddings(masked[0])
        else:
            tokenizer, embeddings = _teacher_embeddings(teacher)
        pieces = PieceVectors(tokenizer, embeddings)
        word_vectors = pieces.vectors

    augmenter = _native.Augmenter(
        options.n, options.p, options.k, options.seed, threads=options.threads,
        mlm_words=surface_words(masked[1]) if masked else None,
        lowercase=lowercases(masked[1]) if masked else True, vectors=word_vectors)
    lm = None
    if masked is not None:
        lm = MaskedLM(masked[0], masked[1], augmenter.candidate_mask(), mlm_options)

    # Loading the masked LM and the vectors (and exporting the int8 masked LM) is paid once per
    # run; the summary reports it apart from the per-row work.
    setup_seconds = time.perf_counter() - started
    fingerprint = _fingerprint(source, columns, options, mlm, mlm_options, vectors, teacher)
    partial = target.with_name(target.name + ".partial")
    state_file = target.with_name(target.name + ".partial.json")
    done_rows, written = _start(partial, state_file, fingerprint, resume)

    reader = RowReader(source, columns)
    pair = columns.text_b is not None
    total = _count_lines(source)
    stats = {"rows": 0, "rows_out": 0, "masked_lm_words": 0, "vector_words": 0}
    from tqdm import tqdm

    fields = 2 if pair else 1
    bar = tqdm(total=total * fields if total else None, unit="sentence", desc="augment",
               disable=not progress,
               dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 10.0)
    rows_seen = 0
    writer: RowWriter | None = None
    # The record exists before the partial output does: a partial file without one is not ours.
    _record(state_file, fingerprint, done_rows, written)
    with open(partial, "r+b" if written else "wb") as f:
        f.truncate(written)
        f.seek(written)
        chunk = []
        for row in reader:
            if writer is None:
                writer = RowWriter(reader.format, columns, reader.header)
                if written == 0:
                    f.write(writer.header_line().encode("utf-8"))
            rows_seen += 1
            if rows_seen <= done_rows:
                bar.update(fields)
                continue
            chunk.append((rows_seen - 1, row))
            if len(chunk) == options.chunk_rows:
                _chunk(chunk, augmenter, lm, pieces, writer, f, pair, options, stats)
                _checkpoint(f, state_file, fingerprint, rows_seen)
                bar.update(len(chunk) * fields)
                chunk = []
        if chunk:
            _chunk(chunk, augmenter, lm, pieces, writer, f, pair, options, stats)
            bar.update(len(chunk) * fields)
        f.flush()
        os.fsync(f.fileno())
    bar.close()
    os.replace(partial, target)
    state_file.unlink(missing_ok=True)
    seconds = time.perf_counter() - started
    return {
        "input": str(source), "out": str(target), **stats, "resumed_after_rows": done_rows,
        "seconds": round(seconds, 3), "setup_seconds": round(setup_seconds, 3),
        "options": asdict(options),
        "masked_lm": mlm, "masked_lm_options": asdict(mlm_options) if lm else None,
        "masked_lm_backend": lm.backend if lm else None,
        "masked_lm_forwards": lm.forwards if lm else 0,
        "vectors": str(vectors) if vectors else f"word pieces of {mlm or teacher}",
        "vector_words_in_index": len(word_vectors), "kernel": augmenter.kernel,
        "threads": augmenter.threads,
    }


def _chunk(chunk, augmenter, lm, pieces, writer, f, pair, options, stats) -> None:
    """Plans, asks the masked LM, draws and writes one chunk of rows."""
    fields = 2 if pair else 1
    texts = [text for _, row in chunk for text in row.texts]
    # Each text draws from its own stream: the row's number and which text of the row it is.
    streams = [index * 2 + side for index, _ in chunk for side in range(fields)]
    plan = augmenter.plan(texts)
    mlm_words, vector_words = plan.counts()
    stats["masked_lm_words"] += mlm_words
    stats["vector_words"] += vector_words
    ids = None
    if lm is not None and mlm_words:
        sentence, token = plan.masked_words()
        # One spare: the word itself is often among the model's best and is dropped.
        ids = lm.candidates(plan.tokens(), sentence, token, options.k + 1)
    extra_words = extra_values = None
    if pieces is not None:
        missing = augmenter.missing_words(plan)
        if missing:
            extra_words, extra_values = missing, pieces.for_words(missing)
    variants = augmenter.variants(plan, streams, mlm_ids=ids, extra_words=extra_words,
                                  extra_values=extra_values)
    lines = []
    for j, (_, row) in enumerate(chunk):
        lines.append(writer.line(row, row.texts))
        # For a pair, each side varies alone, next to the other side as it was.
        for side in range(fields):
            for variant in variants[j * fields + side]:
                texts = list(row.texts)
                texts[side] = variant
                lines.append(writer.line(row, tuple(texts)))
    stats["rows"] += len(chunk)
    stats["rows_out"] += len(lines)
    f.write("".join(lines).encode("utf-8"))


def _checkpoint(f, state_file: Path, fingerprint: str, rows_done: int) -> None:
    f.flush()
    os.fsync(f.fileno())
    _record(state_file, fingerprint, rows_done, f.tell())


def _record(state_file: Path, fingerprint: str, rows_done: int, size: int) -> None:
    """Writes the progress record (through a rename: it is never half-written)."""
    state = {"version": STATE_VERSION, "fingerprint": fingerprint, "rows_done": rows_done,
             "bytes": size}
    tmp = state_file.with_name(state_file.name + ".tmp")
    tmp.write_text(json.dumps(state) + "\n", encoding="utf-8")
    os.replace(tmp, state_file)


def _start(partial: Path, state_file: Path, fingerprint: str, resume: bool) -> tuple[int, int]:
    """(rows already done, bytes of the partial output to keep)."""
    if partial.exists() and not state_file.exists():
        raise ConfigError(f"{partial}: exists but is not an unfinished tinyfast run (no "
                          f"{state_file.name}); move it away")
    if not resume or not partial.exists():
        return 0, 0
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        rows, size = int(state["rows_done"]), int(state["bytes"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{state_file}: unreadable; rerun without --resume to start again"
                          ) from None
    if state.get("fingerprint") != fingerprint:
        raise ConfigError(f"{state_file}: the unfinished run used other settings or another "
                          "input; rerun without --resume to start again")
    if partial.stat().st_size < size:
        raise ConfigError(f"{partial}: shorter than its record says; rerun without --resume")
    _say(f"tinyfast: resuming after {rows} rows")
    return rows, size


def _fingerprint(source: Path, columns: Columns, options: AugmentOptions, mlm, mlm_options,
                 vectors, teacher) -> str:
    stat = source.stat()
    settings = {"input": str(source.resolve()), "size": stat.st_size, "mtime": stat.st_mtime_ns,
                "columns": asdict(columns), "options": asdict(options) | {"threads": None},
                "mlm": str(mlm),
                "mlm_options": asdict(mlm_options) | {"device": None, "threads": None},
                "vectors": str(vectors), "teacher": teacher}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _count_lines(path: Path) -> int | None:
    """Data lines, for the progress bar's total (a fast pass over the bytes)."""
    try:
        with open(path, "rb") as f:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 24), b""))
    except OSError:
        return None
    return max(lines - (1 if path.suffix.lower() in (".tsv", ".tab") else 0), 0) or None


def _teacher_embeddings(teacher: str) -> tuple[Any, np.ndarray]:
    from tinyfast.models import load_encoder, load_tokenizer

    return load_tokenizer(teacher), input_embeddings(load_encoder(teacher))


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

