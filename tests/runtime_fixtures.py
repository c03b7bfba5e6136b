"""Tiny BERT classifiers, tokenizers and runtime bundles for the runtime tests (seconds).

The approach of tests/test_export.py: a random 4-layer BERT (hidden 32) with a word-level
WordPiece vocabulary ``w0 .. w54`` (lower-cased, so ``W7`` is ``w7``; anything else is ``[UNK]``),
FastBERT and linear branches with random weights, exported to int8 and f32 bundles. Needs torch
and transformers to build; the bundles then run without them.

A random BERT maps every text to nearly the same [CLS] state, so its head would give one label
to every input and its branches near-uniform outputs. ``calibrate`` rescales and centres every
classifier (the head's and each branch's) on a sample of texts so that its logits have mean 0 and
a spread of about 6 across inputs: labels vary from text to text and the branches' uncertainties
spread over (0, 1), so early exit happens at intermediate speeds.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

VOCAB = 60
HIDDEN, LAYERS, HEADS, FFN, POSITIONS = 32, 4, 4, 64, 128
LABELS = ["neg", "neu", "pos"]
MAX_LENGTH = 24
BRANCH_WIDTH = 16
EXITS = [1, 2, 3]
EXIT_KINDS = ["fastbert", "linear", "fastbert"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [f"w{i}" for i in range(VOCAB - len(SPECIALS))]


def tiny_tokenizer() -> Any:
    from tokenizers import BertWordPieceTokenizer
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    backend = BertWordPieceTokenizer(vocab, lowercase=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend._tokenizer, unk_token="[UNK]", pad_token="[PAD]",
        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def tiny_classifier(seed: int = 0, num_labels: int = len(LABELS)) -> Any:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=FFN, max_position_embeddings=POSITIONS, type_vocab_size=2,
        num_labels=num_labels,
        initializer_range=0.1,  # BERT's 0.02 leaves a random tiny model almost linear
    )
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, 1.0)  # logits of order 1, so errors show
    return model


def tiny_branches(model: Any, seed: int = 3) -> Any:
    from tinyfast.models.branches import random_branches

    return random_branches(model, EXITS, EXIT_KINDS, seed=seed, width=BRANCH_WIDTH)


def _recentre(linear: Any, logits: Any, spread: float) -> None:
    """Make ``linear`` (whose outputs on the calibration inputs were ``logits`` [B, C]) give
    ``spread * (logits - mean) / std`` instead."""
    import torch

    with torch.no_grad():
        mean = logits.mean(dim=0)
        factor = spread / float(logits.std().clamp_min(1e-6))
        linear.weight.mul_(factor)
        linear.bias.copy_((linear.bias - mean) * factor)


def calibrate(model: Any, branches: Any, tokenizer: Any, spread: float = 6.0) -> None:
    """Rescale and centre the head's and every branch's classifier (see the module docstring)."""
    import torch

    texts = random_texts(256, seed=12345)
    enc = tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH,
                    return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
        _recentre(model.classifier, out.logits, spread)
        if branches is None:
            return
        for layer, logits in branches(out.hidden_states, enc["attention_mask"]).items():
            _recentre(branches.branch(layer).classifier, logits, spread)


@dataclass
class TinyBundles:
    model: Any  # the torch BertForSequenceClassification
    tokenizer: Any  # the Hugging Face tokenizer the checkpoint was saved with
    checkpoint: Path
    f32: Path
    int8: Path


def build_bundles(workdir: Path, seed: int = 0) -> TinyBundles:
    """A tinyfast checkpoint with branches beside it, exported as f32 and int8 bundles."""
    from tinyfast.data import Columns, TaskMeta
    from tinyfast.export import export
    from tinyfast.models import save_classifier

    model = tiny_classifier(seed)
    tokenizer = tiny_tokenizer()
    branches = tiny_branches(model)
    calibrate(model, branches, tokenizer)
    checkpoint = workdir / "checkpoint"
    meta = TaskMeta(task="classification", labels=list(LABELS), columns=Columns(),
                    max_length=MAX_LENGTH)
    save_classifier(model, tokenizer, meta, checkpoint)
    branches.save(checkpoint)
    return TinyBundles(
        model=model, tokenizer=tokenizer, checkpoint=checkpoint,
        f32=export(checkpoint, workdir / "bundle-f32", dtype="f32"),
        int8=export(checkpoint, workdir / "bundle-int8", dtype="int8"),
    )


def build_regression_bundle(workdir: Path, seed: int = 1) -> Path:
    """An int8 regression bundle (one output, no exits)."""
    from tinyfast.data import Columns, TaskMeta
    from tinyfast.export import export
    from tinyfast.models import save_classifier

    model = tiny_classifier(seed, num_labels=1)
    calibrate(model, None, tiny_tokenizer())
    checkpoint = workdir / "regression-checkpoint"
    save_classifier(model, tiny_tokenizer(),
                    TaskMeta(task="regression", labels=[], columns=Columns(),
                             max_length=MAX_LENGTH), checkpoint)
    return export(checkpoint, workdir / "bundle-regression", dtype="int8")


def random_texts(n: int, seed: int = 0, max_words: int = 30) -> list[str]:
    """Texts of 0..max_words words (so some are truncated at MAX_LENGTH), with upper case,
    out-of-vocabulary words and punctuation mixed in."""
    rng = random.Random(seed)
    extra = ["W3", "hello", "W12!", "w7,", "unknownword", "?"]
    texts = []
    for _ in range(n):
        k = rng.randint(0, max_words)
        words = [rng.choice(WORDS) if rng.random() < 0.85 else rng.choice(extra)
                 for _ in range(k)]
        texts.append(" ".join(words))
    return texts


def random_pairs(n: int, seed: int = 0, max_words: int = 20) -> list[tuple[str, str]]:
    first = random_texts(n, seed=seed, max_words=max_words)
    second = random_texts(n, seed=seed + 1000, max_words=max_words)
    return list(zip(first, second, strict=True))
