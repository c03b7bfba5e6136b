"""TinyBERT augmentation: the Rust neighbour search against numpy, the word rules, the sampler's
statistics, pairs, thread-count determinism, resuming, located errors on bad files, and the
masked-LM head fitted on a tiny encoder (all on tiny models, in seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tinyfast import _native
from tinyfast.errors import ConfigError, DataError

WORDS = ["good", "great", "fine", "bad", "awful", "film", "movie", "picture", "story", "plot"]


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# -- neighbour search ---------------------------------------------------------------------------

def test_nearest_matches_numpy_brute_force():
    rng = np.random.default_rng(0)
    n, dim, k = 3000, 37, 9  # 37: not a multiple of the kernel's lanes
    values = rng.standard_normal((n, dim)).astype(np.float32)
    words = [f"w{chr(97 + i % 26)}{'x' * (i // 26)}" for i in range(n)]
    vectors = _native.WordVectors.from_arrays(words, values)
    queries = rng.standard_normal((20, dim)).astype(np.float32)
    exclude = np.array([i if i % 3 == 0 else -1 for i in range(20)], dtype=np.int64)
    rows, scores = vectors.nearest(queries, k, exclude=exclude, threads=1)

    sims = unit(queries.astype(np.float64)) @ unit(values.astype(np.float64)).T
    for q in range(20):
        if exclude[q] >= 0:
            sims[q, exclude[q]] = -np.inf
        want = np.argsort(-sims[q], kind="stable")[:k]
        assert rows[q].tolist() == want.tolist()
        np.testing.assert_allclose(scores[q], sims[q, want], atol=1e-5)

    # Every kernel this CPU runs and every pool size give the same bits.
    kernels = []
    for kernel in ("avx512", "avx2", "portable"):
        try:
            vectors.nearest(queries[:1], 1, kernel=kernel)
        except ValueError as e:
            assert "not available here" in str(e)
            continue
        kernels.append(kernel)
    assert "portable" in kernels
    for kernel in kernels:
        for threads in (1, 2):
            r, s = vectors.nearest(queries, k, exclude=exclude, threads=threads, kernel=kernel)
            assert np.array_equal(r, rows)
            assert np.array_equal(s.view(np.uint32), scores.view(np.uint32))


def test_nearest_checks_its_arguments():
    vectors = _native.WordVectors.from_arrays(["a", "b"], np.eye(2, dtype=np.float32))
    with pytest.raises(ValueError, match="dimensions"):
        vectors.nearest(np.zeros((1, 3), np.float32), 1)
    with pytest.raises(ValueError, match="not finite"):
        vectors.nearest(np.full((1, 2), np.nan, np.float32), 1)
    rows, _ = vectors.nearest(np.eye(2, dtype=np.float32), 5)
    assert rows[0].tolist() == [0, 1, -1, -1, -1]


# -- word rules and sampling --------------------------------------------------------------------

def word_vectors() -> object:
    rng = np.random.default_rng(1)
    return _native.WordVectors.from_arrays(WORDS, rng.standard_normal((len(WORDS), 8)).astype(
        np.float32))


def test_stop_words_and_word_pieces_choose_the_source():
    lexicon = ["", "the", "film", "good", "was", ""]  # what the masked LM writes as one piece
    aug = _native.Augmenter(2, 0.5, 3, 7, mlm_words=lexicon, vectors=word_vectors())
    plan = aug.plan(["The film was good , not filmic !", "42 , the ."])
    # "The", "was", "not" are stop words; "42" and punctuation are not alphabetic.
    assert plan.tokens()[0] == ["The", "film", "was", "good", ",", "not", "filmic", "!"]
    sentence, token = plan.masked_words()
    assert sentence.tolist() == [0, 0] and token.tolist() == [1, 3]  # film, good: one piece
    assert plan.counts() == (2, 1)  # filmic: several pieces -> vectors
    assert aug.missing_words(plan) == ["filmic"]  # not in the vectors either
    mask = aug.candidate_mask()
    assert mask.tolist() == [False, False, True, True, False, False]  # no stop words


def test_sampler_statistics():
    text = "good film , great plot"
    for p, expect_all_changed in ((1.0, True), (0.3, False)):
        aug = _native.Augmenter(20, p, 3, 11, vectors=word_vectors())
        plan = aug.plan([text])
        (variants,) = aug.variants(plan, [0])
        assert len(variants) == 20 and len(set(variants)) == 20 and text not in variants
        words = text.split()
        changed = [sum(a != b for a, b in zip(v.split(), words, strict=True)) for v in variants]
        assert all(" , " in v for v in variants)
        if expect_all_changed:
            assert all(c == 4 for c in changed)
        else:
            assert min(changed) >= 1 and max(changed) <= 4
    none = _native.Augmenter(20, 0.0, 3, 11, vectors=word_vectors())
    assert none.variants(none.plan([text]), [0]) == [[]]


def test_replacement_rate_over_many_sentences():
    aug = _native.Augmenter(1, 0.4, 3, 5, vectors=word_vectors())
    texts = ["film story plot movie picture"] * 4000
    plan = aug.plan(texts)
    variants = aug.variants(plan, list(range(len(texts))))
    changed = sum(a != b for v in variants for a, b in zip(v[0].split(), texts[0].split(),
                                                            strict=True))
    # Draws that change nothing are redrawn, so the rate is p conditioned on "something".
    expected = 0.4 / (1 - 0.6**5)
    assert abs(changed / (5 * len(texts)) - expected) < 0.015


def test_case_follows_the_replaced_word():
    aug = _native.Augmenter(5, 1.0, 2, 3, vectors=word_vectors())
    (variants,) = aug.variants(aug.plan(["Good FILM"]), [0])
    for v in variants:
        first, second = v.split()
        assert first[0].isupper() and first[1:].islower() and second.isupper()


# -- whole runs ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory, tiny_teacher_dir: Path) -> Path:
    """A random masked LM on the tiny teacher's vocabulary (candidates are random, but fixed)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    config = BertConfig.from_pretrained(tiny_teacher_dir)
    torch.manual_seed(0)
    model = BertForMaskedLM(config)
    path = tmp_path_factory.mktemp("tiny-mlm")
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_teacher_dir).save_pretrained(path)
    return path


