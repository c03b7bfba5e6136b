"""Shared fixtures of the pipeline and CLI tests: the demo task, a tiny random BERT teacher with a
word-level tokenizer that knows every word of that task, and small students (all in seconds)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

TEACHER_SHAPE = {
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}
STUDENT_SHAPE = {"layers": 2, "hidden": 16, "heads": 4, "ffn": 32}
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PUNCTUATION = list(".,'!?;:-\"()")
MAX_LENGTH = 32


def demo_words() -> list[str]:
    """Every word and punctuation mark the demo generator can write, in a stable order."""
    from tinyfast.pipeline import demo

    phrases = [*demo._SUBJECTS, *demo._POSITIVE, *demo._NEGATIVE, *demo._LINKS, *demo._ADVERBS,
               *demo._TAILS]
    # Negation rewrites the links (see demo._sentence).
    phrases += ["is not", "was not", "did not feel", "did not seem", "did not turn out to be"]
    words: set[str] = set()
    for phrase in phrases:
        words.update(re.findall(r"\w+|[^\w\s]", phrase.lower()))
    return sorted(words)


def build_tokenizer(words: list[str]):
    import tokenizers
    import transformers

    vocab: dict[str, int] = {}
    for token in [*SPECIALS, *words, *PUNCTUATION]:
        vocab.setdefault(token, len(vocab))
    wordpiece = tokenizers.BertWordPieceTokenizer(vocab, lowercase=True)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=wordpiece, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]")


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a busy 2-core machine, torch's spinning worker threads make these
    tiny models ten times slower, not faster."""
    try:
        import torch
    except ModuleNotFoundError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tinyfast.pipeline.demo import write_demo_data

    return write_demo_data(tmp_path_factory.mktemp("demo-data"), train_rows=96, dev_rows=48,
                           corpus_rows=128)


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 4-layer BERT encoder (no classifier head) with its tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = build_tokenizer(demo_words())
    ids = tokenizer("the director's work was not dull, i have to say.")["input_ids"]
    unk = tokenizer.unk_token_id
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert unk not in ids, "the test tokenizer must know every demo word"

    config = BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                        type_vocab_size=2, **TEACHER_SHAPE)
    torch.manual_seed(0)
    model = BertModel(config).eval()
    path = tmp_path_factory.mktemp("tiny-teacher")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_student_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("student") / "student.json"
    path.write_text(json.dumps(STUDENT_SHAPE), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def max_length() -> int:
    """Token budget of every tiny run (the teacher has 64 positions)."""
    return MAX_LENGTH


@pytest.fixture(scope="session")
def student_shape(tiny_student_json: Path) -> dict[str, int]:
    return json.loads(tiny_student_json.read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def make_config() -> Callable[..., Any]:
    """TrainConfig for tiny runs: CPU, small batches, no progress bar, no mid-epoch saves."""
    from tinyfast.train import TrainConfig

    def make(**overrides: Any) -> TrainConfig:
        fields: dict[str, Any] = dict(epochs=1, lr=1e-3, batch_size=16, warmup=0.0,
                                      save_every=0, log_every=1, progress=False, device="cpu")
        fields.update(overrides)
        return TrainConfig(**fields)

    return make


@pytest.fixture(scope="session")
def finetuned_teacher(tmp_path_factory: pytest.TempPathFactory, tiny_teacher_dir: Path,
                      demo_data: dict[str, Path], make_config) -> tuple[Path, dict[str, Any]]:
    """The tiny teacher fine-tuned on the demo task: (run directory, summary)."""
    import torch

    from tinyfast.finetune import finetune

    out = tmp_path_factory.mktemp("teacher-run")
    torch.manual_seed(1)  # the new classifier head starts at random
    summary = finetune(str(tiny_teacher_dir), demo_data["train"], demo_data["dev"], out,
                       max_length=MAX_LENGTH, config=make_config(epochs=2))
    return out, summary


@pytest.fixture(scope="session")
def general_student(tmp_path_factory: pytest.TempPathFactory, tiny_teacher_dir: Path,
                    demo_data: dict[str, Path], tiny_student_json: Path,
                    make_config) -> tuple[Path, dict[str, Any]]:
    """General distillation of the tiny teacher into the JSON student: (run directory, summary)."""
    import torch

    from tinyfast.distill import distill_general

    out = tmp_path_factory.mktemp("general-run")
    torch.manual_seed(2)
    summary = distill_general(str(tiny_teacher_dir), demo_data["corpus"], out,
                              student=str(tiny_student_json), max_length=MAX_LENGTH,
                              heldout=0.25, config=make_config(epochs=3, eval_every=3))
    return out, summary
