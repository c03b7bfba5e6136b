"""Masked-LM candidates in large batches: every masked word of a chunk of sentences goes through
the model in no-grad batches of similar lengths, the output head runs on the masked positions
alone, and the top-k is taken on the model's device over the ids that may replace a word.

Two masking modes:
- ``word``: one masked word per input, as TinyBERT does;
- ``multi``: several words of a sentence masked in one input, at least ``min_gap`` tokens apart,
  so a sentence needs a few forwards instead of one per word.

Two backends: ``torch`` runs the checkpoint (bf16/fp16 on CUDA); ``int8`` runs a BERT masked LM
through tinyfast's int8 CPU runtime (the checkpoint exported once to a ``masked_lm`` bundle in a
temporary directory: the encoder's linears and the vocabulary decoder in int8, the top-k in Rust).
``auto`` takes ``int8`` on the CPU for BERT checkpoints and ``torch`` otherwise.

Two contexts: ``pair`` is TinyBERT's input ``[CLS] masked sentence [SEP] sentence [SEP]`` (the
model sees the word it replaces, and proposes words close to it, which keeps labels; in ``multi``
every masked word stays visible in the copy, though its candidates still move: README.md,
"tinyfast augment"); ``masked`` is the masked sentence alone (half the tokens, freer
candidates).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tinyfast.errors import ConfigError
from tinyfast.models import load_tokenizer, resolve_model_path
from tinyfast.models.loading import load_config

MODES = ("multi", "word")
CONTEXTS = ("pair", "masked")
DTYPES = ("auto", "float32", "bfloat16", "float16")
BACKENDS = ("auto", "int8", "torch")


@dataclass(frozen=True)
class MaskedLMOptions:
    mode: str = "multi"
    context: str = "pair"
    min_gap: int = 3  # tokens between two words masked in the same input
    batch_tokens: int = 8192  # torch backend: padded tokens per forward
    device: str | None = None  # default: CUDA when available
    dtype: str = "auto"  # torch backend; auto: bfloat16 (or float16) on CUDA, float32 on the CPU
    backend: str = "auto"  # auto: int8 on the CPU for a BERT masked LM, else torch
    threads: int = 0  # int8 backend: runtime threads (0 = one per core)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown masked-LM backend {self.backend!r} (expected "
                              f"{', '.join(BACKENDS)})")
        if self.mode not in MODES:
            raise ConfigError(f"unknown masking mode {self.mode!r} (expected {', '.join(MODES)})")
        if self.context not in CONTEXTS:
            raise ConfigError(f"unknown context {self.context!r} (expected "
                              f"{', '.join(CONTEXTS)})")
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r} (expected {', '.join(DTYPES)})")
        if self.min_gap < 1 or self.batch_tokens < 64:
            raise ConfigError("min_gap must be >= 1 and batch_tokens >= 64")


def load_masked_lm(name_or_path: str) -> tuple[nn.Module, Any]:
    """A masked-LM checkpoint (any architecture transformers has a masked-LM class for) and its
    tokenizer; a checkpoint without a masked-LM head is refused, pointing to fit-mlm-head."""
    import warnings

    from transformers import AutoModelForMaskedLM

    path = resolve_model_path(name_or_path)
    config = load_config(path)
    architectures = getattr(config, "architectures", None) or []
    if not any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in architectures):
        raise ConfigError(f"{path}: not a masked-LM checkpoint (architectures: "
                          f"{', '.join(architectures) or 'none'}); fit one with "
                          "'tinyfast fit-mlm-head'")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = AutoModelForMaskedLM.from_pretrained(path, local_files_only=True,
                                                         trust_remote_code=False)
        except (OSError, ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"{path}: cannot load the masked LM: {first}") from None
    return model.eval(), load_tokenizer(path)


def write_masked_lm_bundle(model: nn.Module, tokenizer: Any, out: str | Path,
                           dtype: str = "int8", max_length: int = 512) -> Path:
    """The ``masked_lm`` bundle (docs/bundle.md) of a BERT masked LM and its fast tokenizer, for
    the int8 runtime's ``masked_lm_top_k``; returns its path."""
    from tinyfast.bundle.writer import runtime_tokenizer, write_masked_lm_arrays

    config = model.config
    if getattr(config, "model_type", None) != "bert" or not hasattr(model, "cls"):
        raise ConfigError(f"the int8 runtime runs BERT masked LMs only, not "
                          f"{getattr(config, 'model_type', type(model).__name__)}")
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError("the int8 runtime needs the masked LM's fast tokenizer "
                          "(tokenizer.json)")

    def numpy(t: torch.Tensor) -> np.ndarray:
        return t.detach().to(torch.float32).cpu().numpy()

    encoder = {k: numpy(v) for k, v in model.state_dict().items() if k.startswith("bert.")}
    transform = model.cls.predictions.transform
    decoder = model.get_output_embeddings()
    head = {"transform.weight": numpy(transform.dense.weight),
            "transform.bias": numpy(transform.dense.bias),
            "norm.weight": numpy(transform.LayerNorm.weight),
            "norm.bias": numpy(transform.LayerNorm.bias),
            "decoder.weight": numpy(decoder.weight), "decoder.bias": numpy(decoder.bias)}
    text = runtime_tokenizer(backend.to_str(), "the masked LM's tokenizer",
                             int(config.vocab_size))
    return write_masked_lm_arrays(encoder, head, config, text, out, dtype=dtype,
                                  max_length=max_length,
                                  source=str(getattr(config, "_name_or_path", "")))