def run_augment(demo_data, out: Path, **kw):
    from tinyfast.augment import AugmentOptions, augment

    options = AugmentOptions(**{"n": 4, "k": 5, "seed": 3, "chunk_rows": 7,
                                **kw.pop("options", {})})
    return augment(demo_data["train"], out, options=options, progress=False, **kw)


def test_same_seed_same_bytes_on_one_or_two_threads(demo_data, tiny_mlm, tmp_path):
    from tinyfast.augment import MaskedLMOptions

    outs = []
    for threads in (1, 2):  # the Rust sampler's threads and the int8 masked LM's
        out = tmp_path / f"t{threads}.tsv"
        summary = run_augment(demo_data, out, mlm=str(tiny_mlm), options={"threads": threads},
                              mlm_options=MaskedLMOptions(threads=threads))
        assert summary["masked_lm_words"] > 0 and summary["rows"] == 96
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    lines = outs[0].decode().splitlines()
    assert lines[0] == "sentence\tlabel\tsource_line"
    source = open(demo_data["train"], encoding="utf-8").read().splitlines()
    for line in lines[1:]:
        sentence, label, where = line.split("\t")
        assert source[int(where) - 1].split("\t")[1] == label  # the source row's label
    other = tmp_path / "seed.tsv"
    run_augment(demo_data, other, mlm=str(tiny_mlm), options={"seed": 4})
    assert other.read_bytes() != outs[0]


def test_word_and_multi_masking_both_work(demo_data, tiny_mlm, tmp_path):
    from tinyfast.augment import MaskedLMOptions

    forwards = {}
    for mode in ("word", "multi"):
        summary = run_augment(demo_data, tmp_path / f"{mode}.tsv", mlm=str(tiny_mlm),
                              mlm_options=MaskedLMOptions(mode=mode, context="masked"))
        forwards[mode] = summary["masked_lm_forwards"]
    assert forwards["multi"] < forwards["word"]


