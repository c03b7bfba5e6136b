"""The int8 runtime's masked-LM path: ``masked_lm`` bundles, their top-k against the numpy
reference and torch, batching independence, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

K = 6


@pytest.fixture(scope="module")
def masked_lm(tiny_teacher_dir: Path):
    """A random BERT masked LM on the tiny teacher's vocabulary, and its fast tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    config = BertConfig.from_pretrained(tiny_teacher_dir)
    torch.manual_seed(1)
    model = BertForMaskedLM(config).eval()
    with torch.no_grad():  # a non-zero decoder bias, so that its export is checked too
        model.cls.predictions.bias.normal_(0, 0.5)
    return model, AutoTokenizer.from_pretrained(tiny_teacher_dir)


@pytest.fixture(scope="module", params=["int8", "f32"])
def bundle(request, masked_lm, tmp_path_factory) -> Path:
    from tinyfast.augment.masked_lm import write_masked_lm_bundle

    model, tokenizer = masked_lm
    out = tmp_path_factory.mktemp("mlm") / request.param
    return write_masked_lm_bundle(model, tokenizer, out, dtype=request.param, max_length=64)


def inputs(tokenizer, texts: list[str], mask_every: int = 3):
    """Right-padded ids, lengths and (row, token) positions of masked tokens."""
    enc = tokenizer(texts)
    width = max(len(ids) for ids in enc["input_ids"])
    ids = np.zeros((len(texts), width), dtype=np.int64)
    lengths = np.array([len(x) for x in enc["input_ids"]], dtype=np.int64)
    positions = []
    for r, row in enumerate(enc["input_ids"]):
        row = list(row)
        for t in range(1 + r % mask_every, len(row) - 1, mask_every):
            row[t] = tokenizer.mask_token_id
            positions.append((r, t))
        ids[r, : len(row)] = row
    return ids, lengths, np.array(positions, dtype=np.int64)


TEXTS = ["the director's work was not dull, i have to say.", "a fine film", "dull",
         "the story is a delight and the cast is great fun to watch"]


def assert_top_k(found: np.ndarray, logits: np.ndarray, allowed: np.ndarray | None,
                 atol: float) -> None:
    """``found`` holds the k best allowed ids of ``logits`` (up to ties within ``atol``)."""
    for ids, row in zip(found, logits, strict=True):
        scores = np.where(allowed, row, -np.inf) if allowed is not None else row
        best = np.sort(scores)[::-1][: len(ids)]
        np.testing.assert_allclose(scores[ids], best, atol=atol)
        assert len(set(ids.tolist())) == len(ids)