def _output_head(model: nn.Module) -> nn.Module | None:
    """The module that turns hidden states into vocabulary logits, when the architecture has one
    by a known name (BERT: cls, RoBERTa: lm_head, ALBERT: predictions); None runs the whole
    model and reads its logits."""
    for name in ("cls", "lm_head", "predictions"):
        head = getattr(model, name, None)
        if isinstance(head, nn.Module):
            return head
    return None


def _dtype(option: str, device: torch.device) -> torch.dtype | None:
    if option == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[option]


@dataclass
class _Input:
    ids: list[int]
    types: list[int]
    positions: list[int]  # masked positions in ids
    rows: list[int]  # candidate rows they fill


class _Template:
    """Where a tokenizer puts its special tokens around one sentence or a pair, read once from
    the tokenizer's own output, so that inputs are built from token ids without it."""

    def __init__(self, tokenizer: Any, pair: bool) -> None:
        enc = tokenizer("x", "x") if pair else tokenizer("x")
        types = enc.get("token_type_ids") or [0] * len(enc["input_ids"])
        # Runs of (segment or None, special ids, token type).
        self.parts: list[tuple[int | None, list[int], int]] = []
        for token, segment, kind in zip(enc["input_ids"], enc.sequence_ids(), types,
                                        strict=True):
            if self.parts and self.parts[-1][0] == segment and (segment is not None or
                                                                 self.parts[-1][2] == kind):
                if segment is None:
                    self.parts[-1][1].append(token)
                continue
            self.parts.append((segment, [token] if segment is None else [], kind))
        self.offset = sum(len(ids) for seg, ids, _ in self.parts[:1] if seg is None)

    def fill(self, *segments: list[int]) -> tuple[list[int], list[int]]:
        ids: list[int] = []
        types: list[int] = []
        for segment, special, kind in self.parts:
            part = special if segment is None else segments[segment]
            ids += part
            types += [kind] * len(part)
        return ids, types


