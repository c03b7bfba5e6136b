"""The int8 early-exit runtime from Python: ``from tinyfast import Runtime``.

A thin layer over the Rust extension (``tinyfast._native.Runtime``, crate ``tinyfast-core``): it
normalizes arguments (any iterable of texts, numpy string arrays, lists of token ids) and wraps
results in a :class:`Prediction`. Needs numpy alone, never torch.

Threads: the extension releases the GIL while it tokenizes and computes, and one :class:`Runtime`
may be shared by any number of Python threads (they share its worker pool and weights).

Errors:

- a malformed bundle file (bad JSON, wrong tensor names, shapes or dtypes, NaN scales, a
  truncated file, a hostile header length) raises :class:`BundleError`, a ``ValueError`` whose
  message starts with the file's path (also in ``.path``);
- a missing or unreadable file raises ``OSError`` (``FileNotFoundError``, ``PermissionError``...)
  with ``.filename`` set to the path;
- invalid arguments (speed outside [0, 1] or NaN, ``batch_size < 1``, token ids out of the
  vocabulary, mixed texts and pairs, an unknown kernel) raise ``ValueError``; wrongly typed ones
  (a single ``str`` instead of a list) ``TypeError``;
- a failure inside the computation (non-finite logits) raises ``RuntimeError``. A panic inside the
  Rust code (a bug) is also caught and raised as ``RuntimeError``, never a crash.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tinyfast import _native
from tinyfast.errors import BundleError

__all__ = ["BundleError", "Prediction", "Runtime", "TextInput"]

#: One input of :meth:`Runtime.predict`: a text, or a pair of texts (sentence-pair tasks).
TextInput = str | tuple[str, str]


@dataclass(frozen=True, eq=False)
class Prediction:
    """Results of :meth:`Runtime.predict`, one row per input, in input order.

    ``labels`` int64 [N]: the index of the most probable label (0 for regression);
    ``probabilities`` float32 [N, C]: softmax of the logits (for regression, the raw value, C = 1);
    ``logits`` float32 [N, C]: the logits of the branch or head that answered;
    ``exit_layers`` int32 [N]: the 1-based layer after which each row was answered
    (``num_layers`` for the model's own head); ``classes``: the bundle's label names, id order.
    """

    labels: np.ndarray
    probabilities: np.ndarray
    logits: np.ndarray
    exit_layers: np.ndarray
    classes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def label_names(self) -> list[str]:
        """The predicted label of every row as the bundle's label string."""
        if not self.classes:
            raise ValueError("a regression bundle has no label names; read probabilities[:, 0]")
        return [self.classes[i] for i in self.labels.tolist()]


def _inputs(texts_or_pairs: Any) -> list[Any]:
    """A list the extension takes: str items, or (str, str) tuples."""
    if isinstance(texts_or_pairs, (str, bytes)):
        kind = type(texts_or_pairs).__name__
        raise TypeError(f"expected a list of texts or of (text, text) pairs, not a single {kind}: "
                        "to predict one text, pass [text]")
    if isinstance(texts_or_pairs, np.ndarray):
        if texts_or_pairs.ndim == 1:
            return texts_or_pairs.tolist()
        if texts_or_pairs.ndim == 2 and texts_or_pairs.shape[1] == 2:
            return [tuple(row) for row in texts_or_pairs.tolist()]
        raise ValueError("a numpy array of inputs must have shape [N] (texts) or [N, 2] (pairs), "
                         f"got {list(texts_or_pairs.shape)}")
    if not isinstance(texts_or_pairs, Iterable):
        raise TypeError("expected a list of texts or of (text, text) pairs, got "
                        f"{type(texts_or_pairs).__name__}")
    return list(texts_or_pairs)  # consumes a generator exactly once


def _int_array(value: Any, name: str) -> np.ndarray | None:
    """``value`` as a native-order int64 or int32 (or bool for masks) numpy array."""
    if value is None:
        return None
    array = np.asarray(value)
    if array.dtype.kind not in "iub":
        raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
    if array.dtype not in (np.dtype(np.int64), np.dtype(np.int32)):
        array = array.astype(np.int64)
    return array


class Runtime:
    """A runtime bundle (``tinyfast export``) loaded into the int8 Rust runtime.

    >>> runtime = Runtime.load("bundle", threads=2)           # doctest: +SKIP
    >>> out = runtime.predict(["a fine film", "dull"], speed=0.3)  # doctest: +SKIP
    >>> out.label_names, out.exit_layers                      # doctest: +SKIP
    """

    __slots__ = ("_native",)

    def __init__(self, native: _native.Runtime) -> None:
        """Use :meth:`Runtime.load`."""
        if not isinstance(native, _native.Runtime):
            raise TypeError("use Runtime.load(path) to create a Runtime")
        self._native = native

    @classmethod
    def load(cls, path: str | os.PathLike[str], threads: int = 0,
             kernel: str | None = None) -> Runtime:
        """Load and validate the bundle directory ``path``.

        ``threads``: worker threads of the runtime's own pool (0: one per core). ``kernel``: the
        int8 GEMM, ``"avx512-vnni"``, ``"avx2"`` or ``"portable"``; None takes the environment
        variable ``TINYFAST_KERNEL`` when set, else the fastest this CPU runs (all give the same
        bits). Raises :class:`BundleError` or ``OSError`` naming the file at fault.
        """
        return cls(_native.Runtime.load(os.fspath(path), threads=threads, kernel=kernel))

    def predict(self, texts_or_pairs: Iterable[TextInput] | np.ndarray, speed: float = 0.0,
                batch_size: int = 32) -> Prediction:
        """Classify texts, or (text, text) pairs (all of one kind), with early exit.

        ``speed`` in [0, 1]: a row leaves after the first exit branch whose normalized entropy is
        below ``speed`` (0: every row runs every layer). ``batch_size`` rows run together; the
        results do not depend on it (bit for bit). Inputs are truncated to ``max_length`` tokens.
        """
        out = self._native.predict(_inputs(texts_or_pairs), speed=float(speed),
                                   batch_size=int(batch_size))
        return self._prediction(out)

    def predict_ids(self, input_ids: Any, attention_mask: Any = None, token_type_ids: Any = None,
                    *, lengths: Any = None, speed: float = 0.0, batch_size: int = 32
                    ) -> Prediction:
        """Classify pre-tokenized, right-padded rows (as :meth:`tokenize` or a Hugging Face
        tokenizer gives them, special tokens included).

        ``input_ids`` [N, W]; each row's length from ``attention_mask`` [N, W] (ones, then zeros)
        or ``lengths`` [N] (not both; neither means every row is W tokens long);
        ``token_type_ids`` [N, W] (zeros when None). Values past a row's length are ignored.
        """
        out = self._native.predict_ids(
            _int_array(input_ids, "input_ids"),
            _int_array(attention_mask, "attention_mask"),
            _int_array(token_type_ids, "token_type_ids"),
            lengths=_int_array(lengths, "lengths"),
            speed=float(speed),
            batch_size=int(batch_size),
        )
        return self._prediction(out)

    def masked_lm_top_k(self, input_ids: Any, lengths: Any, positions: Any, k: int, *,
                        token_type_ids: Any = None, allowed: Any = None, batch_size: int = 64
                        ) -> np.ndarray:
        """A ``masked_lm`` bundle's ``k`` best vocabulary ids at masked positions: int64 [M, k],
        best first (-1 where fewer than ``k`` ids are allowed).

        ``input_ids`` [N, W] right-padded rows with their ``lengths`` [N]; ``positions`` [M, 2]
        (row, token) pairs, tokens counted from 0 with the special tokens; ``allowed`` [V] bools
        restricts the ids returned. A position's ids do not depend on the other rows or on
        ``batch_size``."""
        return self._native.masked_lm_top_k(
            _int_array(input_ids, "input_ids"), _int_array(lengths, "lengths"),
            _int_array(positions, "positions"), int(k),
            token_type_ids=_int_array(token_type_ids, "token_type_ids"),
            allowed=None if allowed is None else np.ascontiguousarray(allowed, dtype=bool),
            batch_size=int(batch_size))

    def tokenize(self, texts_or_pairs: Iterable[TextInput] | np.ndarray) -> dict[str, np.ndarray]:
        """Token ids exactly as :meth:`predict` sees them: int64 ``input_ids``,
        ``token_type_ids`` and ``attention_mask`` [N, W] (right-padded with 0 to the longest row)
        and ``lengths`` [N]."""
        return self._native.tokenize(_inputs(texts_or_pairs))

    def _prediction(self, out: dict[str, np.ndarray]) -> Prediction:
        return Prediction(out["labels"], out["probabilities"], out["logits"],
                          out["exit_layers"], tuple(self._native.labels))

    # ---- what the bundle is

    @property
    def labels(self) -> list[str]:
        """Label names in id order (empty for regression)."""
        return self._native.labels

    @property
    def num_outputs(self) -> int:
        """Outputs per row: the number of labels, or 1 for regression."""
        return self._native.num_outputs

    @property
    def num_layers(self) -> int:
        """Encoder layers."""
        return self._native.num_layers

    @property
    def exit_layers(self) -> list[int]:
        """1-based layers after which an early-exit branch runs."""
        return self._native.exit_layers

    @property
    def exits(self) -> list[tuple[int, str]]:
        """(layer, kind) of every exit branch, kind ``"fastbert"`` or ``"linear"``."""
        return self._native.exits

    @property
    def max_length(self) -> int:
        """Tokens per text or pair, special tokens included; longer inputs are truncated."""
        return self._native.max_length

    @property
    def task(self) -> str:
        """``"classification"`` or ``"regression"``."""
        return self._native.task

    @property
    def quantization(self) -> str:
        """``"int8"``, or ``"none"`` for an f32 bundle."""
        return self._native.quantization

    @property
    def kernel(self) -> str:
        """The int8 kernel in use: ``"avx512-vnni"``, ``"avx2"`` or ``"portable"``."""
        return self._native.kernel

    @property
    def threads(self) -> int:
        """Worker threads of the runtime's pool."""
        return self._native.threads

    @property
    def path(self) -> str:
        """The bundle directory."""
        return os.fspath(self._native.path)

    def __repr__(self) -> str:
        return repr(self._native)