def test_top_k_matches_the_numpy_reference(bundle, masked_lm):
    from tinyfast import Runtime
    from tinyfast.bundle.reference import ReferenceModel

    _, tokenizer = masked_lm
    ids, lengths, positions = inputs(tokenizer, TEXTS)
    mask = (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
    runtime = Runtime.load(bundle, threads=1)
    assert runtime.task == "masked_lm"
    found = runtime.masked_lm_top_k(ids, lengths, positions, K)
    reference = ReferenceModel.load(bundle).masked_lm_logits(ids, positions, attention_mask=mask)
    assert found.shape == (len(positions), K) and found.dtype == np.int64
    assert_top_k(found, reference, None, atol=1e-3)


def test_f32_bundle_matches_torch_and_allowed_ids_are_respected(masked_lm, tmp_path):
    import torch

    from tinyfast import Runtime
    from tinyfast.augment.masked_lm import write_masked_lm_bundle

    model, tokenizer = masked_lm
    runtime = Runtime.load(write_masked_lm_bundle(model, tokenizer, tmp_path / "b", dtype="f32",
                                                  max_length=64))
    ids, lengths, positions = inputs(tokenizer, TEXTS)
    mask = (np.arange(ids.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(ids),
                       attention_mask=torch.from_numpy(mask)).logits.numpy()
    at = logits[positions[:, 0], positions[:, 1]]
    vocab = at.shape[1]
    allowed = np.random.default_rng(0).random(vocab) < 0.3
    found = runtime.masked_lm_top_k(ids, lengths, positions, K, allowed=allowed)
    assert allowed[found].all()
    assert_top_k(found, at, allowed, atol=1e-4)
    # Fewer allowed ids than k: the list ends with -1.
    few = np.zeros(vocab, dtype=bool)
    few[[3, 5]] = True
    short = runtime.masked_lm_top_k(ids, lengths, positions, 4, allowed=few)
    assert (short[:, 2:] == -1).all() and set(short[:, :2].ravel().tolist()) <= {3, 5}


def test_allowed_ids_are_the_full_ranking_filtered(bundle, masked_lm):
    """With ``allowed``, the ids are the whole vocabulary's ranking with the other ids taken out:
    the int8 runtime then runs a decoder cut down to the allowed ids, whose logits must be the
    full decoder's bit for bit. Masks that change between calls (and all-allowed or none-allowed,
    which cut nothing) must each give their own ranking."""
    from tinyfast import Runtime

    _, tokenizer = masked_lm
    ids, lengths, positions = inputs(tokenizer, TEXTS)
    runtime = Runtime.load(bundle, threads=2)
    vocab = json.loads((bundle / "tinyfast.json").read_text())["architecture"]["vocab_size"]
    ranking = runtime.masked_lm_top_k(ids, lengths, positions, vocab)
    rng = np.random.default_rng(3)
    masks = [rng.random(vocab) < 0.6, np.ones(vocab, dtype=bool), rng.random(vocab) < 0.2,
             np.zeros(vocab, dtype=bool)]
    for allowed in [*masks, masks[0]]:
        found = runtime.masked_lm_top_k(ids, lengths, positions, K, allowed=allowed)
        for row, full in zip(found, ranking, strict=True):
            assert row.tolist() == ([i for i in full if allowed[i]] + [-1] * K)[:K]


def test_results_do_not_depend_on_batching_order_or_threads(bundle, masked_lm):
    from tinyfast import Runtime

    _, tokenizer = masked_lm
    ids, lengths, positions = inputs(tokenizer, TEXTS * 3, mask_every=2)
    whole = Runtime.load(bundle, threads=2).masked_lm_top_k(ids, lengths, positions, K,
                                                              batch_size=64)
    one = Runtime.load(bundle, threads=1)
    assert np.array_equal(one.masked_lm_top_k(ids, lengths, positions, K, batch_size=1), whole)
    order = np.random.default_rng(2).permutation(len(positions))
    shuffled = one.masked_lm_top_k(ids, lengths, positions[order], K, batch_size=5)
    assert np.array_equal(shuffled, whole[order])
    # Rows without a chosen position are skipped, and change nothing.
    some = positions[:, 0] % 3 == 0
    assert np.array_equal(one.masked_lm_top_k(ids, lengths, positions[some], K), whole[some])


def test_bad_calls_and_bundles_are_one_line_errors(bundle, masked_lm, tmp_path):
    from tinyfast import BundleError, Runtime

    _, tokenizer = masked_lm
    runtime = Runtime.load(bundle)
    ids, lengths, positions = inputs(tokenizer, TEXTS)
    cases = [
        (dict(positions=np.array([[9, 1]])), "row 9 does not exist"),
        (dict(positions=np.array([[2, 3]])), "outside row 2"),
        (dict(positions=np.array([[0, -1]])), "count from 0"),
        (dict(positions=np.array([1, 2])), "2-dimensional"),
        (dict(k=0), "k must be at least 1"),
        (dict(allowed=np.ones(7, dtype=bool)), "allowed has 7 entries"),
    ]
    for change, message in cases:
        args = dict(input_ids=ids, lengths=lengths, positions=positions, k=K) | change
        with pytest.raises((ValueError, TypeError)) as err:
            runtime.masked_lm_top_k(args["input_ids"], args["lengths"], args["positions"],
                                    args["k"], allowed=args.get("allowed"))
        assert message in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="masked_lm bundle"):
        runtime.predict(["a fine film"])

    # Contract violations in tinyfast.json.
    for edit, message in [({"labels": ["a", "b"]}, "labels"),
                          ({"exits": [{"layer": 1, "kind": "linear"}]}, "exits")]:
        broken = tmp_path / f"broken-{message}"
        broken.mkdir()
        for f in bundle.iterdir():
            (broken / f.name).write_bytes(f.read_bytes())
        config = json.loads((broken / "tinyfast.json").read_text()) | edit
        (broken / "tinyfast.json").write_text(json.dumps(config))
        with pytest.raises(BundleError, match=message) as err:
            Runtime.load(broken)
        assert "\n" not in str(err.value)


def test_a_classifier_bundle_gives_no_candidates(tmp_path):
    from runtime_fixtures import build_regression_bundle
    from tinyfast import Runtime

    runtime = Runtime.load(build_regression_bundle(tmp_path))
    with pytest.raises(ValueError, match="masked_lm bundle"):
        runtime.masked_lm_top_k(np.array([[1, 2, 3]]), np.array([3]), np.array([[0, 1]]), 2)