def test_int8_and_torch_backends_propose_the_same_words(demo_data, tiny_mlm, tmp_path):
    """The int8 runtime is the CPU default; its candidates are the torch model's up to int8
    rounding (a float32 bundle would match exactly; tests/test_masked_lm_runtime.py)."""
    from tinyfast.augment import MaskedLMOptions
    from tinyfast.augment.masked_lm import MaskedLM, load_masked_lm

    model, tokenizer = load_masked_lm(str(tiny_mlm))
    vocab = model.config.vocab_size
    allowed = np.ones(vocab, dtype=bool)
    tokens = [["the", "film", "was", "dull"], ["a", "fine", "cast"]]
    sentence, token = np.array([0, 0, 1]), np.array([1, 3, 1])
    found = {backend: MaskedLM(model, tokenizer, allowed, MaskedLMOptions(
                 mode="word", backend=backend, threads=1)).candidates(tokens, sentence, token, 5)
             for backend in ("int8", "torch")}
    assert found["int8"].shape == found["torch"].shape == (3, 5)
    overlap = np.mean([len(set(a) & set(b)) / 5
                       for a, b in zip(found["int8"], found["torch"], strict=True)])
    assert overlap >= 0.6, found
    with pytest.raises(ConfigError, match="unknown masked-LM backend"):
        MaskedLMOptions(backend="onnx")


def test_pairs_vary_one_side_at_a_time(tmp_path, tiny_teacher_dir):
    from tinyfast.augment import AugmentOptions, augment
    from tinyfast.data import Columns

    data = tmp_path / "pairs.jsonl"
    rows = [{"a": "the acting felt truly brilliant", "b": "the plot was clumsy", "y": 1, "id": 9}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    augment(data, out, columns=Columns("a", "b", "y"), options=AugmentOptions(n=3, k=4),
            teacher=str(tiny_teacher_dir), progress=False)
    got = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert got[0] == {**rows[0], "source_line": 1}
    a_side = [g for g in got[1:] if g["b"] == rows[0]["b"]]
    b_side = [g for g in got[1:] if g["a"] == rows[0]["a"]]
    assert len(a_side) == 3 and len(b_side) == 3 and len(got) == 7
    assert all(g["y"] == 1 and g["id"] == 9 and g["source_line"] == 1 for g in got)


def test_a_killed_run_resumes_to_the_same_bytes(demo_data, tiny_teacher_dir, tmp_path,
                                               monkeypatch):
    from tinyfast.augment import run as run_module

    whole = tmp_path / "whole.tsv"
    run_augment(demo_data, whole, teacher=str(tiny_teacher_dir))

    out = tmp_path / "out.tsv"
    real, calls = run_module._chunk, []

    def dying(*args, **kw):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(run_module, "_chunk", dying)
    with pytest.raises(KeyboardInterrupt):
        run_augment(demo_data, out, teacher=str(tiny_teacher_dir))
    monkeypatch.setattr(run_module, "_chunk", real)
    assert not out.exists() and (tmp_path / "out.tsv.partial").exists()
    summary = run_augment(demo_data, out, teacher=str(tiny_teacher_dir), resume=True)
    assert summary["resumed_after_rows"] == 21
    assert out.read_bytes() == whole.read_bytes()
    assert not (tmp_path / "out.tsv.partial").exists()
    with pytest.raises(ConfigError, match="exists"):
        run_augment(demo_data, out, teacher=str(tiny_teacher_dir))


# -- bad files ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "line", "problem"), [
    ("good 1 0\nbad 1\n", 2, "1 values"),
    ("good 1 0\nbad 1 zero\n", 2, "not a number"),
    ("", None, "no word vectors"),
    ("good 1 0\ngood 0 1\n", 2, "appears twice"),
    ("good 1 inf\n", 1, "not finite"),
])
def test_bad_vector_files_are_located(tmp_path, text, line, problem):
    from tinyfast.augment.word_vectors import load_vectors

    path = tmp_path / "v.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=problem) as err:
        load_vectors(path)
    assert err.value.where == (f"{path}:{line}" if line else str(path))
    assert "\n" not in str(err.value)


