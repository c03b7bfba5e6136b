"""tinyfast.models.early_exit: FastBERT adaptive inference in PyTorch, held against the plain model,
against itself one row at a time, and against the Rust runtime on an f32 bundle."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).parent))
import runtime_fixtures as rf  # noqa: E402
from tinyfast import Runtime  # noqa: E402
from tinyfast.errors import ConfigError  # noqa: E402
from tinyfast.models.branches import Branches, random_branches  # noqa: E402
from tinyfast.models.early_exit import EarlyExitClassifier  # noqa: E402

LOGITS_ATOL = 1e-4  # torch against the runtime's f32 arithmetic
BATCH_ATOL = 1e-5  # batched against one row at a time, both torch
SPEEDS = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]


@dataclass
class Tiny:
    model: Any  # BertForSequenceClassification, calibrated
    branches: Branches
    tokenizer: Any
    checkpoint: Path  # the model, its tokenizer, tinyfast_task.json and the branches
    bundle: Path  # the f32 bundle of the same model and branches


def build_tiny(workdir: Path) -> Tiny:
    """The runtime tests' tiny classifier with FastBERT and linear branches (runtime_fixtures),
    saved as a checkpoint and exported as an f32 bundle."""
    from tinyfast.data import Columns, TaskMeta
    from tinyfast.export import export
    from tinyfast.models import save_classifier

    model = rf.tiny_classifier(0)
    tokenizer = rf.tiny_tokenizer()
    branches = rf.tiny_branches(model)
    rf.calibrate(model, branches, tokenizer)
    checkpoint = workdir / "checkpoint"
    meta = TaskMeta(task="classification", labels=list(rf.LABELS), columns=Columns(),
                    max_length=rf.MAX_LENGTH)
    save_classifier(model, tokenizer, meta, checkpoint)
    branches.save(checkpoint)
    bundle = export(checkpoint, workdir / "bundle-f32", dtype="f32")
    return Tiny(model, branches, tokenizer, checkpoint, bundle)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return build_tiny(tmp_path_factory.mktemp("early-exit"))


@pytest.fixture(scope="module")
def early(tiny: Tiny) -> EarlyExitClassifier:
    return EarlyExitClassifier.load(tiny.checkpoint)


@pytest.fixture(scope="module")
def runtime(tiny: Tiny) -> Runtime:
    return Runtime.load(tiny.bundle, threads=1)


TEXTS = rf.random_texts(120, seed=21)
PAIRS = rf.random_pairs(40, seed=22)


def padded(tokens: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(tokens[k]) for k in ("input_ids", "attention_mask",
                                                      "token_type_ids")}


def run(early: EarlyExitClassifier, batch: dict[str, torch.Tensor], speed: float
        ) -> tuple[np.ndarray, np.ndarray]:
    logits, exits = early(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                          speed=speed)
    assert logits.dtype == torch.float32 and exits.dtype == torch.int32
    return logits.numpy(), exits.numpy()


def uncertainties(early: EarlyExitClassifier, batch: dict[str, torch.Tensor]) -> np.ndarray:
    """[N, exits]: every branch's normalized entropy on the full model's hidden states."""
    from tinyfast.models.branches import normalized_entropy

    with torch.no_grad():
        out = early.model(**batch, output_hidden_states=True)
        per_branch = early.branches(out.hidden_states, batch["attention_mask"])
    return np.stack([normalized_entropy(per_branch[k]).numpy() for k in rf.EXITS], axis=1)


# ------------------------------------------------------------------------------------------------
# Speed 0 and speed 1


def test_speed_zero_is_the_plain_model_and_runs_no_branch(early: EarlyExitClassifier,
                                                          runtime: Runtime) -> None:
    batch = padded(runtime.tokenize(TEXTS))
    calls: list[int] = []
    hooks = [early.branches.branch(k).register_forward_hook(lambda *_: calls.append(1))
             for k in rf.EXITS]
    try:
        logits, exits = run(early, batch, 0.0)
        assert calls == []  # speed 0 never runs a branch
        with torch.no_grad():
            plain = early.model(**batch).logits.numpy()
        np.testing.assert_array_equal(logits, plain)
        assert exits.tolist() == [rf.LAYERS] * len(TEXTS)
        run(early, batch, 0.5)
        assert calls  # and a speed above 0 does
    finally:
        for hook in hooks:
            hook.remove()


def test_speed_one_leaves_at_the_first_branch(early: EarlyExitClassifier,
                                              runtime: Runtime) -> None:
    batch = padded(runtime.tokenize(TEXTS))
    logits, exits = run(early, batch, 1.0)
    assert exits.tolist() == [rf.EXITS[0]] * len(TEXTS)
    with torch.no_grad():
        hidden = early.model(**batch, output_hidden_states=True).hidden_states
        first = early.branches.branch(rf.EXITS[0])(hidden[rf.EXITS[0]], batch["attention_mask"])
    np.testing.assert_allclose(logits, first.numpy(), rtol=0, atol=BATCH_ATOL)


# ------------------------------------------------------------------------------------------------
# Against the Rust runtime


@pytest.mark.parametrize("inputs", [TEXTS, PAIRS], ids=["texts", "pairs"])
def test_exit_layers_and_logits_equal_the_runtime_on_an_f32_bundle(
        early: EarlyExitClassifier, runtime: Runtime, inputs: list[Any]) -> None:
    batch = padded(runtime.tokenize(inputs))
    u = uncertainties(early, batch)
    seen: set[int] = set()
    for speed in SPEEDS:
        logits, exits = run(early, batch, speed)
        expected = runtime.predict(inputs, speed=speed, batch_size=16)
        # A row whose uncertainty sits within float noise of the speed, at a branch it reached,
        # may go either way in two correct engines: leave it out, and check that few are.
        reached = np.array([[k <= e for k in rf.EXITS] for e in expected.exit_layers])
        near = (np.abs(u - speed) < 1e-4) & reached & (speed > 0)
        decided = ~near.any(axis=1)
        assert decided.mean() >= 0.95, (speed, decided.mean())
        np.testing.assert_array_equal(exits[decided], expected.exit_layers[decided])
        np.testing.assert_allclose(logits[decided], expected.logits[decided], rtol=0,
                                   atol=LOGITS_ATOL)
        seen.update(exits.tolist())
    assert {*rf.EXITS[:2], rf.LAYERS} <= seen  # the speeds exercise early exit


# ------------------------------------------------------------------------------------------------
# Batch compaction


def rows_of(tokenizer: Any, texts: list[str]) -> list[dict[str, list[int]]]:
    enc = tokenizer(texts, truncation=True, max_length=rf.MAX_LENGTH,
                    return_token_type_ids=True)
    return [{"input_ids": ids, "token_type_ids": types}
            for ids, types in zip(enc["input_ids"], enc["token_type_ids"], strict=True)]


def test_batched_equals_one_row_at_a_time(early: EarlyExitClassifier, tiny: Tiny) -> None:
    rows = rows_of(tiny.tokenizer, rf.random_texts(60, seed=23))
    lengths = [len(r["input_ids"]) for r in rows]
    assert len(set(lengths)) > 10  # mixed lengths, so batches hold padding
    rng = np.random.default_rng(5)
    seen: set[int] = set()
    for speed in [0.0, 1.0, *rng.uniform(0.05, 0.95, size=4).round(3).tolist()]:
        logits, exits = early.predict(rows, speed, batch_size=7)
        assert logits.shape == (len(rows), len(rf.LABELS)) and exits.shape == (len(rows),)
        for i, row in enumerate(rows):
            one = {k: torch.tensor([row[k]]) for k in ("input_ids", "token_type_ids")}
            one_logits, one_exit = early(one["input_ids"], torch.ones_like(one["input_ids"]),
                                         one["token_type_ids"], speed=speed)
            assert int(exits[i]) == int(one_exit[0]), (speed, i)
            np.testing.assert_allclose(logits[i], one_logits[0].numpy(), rtol=0,
                                       atol=BATCH_ATOL)
        seen.update(exits.tolist())
    assert len(seen) >= 3


def test_rows_that_leave_are_dropped_from_the_next_layers(early: EarlyExitClassifier,
                                                          runtime: Runtime) -> None:
    speed = 0.6
    full = padded(runtime.tokenize(TEXTS))
    _, exits = run(early, full, speed)
    lengths = full["attention_mask"].sum(1).numpy()
    # The longest rows leave after layer 1 and shorter ones stay: the batch must narrow.
    pick = ((exits == rf.EXITS[0]) & (lengths == lengths.max())) | (
        (exits == rf.LAYERS) & (lengths < lengths.max()))
    assert (exits[pick] == rf.EXITS[0]).any() and (exits[pick] == rf.LAYERS).any()
    batch = {k: v[torch.from_numpy(pick)] for k, v in full.items()}
    exits, lengths = exits[pick], lengths[pick]
    shapes: list[tuple[int, int]] = []
    hooks = [layer.register_forward_pre_hook(lambda _m, args: shapes.append(
        tuple(args[0].shape[:2]))) for layer in early.model.bert.encoder.layer]
    try:
        _, again = run(early, batch, speed)
    finally:
        for hook in hooks:
            hook.remove()
    np.testing.assert_array_equal(again, exits)
    layers = range(1, rf.LAYERS + 1)
    assert [rows for rows, _ in shapes] == [int((exits >= layer).sum()) for layer in layers]
    # Columns are cut to the longest row still running.
    widths = [int(lengths[exits >= layer].max()) for layer in layers]
    assert [width for _, width in shapes] == widths
    assert widths[-1] < widths[0]


def test_predict_takes_a_split_and_keeps_input_order(early: EarlyExitClassifier,
                                                     tiny: Tiny) -> None:
    from tinyfast.data import Columns, Example, TaskMeta
    from tinyfast.data.splits import encode_split

    texts = [t for t in rf.random_texts(40, seed=24) if t.strip()]
    examples = [Example(t, None, None, f"x:{i}") for i, t in enumerate(texts)]
    meta = TaskMeta("classification", list(rf.LABELS), Columns(label=None), rf.MAX_LENGTH)
    split = encode_split(tiny.tokenizer, examples, meta, with_labels=False)
    logits, exits = early.predictor(split, batch_size=5)(0.5)
    reverse = list(reversed(rows_of(tiny.tokenizer, texts)))
    back_logits, back_exits = early.predict(reverse, 0.5, batch_size=5)
    np.testing.assert_array_equal(exits, back_exits[::-1])
    np.testing.assert_allclose(logits, back_logits[::-1], rtol=0, atol=BATCH_ATOL)
    assert exits.dtype == np.int32 and logits.dtype == np.float32


# ------------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize("speed", [float("nan"), -0.1, 1.5, float("inf"), "0.5", None])
def test_bad_speeds(early: EarlyExitClassifier, speed: Any) -> None:
    ids = torch.tensor([[2, 7, 3]])
    with pytest.raises(ConfigError, match="speed"):
        early(ids, torch.ones_like(ids), speed=speed)


def test_the_constructor_checks_model_and_branches(tiny: Tiny) -> None:
    model = tiny.model
    cases = [
        (Branches(rf.HIDDEN * 2, len(rf.LABELS), {1: "linear"}), "hidden size"),
        (Branches(rf.HIDDEN, len(rf.LABELS) + 1, {1: "linear"}), "2 labels|4 outputs"),
        (Branches(rf.HIDDEN, len(rf.LABELS), {2: "linear", rf.LAYERS: "linear"}),
         f"after layers \\[{rf.LAYERS}\\]"),
    ]
    for branches, message in cases:
        with pytest.raises(ConfigError, match=message):
            EarlyExitClassifier(model, branches)
    regression = rf.tiny_classifier(1, num_labels=1)
    with pytest.raises(ConfigError, match="regression"):
        EarlyExitClassifier(regression, random_branches(regression, [1], "linear"))
    with pytest.raises(ConfigError, match="BERT sequence classifier"):
        EarlyExitClassifier(torch.nn.Linear(2, 2), tiny.branches)


def test_a_checkpoint_without_branches_says_how_to_get_them(tiny: Tiny, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(tiny.checkpoint, bare)
    for name in ("branches.json", "branches.safetensors"):
        (bare / name).unlink()
    with pytest.raises(ConfigError) as info:
        EarlyExitClassifier.load(bare)
    message = str(info.value)
    assert "\n" not in message
    assert "no early exits" in message and "tinyfast selfdistill" in message


def test_exits_property(early: EarlyExitClassifier) -> None:
    assert early.exits == dict(zip(rf.EXITS, rf.EXIT_KINDS, strict=True))
    assert early.num_layers == rf.LAYERS


def test_a_uniform_branch_never_lets_a_row_leave(tiny: Tiny, runtime: Runtime) -> None:
    """Uncertainty 1 is not < 1: even speed 1 keeps the rows (the rule is strict)."""
    branches = random_branches(tiny.model, [1], "linear")
    with torch.no_grad():
        branches.branch(1).classifier.weight.zero_()
        branches.branch(1).classifier.bias.zero_()
    _, exits = run(EarlyExitClassifier(tiny.model, branches), padded(runtime.tokenize(TEXTS)),
                   1.0)
    assert exits.tolist() == [rf.LAYERS] * len(TEXTS)
