"""Readers, task metadata and tokenization in tinyfast.data."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tinyfast.data import (
    TASK_FILE,
    Columns,
    Encoded,
    Example,
    TaskMeta,
    build_task_meta,
    detect_format,
    encode_examples,
    read_corpus,
    read_examples,
)
from tinyfast.errors import ConfigError, DataError

SST2_DEV = Path("/work/shared/data/sst2/dev.tsv")
UNLABELED = Columns(label=None)


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8", newline="")  # keep "\r\n" as written
    return path


@contextmanager
def raises_at(where: str, *words: str) -> Iterator[pytest.ExceptionInfo[DataError]]:
    """A DataError located at ``where`` whose message contains every one of ``words``."""
    with pytest.raises(DataError) as info:
        yield info
    err = info.value
    assert err.where == where, str(err)
    assert str(err).startswith(f"{where}: ")
    for word in words:
        assert word in str(err), str(err)


# ---------------------------------------------------------------------------------------------
# Formats and file-level errors


def test_detect_format(tmp_path: Path) -> None:
    assert detect_format("a/train.tsv") == "tsv"
    assert detect_format("x.TAB") == "tsv"
    assert detect_format("x.jsonl") == "jsonl"
    assert detect_format("x.json") == "jsonl"
    assert detect_format(tmp_path / "c.txt") == "text"
    with raises_at("data.csv", "'.csv'", ".tsv"):
        detect_format("data.csv")
    with raises_at("data", "(none)"):
        detect_format("data")


def test_unknown_format_and_task_are_config_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "a.tsv", "sentence\tlabel\nhi\t0\n")
    with pytest.raises(ConfigError, match="xml"):
        read_examples(path, format="xml")
    with pytest.raises(ConfigError, match="ranking"):
        read_examples(path, task="ranking")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope.tsv"
    with raises_at(str(missing), "no such file"):
        read_examples(missing)
    with raises_at(str(tmp_path), "directory"):
        read_corpus(tmp_path)


@pytest.mark.parametrize("name", ["e.tsv", "e.jsonl", "e.txt"])
@pytest.mark.parametrize("content", ["", "\n\n", "\ufeff", "  \r\n"])
def test_empty_files(tmp_path: Path, name: str, content: str) -> None:
    path = write(tmp_path, name, content)
    columns = UNLABELED if name.endswith(".txt") else Columns()
    with raises_at(str(path), "empty"):
        read_examples(path, columns)


def test_header_only_tsv(tmp_path: Path) -> None:
    path = write(tmp_path, "h.tsv", "sentence\tlabel\n\n")
    with raises_at(str(path), "no data rows"):
        read_examples(path)


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "latin.tsv", "sentence\tlabel\nfine\t0\ncaf\xe9\t1\n".encode("latin-1"))
    with raises_at(f"{path}:3", "UTF-8", "byte 4"):
        read_examples(path)
    corpus = write(tmp_path, "c.txt", b"ok\n\xff\xfe\n")
    with raises_at(f"{corpus}:2", "UTF-8"):
        read_corpus(corpus)


# ---------------------------------------------------------------------------------------------
# TSV


def test_tsv_single_sentence(tmp_path: Path) -> None:
    text = 'sentence\tlabel\nit \'s "great" , really\t1\r\na dull , "flat" film\t0\n\n'
    path = write(tmp_path, "train.tsv", text)
    examples = read_examples(path)
    assert examples == [
        Example('it \'s "great" , really', None, "1", f"{path}:2"),
        Example('a dull , "flat" film', None, "0", f"{path}:3"),
    ]


def test_tsv_pairs_with_custom_columns_and_extra_columns(tmp_path: Path) -> None:
    text = "idx\tq\tpassage\tgold\n0\twho ?\tbob .\tyes \n1\twhen ?\tnow .\tno\n"
    path = write(tmp_path, "pairs.tab", text)
    columns = Columns(text_a="q", text_b="passage", label="gold")
    examples = read_examples(path, columns)
    assert [(e.text_a, e.text_b, e.label) for e in examples] == [
        ("who ?", "bob .", "yes"),  # labels are stripped
        ("when ?", "now .", "no"),
    ]
    assert examples[1].where == f"{path}:3"


def test_tsv_unlabeled(tmp_path: Path) -> None:
    path = write(tmp_path, "u.tsv", "sentence\nfirst\nsecond\n")
    assert [(e.text_a, e.label) for e in read_examples(path, UNLABELED)] == [
        ("first", None),
        ("second", None),
    ]


def test_tsv_regression(tmp_path: Path) -> None:
    path = write(tmp_path, "sts.tsv", "sentence\tlabel\na\t3.5\nb\t-1\nc\t 2e-1\n")
    labels = [e.label for e in read_examples(path, task="regression")]
    assert labels == [3.5, -1.0, 0.2]
    assert all(isinstance(x, float) for x in labels)


def test_tsv_missing_column_lists_the_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "m.tsv", "text\tlabel\nhello\t0\n")
    with raises_at(f"{path}:1", "'sentence'", "'text', 'label'"):
        read_examples(path)
    with raises_at(f"{path}:1", "'hyp'"):
        read_examples(path, Columns(text_a="text", text_b="hyp"))


def test_tsv_duplicate_header_column(tmp_path: Path) -> None:
    path = write(tmp_path, "d.tsv", "sentence\tsentence\tlabel\na\tb\t0\n")
    with raises_at(f"{path}:1", "twice"):
        read_examples(path)


def test_tsv_ragged_row(tmp_path: Path) -> None:
    path = write(tmp_path, "r.tsv", "sentence\tlabel\na\t0\nb\t1\textra\nc\t0\n")
    with raises_at(f"{path}:3", "3 fields", "header has 2"):
        read_examples(path)
    short = write(tmp_path, "s.tsv", "sentence\tlabel\na\t0\nno label here\n")
    with raises_at(f"{short}:3", "1 fields"):
        read_examples(short)


def test_tsv_empty_line_in_the_middle(tmp_path: Path) -> None:
    path = write(tmp_path, "g.tsv", "sentence\tlabel\na\t0\n\nb\t1\n")
    with raises_at(f"{path}:3", "empty line"):
        read_examples(path)
    # A single-column file too: the empty line is not taken as an empty text.
    one = write(tmp_path, "one.tsv", "sentence\na\n\r\nb\n")
    with raises_at(f"{one}:3", "empty line"):
        read_examples(one, UNLABELED)


def test_tsv_empty_fields(tmp_path: Path) -> None:
    path = write(tmp_path, "e.tsv", "sentence\tlabel\na\t0\n  \t1\n")
    with raises_at(f"{path}:3", "empty 'sentence' field"):
        read_examples(path)
    label = write(tmp_path, "l.tsv", "sentence\tlabel\na\t0\nb\t\n")
    with raises_at(f"{label}:3", "empty label"):
        read_examples(label)


def test_tsv_bad_regression_label(tmp_path: Path) -> None:
    path = write(tmp_path, "r.tsv", "sentence\tlabel\na\t1.5\nb\tabc\n")
    with raises_at(f"{path}:3", "label 'abc' is not a number"):
        read_examples(path, task="regression")
    nan = write(tmp_path, "n.tsv", "sentence\tlabel\na\tnan\n")
    with raises_at(f"{nan}:2", "finite"):
        read_examples(nan, task="regression")


def test_tsv_does_not_interpret_quotes_or_unicode_separators(tmp_path: Path) -> None:
    # A csv-module reader would merge these lines at the unbalanced quote; str.splitlines()
    # would split at \u2028. Both must stay single rows.
    path = write(tmp_path, "q.tsv", 'sentence\tlabel\n"odd start\t0\nline\u2028sep\t1\n')
    assert [e.text_a for e in read_examples(path)] == ['"odd start', "line\u2028sep"]


def test_tsv_utf8_bom(tmp_path: Path) -> None:
    path = write(tmp_path, "b.tsv", "\ufeffsentence\tlabel\nhi\t0\n")
    assert read_examples(path)[0].text_a == "hi"


# ---------------------------------------------------------------------------------------------
# JSONL


def test_jsonl(tmp_path: Path) -> None:
    rows = [
        {"premise": "a man sleeps", "hypothesis": "nobody sleeps", "y": 2, "idx": 0},
        {"premise": "it rains", "hypothesis": "it is wet", "y": "entailment"},
    ]
    text = json.dumps(rows[0]) + "\n\n   \n" + json.dumps(rows[1]) + "\n"
    path = write(tmp_path, "nli.jsonl", text)
    columns = Columns(text_a="premise", text_b="hypothesis", label="y")
    examples = read_examples(path, columns)
    assert examples == [
        Example("a man sleeps", "nobody sleeps", "2", f"{path}:1"),
        Example("it rains", "it is wet", "entailment", f"{path}:4"),
    ]


def test_jsonl_regression_and_unlabeled(tmp_path: Path) -> None:
    path = write(
        tmp_path, "r.json", '{"sentence": "a", "label": 4}\n{"sentence": "b", "label": "0.5"}\n'
    )
    assert [e.label for e in read_examples(path, task="regression")] == [4.0, 0.5]
    assert [e.label for e in read_examples(path, UNLABELED)] == [None, None]


@pytest.mark.parametrize(
    ("line", "task", "words"),
    [
        ('{"sentence": "a", "label": 0', "classification", ["invalid JSON"]),
        ('["a", 0]', "classification", ["JSON object", "array"]),
        ('{"text": "a", "label": 0}', "classification", ["missing key 'sentence'", "'text'"]),
        ('{"sentence": "a"}', "classification", ["missing key 'label'"]),
        ('{"sentence": 5, "label": 0}', "classification", ["'sentence' must be a string"]),
        ('{"sentence": "", "label": 0}', "classification", ["empty 'sentence'"]),
        ('{"sentence": "a", "label": 1.5}', "classification", ["string or an integer"]),
        ('{"sentence": "a", "label": true}', "classification", ["boolean"]),
        ('{"sentence": "a", "label": null}', "regression", ["a number", "null"]),
        ('{"sentence": "a", "label": "abc"}', "regression", ["label 'abc' is not a number"]),
    ],
)
def test_jsonl_errors(tmp_path: Path, line: str, task: str, words: list[str]) -> None:
    path = write(tmp_path, "bad.jsonl", '{"sentence": "ok", "label": 1}\n\n' + line + "\n")
    with raises_at(f"{path}:3", *words):
        read_examples(path, task=task)


# ---------------------------------------------------------------------------------------------
# Plain text


def test_text_examples_and_corpus(tmp_path: Path) -> None:
    path = write(tmp_path, "corpus.txt", "first line .\r\n\n  \nsecond\tline\n")
    assert read_corpus(path) == ["first line .", "second\tline"]
    examples = read_examples(path, UNLABELED)
    assert examples == [
        Example("first line .", None, None, f"{path}:1"),
        Example("second\tline", None, None, f"{path}:4"),
    ]


def test_text_rejects_labels_and_pairs(tmp_path: Path) -> None:
    path = write(tmp_path, "t.txt", "hello\n")
    with raises_at(str(path), "no labels"):
        read_examples(path)  # the default Columns expects a label
    with raises_at(str(path), "pairs"):
        read_examples(path, Columns(text_b="other", label=None))


# ---------------------------------------------------------------------------------------------
# TaskMeta


def ex(label: str | float | None, line: int = 2) -> Example:
    return Example("text", None, label, f"f.tsv:{line}")


def test_natural_label_sort() -> None:
    labels = ["10", "2", "0", "1", "2", "10"]
    meta = build_task_meta([ex(x) for x in labels], "classification", Columns())
    assert meta.labels == ["0", "1", "2", "10"]
    assert meta.num_labels == 4
    assert meta.label_id("10", "w") == 3
    words = build_task_meta([ex(x) for x in ["neg", "pos", "10"]], "classification", Columns())
    assert words.labels == ["10", "neg", "pos"]
    negative = build_task_meta([ex(x) for x in ["1", "-1", "0"]], "classification", Columns())
    assert negative.labels == ["-1", "0", "1"]


def test_build_task_meta_given_labels() -> None:
    examples = [ex("pos", 2), ex("neg", 3), ex("meh", 4)]
    meta = build_task_meta(examples[:2], "classification", Columns(), labels=["pos", "neg"])
    assert meta.labels == ["pos", "neg"]  # the given order is kept
    with raises_at("f.tsv:4", "'meh'", "'pos', 'neg'"):
        build_task_meta(examples, "classification", Columns(), labels=["pos", "neg"])


def test_build_task_meta_errors() -> None:
    with raises_at("f.tsv:3", "no label"):
        build_task_meta([ex("a", 2), ex(None, 3)], "classification", Columns())
    with raises_at("f.tsv", "only one label"):
        build_task_meta([ex("a"), ex("a")], "classification", Columns())
    with pytest.raises(ConfigError):
        build_task_meta([ex(1.0)], "regression", Columns(), labels=["a"])


def test_regression_meta() -> None:
    meta = build_task_meta([ex(0.5), ex(2.0)], "regression", Columns(), max_length=64)
    assert meta.labels == [] and meta.num_labels == 1 and meta.max_length == 64


def test_label_id_unknown() -> None:
    meta = TaskMeta("classification", ["neg", "pos"], Columns())
    with raises_at("d.tsv:7", "unknown label 'meh'", "'neg', 'pos'"):
        meta.label_id("meh", "d.tsv:7")


def test_task_meta_round_trip(tmp_path: Path) -> None:
    meta = TaskMeta("classification", ["2", "10"], Columns("q", "p", None), max_length=64)
    path = meta.save(tmp_path / "model")
    assert path == tmp_path / "model" / TASK_FILE
    assert TaskMeta.load(tmp_path / "model") == meta
    assert TaskMeta.from_dict(meta.to_dict(), "x") == meta
    regression = TaskMeta("regression", [], Columns())
    regression.save(tmp_path)
    assert TaskMeta.load(tmp_path) == regression
    # No labels at all: general distillation saves this next to its student.
    unlabeled = TaskMeta("classification", [], Columns(label=None))
    assert TaskMeta.from_dict(unlabeled.to_dict(), "x") == unlabeled


def test_task_meta_load_errors(tmp_path: Path) -> None:
    file = tmp_path / TASK_FILE
    with raises_at(str(file), "no task file"):
        TaskMeta.load(tmp_path)
    file.write_text('{\n  "task": "classification",\n  "labels": [\n}\n')
    with raises_at(f"{file}:4", "invalid JSON"):
        TaskMeta.load(tmp_path)
    good = TaskMeta("classification", ["a", "b"], Columns()).to_dict()
    for broken, words in [
        ({**good, "task": "ranking"}, ["ranking"]),
        ({**good, "labels": "ab"}, ["'labels'"]),
        ({**good, "labels": ["a", "a"]}, ["repeat"]),
        ({**good, "labels": [1, 2]}, ["strings"]),
        ({**good, "task": "regression"}, ["no label names"]),
        ({**good, "columns": {"text_b": "x"}}, ["text_a"]),
        ({**good, "max_length": "128"}, ["max_length"]),
        ({**good, "version": 99}, ["newer"]),
        ({k: v for k, v in good.items() if k != "task"}, ["missing field 'task'"]),
    ]:
        file.write_text(json.dumps(broken))
        with raises_at(str(file), *words):
            TaskMeta.load(tmp_path)


# ---------------------------------------------------------------------------------------------
# Tokenization

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "movie", "is", "good", "bad", "##s"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from tokenizers import BertWordPieceTokenizer
    from transformers import PreTrainedTokenizerFast

    vocab = tmp_path_factory.mktemp("tok") / "vocab.txt"
    vocab.write_text("\n".join(VOCAB) + "\n")
    # Built through `tokenizers`: transformers 5 ignores BertTokenizerFast(vocab_file=...).
    backend = BertWordPieceTokenizer(str(vocab), lowercase=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend._tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def ids(*tokens: str) -> list[int]:
    return [VOCAB.index(t) for t in tokens]


def test_encode_single_with_truncation(tokenizer) -> None:
    meta = TaskMeta("classification", ["neg", "pos"], Columns(), max_length=8)
    examples = [
        Example("The movie is good", None, "pos", "a:2"),
        Example("the movie is bad bad bad bad bad bad", None, "neg", "a:3"),
    ]
    enc = encode_examples(tokenizer, examples, meta)
    assert isinstance(enc, Encoded) and len(enc) == 2
    assert enc.input_ids[0] == ids("[CLS]", "the", "movie", "is", "good", "[SEP]")
    assert enc.input_ids[1] == ids("[CLS]", "the", "movie", "is", "bad", "bad", "bad", "[SEP]")
    assert enc.lengths == [6, 8]
    assert enc.token_type_ids == [[0] * 6, [0] * 8]
    assert enc.labels == [1, 0]
    assert encode_examples(tokenizer, examples, meta, with_labels=False).labels is None


def test_encode_pairs_longest_first(tokenizer) -> None:
    meta = TaskMeta("regression", [], Columns(text_b="s2"), max_length=9)
    examples = [
        Example("movies", "bad", "0.5", "p:2"),  # string labels are parsed for regression
        Example("the movie the movie the movie", "good good", 2.0, "p:3"),
    ]
    enc = encode_examples(tokenizer, examples, meta)
    assert enc.input_ids[0] == ids("[CLS]", "movie", "##s", "[SEP]", "bad", "[SEP]")
    assert enc.token_type_ids[0] == [0, 0, 0, 0, 1, 1]
    # 6 text tokens fit: longest_first cuts the longer text a down to 4, keeps both of text b.
    assert enc.input_ids[1] == ids(
        "[CLS]", "the", "movie", "the", "movie", "[SEP]", "good", "good", "[SEP]"
    )
    assert enc.token_type_ids[1] == [0] * 6 + [1] * 3
    assert enc.labels == [0.5, 2.0]


def test_encode_errors(tokenizer) -> None:
    meta = TaskMeta("classification", ["neg", "pos"], Columns())
    with raises_at("f.tsv:9", "unknown label 'meh'"):
        encode_examples(tokenizer, [ex("pos", 8), ex("meh", 9)], meta)
    with raises_at("f.tsv:3", "no label"):
        encode_examples(tokenizer, [ex("pos", 2), ex(None, 3)], meta)
    with raises_at("f.tsv:2", "pair"):
        encode_examples(tokenizer, [Example("a", "b", "pos", "f.tsv:2")], meta)
    pair_meta = TaskMeta("classification", ["neg", "pos"], Columns(text_b="b"))
    with raises_at("f.tsv:5", "sentence pairs"):
        encode_examples(tokenizer, [ex("pos", 5)], pair_meta)
    regression = TaskMeta("regression", [], Columns())
    with raises_at("f.tsv:4", "label 'x' is not a number"):
        encode_examples(tokenizer, [ex("x", 4)], regression)


# ---------------------------------------------------------------------------------------------
# Real data and the no-torch rule


def test_data_module_does_not_import_torch() -> None:
    code = "import sys, tinyfast.data; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(not SST2_DEV.exists(), reason="SST-2 dev set only exists on the dev machines")
def test_sst2_dev_smoke() -> None:
    examples = read_examples(SST2_DEV)
    assert len(examples) == 872
    assert {e.label for e in examples} == {"0", "1"}
    assert build_task_meta(examples, "classification", Columns()).labels == ["0", "1"]