class MaskedLM:
    """Batched candidates of one masked LM (see the module docs)."""

    def __init__(self, model: nn.Module, tokenizer: Any, allowed: np.ndarray,
                 options: MaskedLMOptions = MaskedLMOptions()) -> None:  # noqa: B008
        self.options = options
        device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available")
        self.device = torch.device(device)
        self.dtype = _dtype(options.dtype, self.device)
        config = model.config
        self.max_length = min(getattr(config, "max_position_embeddings", 512) or 512, 512)
        self.runtime = self._int8_runtime(model, tokenizer, options)
        self.backend = "torch" if self.runtime is None else "int8"
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.head = _output_head(model)
        self.base = model.base_model
        vocab = model.get_output_embeddings().weight.shape[0]
        if len(allowed) > vocab:
            allowed = allowed[:vocab]
        penalty = np.full(vocab, -np.inf, dtype=np.float32)
        penalty[: len(allowed)][allowed] = 0.0
        self.penalty = torch.from_numpy(penalty).to(self.device)
        self.allowed = penalty == 0.0
        self.two_segments = (getattr(config, "type_vocab_size", 2) or 1) >= 2
        self.mask_id = tokenizer.mask_token_id
        if self.mask_id is None:
            raise ConfigError("the masked LM's tokenizer has no mask token")
        self.pad_id = tokenizer.pad_token_id or 0
        self.single_template = _Template(tokenizer, pair=False)
        self.pair_template = _Template(tokenizer, pair=True)
        # Where the first sentence's tokens start in a built input (1, after BERT's [CLS]).
        self.offset = self.single_template.offset
        self.forwards = 0

    def _int8_runtime(self, model: nn.Module, tokenizer: Any, options: MaskedLMOptions
                      ) -> Any:
        """The int8 runtime of the masked LM when the backend asks for it, else None."""
        bert = getattr(model.config, "model_type", None) == "bert" and hasattr(model, "cls")
        backend = options.backend
        if backend == "auto":
            backend = "int8" if self.device.type == "cpu" and bert else "torch"
        if backend == "torch":
            return None
        if self.device.type != "cpu":
            raise ConfigError("the int8 masked-LM backend runs on the CPU; use --mlm-backend "
                              "torch with --device cuda")
        import tempfile

        from tinyfast import Runtime

        # The bundle lives only while it loads: the runtime holds every weight in memory.
        with tempfile.TemporaryDirectory(prefix="tinyfast-mlm-") as tmp:
            bundle = write_masked_lm_bundle(model, tokenizer, Path(tmp) / "bundle",
                                            max_length=self.max_length)
            return Runtime.load(bundle, threads=options.threads)

    # -- inputs ---------------------------------------------------------------------------------

    def _groups(self, tokens: list[int]) -> list[list[int]]:
        """Which masked words (by index into ``tokens``, token positions in text order) share an
        input."""
        if self.options.mode == "word":
            return [[i] for i in range(len(tokens))]
        groups: list[list[int]] = []
        last: list[int] = []
        for i, t in enumerate(tokens):
            for g, end in enumerate(last):
                if t - end >= self.options.min_gap:
                    groups[g].append(i)
                    last[g] = t
                    break
            else:
                groups.append([i])
                last.append(t)
        return groups

    def _build(self, pieces: list[int], masked: list[int], rows: list[int]) -> _Input | None:
        """The model input masking ``pieces[masked]``, in the chosen context (``pair`` falls back
        to ``masked`` when the pair is longer than the model takes)."""
        masked_ids = list(pieces)
        for m in masked:
            masked_ids[m] = self.mask_id
        built = None
        if self.options.context == "pair":
            built = self.pair_template.fill(masked_ids, pieces)
            if len(built[0]) > self.max_length:
                built = None
        ids, types = built or self.single_template.fill(masked_ids)
        offset = self.offset
        keep = [(m + offset, r) for m, r in zip(masked, rows, strict=True)
                if m + offset < self.max_length - 1]
        if not keep:
            return None
        ids = ids[: self.max_length]
        types = types[: self.max_length] if self.two_segments else [0] * len(ids)
        return _Input(ids, types, [p for p, _ in keep], [r for _, r in keep])

    # -- candidates -----------------------------------------------------------------------------

    def candidates(self, tokens: list[list[str]], sentence: np.ndarray, token: np.ndarray,
                   width: int) -> np.ndarray:
        """int64 [M, width]: for masked word ``m`` (token ``token[m]`` of sentence
        ``sentence[m]``), the best ``width`` allowed ids, best first; -1 where there are none."""
        out = np.full((len(sentence), width), -1, dtype=np.int64)
        if len(sentence) == 0:
            return out
        by_sentence: dict[int, list[tuple[int, int]]] = {}
        for row, (s, t) in enumerate(zip(sentence.tolist(), token.tolist(), strict=True)):
            by_sentence.setdefault(s, []).append((t, row))
        order = sorted(by_sentence)
        enc = self.tokenizer([tokens[s] for s in order], is_split_into_words=True,
                             add_special_tokens=False)
        inputs: list[_Input] = []
        for j, s in enumerate(order):
            pieces = enc["input_ids"][j]
            first: dict[int, int] = {}
            count: dict[int, int] = {}
            for position, word in enumerate(enc.word_ids(j)):
                if word is not None:
                    first.setdefault(word, position)
                    count[word] = count.get(word, 0) + 1
            # A word the tokenizer splits after all gets no masked-LM candidates (kept as is).
            wanted = [(first[t], row) for t, row in by_sentence[s] if count.get(t) == 1]
            positions = [p for p, _ in wanted]
            for group in self._groups(positions):
                built = self._build(pieces, [positions[g] for g in group],
                                    [wanted[g][1] for g in group])
                if built is not None:
                    inputs.append(built)
        self._run(inputs, out, width)
        return out

    def _run(self, inputs: list[_Input], out: np.ndarray, width: int) -> None:
        inputs.sort(key=lambda x: len(x.ids))
        if self.runtime is not None:
            # The runtime packs sequences without padding and sizes its own chunks.
            if inputs:
                self._int8_forward(inputs, out, width)
            return
        start = 0
        while start < len(inputs):
            longest = len(inputs[start].ids)
            end = start + 1
            while end < len(inputs):
                longest = len(inputs[end].ids)
                if longest * (end + 1 - start) > self.options.batch_tokens:
                    break
                end += 1
            self._torch_forward(inputs[start:end], out, width)
            start = end

    def _int8_forward(self, batch: list[_Input], out: np.ndarray, width: int) -> None:
        width_tokens = max(len(x.ids) for x in batch)
        n = len(batch)
        ids = np.full((n, width_tokens), self.pad_id, dtype=np.int64)
        types = np.zeros((n, width_tokens), dtype=np.int64)
        lengths = np.zeros(n, dtype=np.int64)
        at, rows = [], []
        for i, x in enumerate(batch):
            ids[i, : len(x.ids)] = x.ids
            types[i, : len(x.types)] = x.types
            lengths[i] = len(x.ids)
            at += [(i, p) for p in x.positions]
            rows += x.rows
        k = min(width, len(self.allowed))
        found = self.runtime.masked_lm_top_k(
            ids, lengths, np.asarray(at, dtype=np.int64).reshape(-1, 2), k,
            token_type_ids=types, allowed=self.allowed, batch_size=n)  # chunked by tokens
        out[np.asarray(rows), :k] = found
        self.forwards += n

    @torch.inference_mode()
    def _torch_forward(self, batch: list[_Input], out: np.ndarray, width: int) -> None:
        width_tokens = max(len(x.ids) for x in batch)
        n = len(batch)
        ids = torch.full((n, width_tokens), self.pad_id, dtype=torch.long)
        types = torch.zeros((n, width_tokens), dtype=torch.long)
        mask = torch.zeros((n, width_tokens), dtype=torch.long)
        which, where, rows = [], [], []
        for i, x in enumerate(batch):
            ids[i, : len(x.ids)] = torch.tensor(x.ids)
            types[i, : len(x.types)] = torch.tensor(x.types)
            mask[i, : len(x.ids)] = 1
            which += [i] * len(x.positions)
            where += x.positions
            rows += x.rows
        ids, types, mask = (t.to(self.device) for t in (ids, types, mask))
        extra = {"token_type_ids": types} if self.two_segments else {}
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            if self.head is not None:
                hidden = self.base(input_ids=ids, attention_mask=mask, **extra).last_hidden_state
                logits = self.head(hidden[which, where])
            else:
                logits = self.model(input_ids=ids, attention_mask=mask, **extra).logits
                logits = logits[which, where]
        logits = logits.float() + self.penalty
        k = min(width, logits.shape[-1])
        top = logits.topk(k, dim=-1)
        found = torch.where(torch.isfinite(top.values), top.indices, -1).cpu().numpy()
        out[np.asarray(rows), :k] = found
        self.forwards += n