def test_vector_index_is_saved_and_reused(tmp_path):
    from tinyfast.augment.word_vectors import load_vectors

    path = tmp_path / "v.txt"
    path.write_text("good 1 0\nfine 1 0.1\nbad -1 0\n", encoding="utf-8")
    assert load_vectors(path).loaded == "built-and-saved"
    again = load_vectors(path)
    assert again.loaded == "cached" and len(again) == 3
    rows, _ = again.nearest(np.array([[1, 0]], np.float32), 1, exclude=np.array([0]))
    assert again.word(int(rows[0, 0])) == "fine"


@pytest.mark.parametrize(("name", "text", "where", "problem"), [
    ("r.tsv", "sentence\tlabel\nfine film\t1\nragged\n", 3, "1 fields"),
    ("e.tsv", "sentence\tlabel\n \t1\n", 2, "empty 'sentence'"),
    ("b.tsv", "sentence\tlabel\na b\t1\n\nc d\t0\n", 3, "empty line"),
    ("m.jsonl", '{"sentence": "a b", "label": 1}\n{"text": "x"}\n', 2, "missing key"),
    ("n.jsonl", '{"sentence": 3, "label": 1}\n', 1, "must be a string"),
    ("h.tsv", "text\tlabel\na\t1\n", 1, "no column 'sentence'"),
])
def test_bad_rows_are_located(tmp_path, tiny_teacher_dir, name, text, where, problem):
    from tinyfast.augment import augment

    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=problem) as err:
        augment(path, tmp_path / f"out{path.suffix}", teacher=str(tiny_teacher_dir),
                progress=False)
    assert err.value.where == f"{path}:{where}"
    assert not (tmp_path / f"out{path.suffix}").exists()


def test_cli_errors_are_one_line(tmp_path, capsys):
    from tinyfast.cli.main import main

    bad = tmp_path / "v.txt"
    bad.write_text("good 1 0\nbad 1\n", encoding="utf-8")
    data = tmp_path / "d.tsv"
    data.write_text("sentence\tlabel\ngood film\t1\n", encoding="utf-8")
    code = main(["augment", "--input", str(data), "--out", str(tmp_path / "o.tsv"),
                 "--vectors", str(bad), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1] == f"tinyfast: error: {bad}:2: 1 values after the word " \
        "\"bad\"; earlier lines have 2"
    with pytest.raises(SystemExit) as exit_:
        main(["augment", "--input", str(data), "--out", "o.tsv", "--p", "nan"])
    assert exit_.value.code == 2
    assert "--p" in capsys.readouterr().err
    code = main(["augment", "--input", str(data), "--out", str(tmp_path / "o.tsv"), "--n",
                 "100000"])
    assert code == 2 and capsys.readouterr().err.strip() == \
        "tinyfast: error: n must be in 0..10000 (got 100000)"
    code = main(["augment", "--input", str(data), "--out", str(tmp_path / "o.jsonl"),
                 "--vectors", str(bad)])
    assert code == 2 and "the input's format (tsv)" in capsys.readouterr().err


# -- the masked-LM head -------------------------------------------------------------------------

def test_fit_mlm_head_then_augment_with_it(tiny_teacher_dir, demo_data, make_config, tmp_path):
    from tinyfast.augment import fit_mlm_head

    out = tmp_path / "head"
    summary = fit_mlm_head(str(tiny_teacher_dir), demo_data["corpus"], out, max_length=32,
                           heldout=0.1, config=make_config(batch_size=16, max_steps=6))
    best = summary["best"]
    assert 0 <= best["top1"] <= best["top15"] <= 1 and best["masked_tokens"] > 0
    assert summary["trainable_parameters"] < 32 * 32 + 2 * 32 + 200  # head only, no encoder
    assert json.loads((out / "metrics.json").read_text())["best"] == best
    result = run_augment(demo_data, tmp_path / "aug.tsv", mlm=str(out / "model"))
    assert result["masked_lm_words"] > 0
