"""Where word-vector candidates come from: a GloVe / word2vec text file (or its saved index), or,
without one, the teacher's word-piece embeddings: every whole-word token is a row of the index,
and a word of several pieces is looked up with the mean of its pieces' embeddings."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from tinyfast import _native
from tinyfast.augment.vocab import surface_words
from tinyfast.errors import DataError

INDEX_SUFFIX = ".tfindex"


def load_vectors(path: str | Path, index: str | Path | None = None) -> Any:
    """``_native.WordVectors`` for a vector file; the parsed index is saved at ``index`` (default:
    beside the file, ``NAME.tfindex``) and mapped by later runs while the text is unchanged."""
    path = Path(path)
    cache = Path(index) if index is not None else path.with_name(path.name + INDEX_SUFFIX)
    try:
        vectors = _native.WordVectors.load(str(path), str(cache))
    except FileNotFoundError:
        raise DataError(str(path), "no such file") from None
    except ValueError as exc:
        raise DataError(getattr(exc, "where", str(path)), getattr(exc, "problem", str(exc))
                        ) from None
    except OSError as exc:
        raise DataError(str(path), f"cannot be read: {exc.strerror or exc}") from None
    if vectors.loaded == "built":
        print(f"tinyfast: note: could not save the vector index at {cache} (pass --index to "
              "put it elsewhere); the text is parsed again next time", file=sys.stderr)
    return vectors


class PieceVectors:
    """Word vectors from a tokenizer and its input embeddings (see the module docs)."""

    def __init__(self, tokenizer: Any, embeddings: np.ndarray) -> None:
        self.tokenizer = tokenizer
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        words = surface_words(tokenizer)[: len(self.embeddings)]
        rows = [i for i, w in enumerate(words) if w.isalpha()]
        # A vocabulary may hold a word twice (cased and uncased entries map alike): first wins.
        seen: set[str] = set()
        keep = [i for i in rows if not (words[i] in seen or seen.add(words[i]))]
        self.vectors = _native.WordVectors.from_arrays([words[i] for i in keep],
                                                       self.embeddings[keep])

    def for_words(self, words: list[str]) -> np.ndarray:
        """float32 [len(words), D]: the mean embedding of each word's pieces."""
        out = np.zeros((len(words), self.embeddings.shape[1]), dtype=np.float32)
        if not words:
            return out
        ids = self.tokenizer(words, add_special_tokens=False)["input_ids"]
        for i, pieces in enumerate(ids):
            if pieces:
                out[i] = self.embeddings[pieces].mean(axis=0)
        return out


def input_embeddings(model: Any) -> np.ndarray:
    return model.get_input_embeddings().weight.detach().float().cpu().numpy()
