"""``tinyfast selfdistill``: FastBERT's self-distillation of early-exit branches against a frozen
classifier (the loss by hand, the frozen parts bit for bit, training that works, bad input)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file  # noqa: E402

from test_cli import one_error_line  # noqa: E402
from tinyfast import cli  # noqa: E402
from tinyfast.models.branches import Branches, normalized_entropy  # noqa: E402
from tinyfast.selfdistill import SelfDistillStep, selfdistill  # noqa: E402


class FixedClassifier(torch.nn.Module):
    """Stands in for a classifier: fixed final logits and hidden states, whatever the input."""

    def __init__(self, logits: torch.Tensor, hidden: torch.Tensor, layers: int) -> None:
        super().__init__()
        self.fixed_logits, self.hidden, self.layers = logits, hidden, layers
        self.dropout = torch.nn.Dropout(0.5)

    def forward(self, input_ids, attention_mask=None, output_hidden_states=False, **_):
        states = tuple(self.dropout(self.hidden) for _ in range(self.layers + 1))
        return SimpleNamespace(logits=self.fixed_logits, hidden_states=states)


def uniform_linear_branches(layers: list[int], hidden: int = 4) -> Branches:
    """Linear branches with zero weights: every branch answers the uniform distribution."""
    branches = Branches(hidden, 2, [(layer, "linear") for layer in layers])
    for param in branches.parameters():
        torch.nn.init.zeros_(param)
    return branches


def step_loss(temperature: float):
    # Final classifier: logits (0, ln 3), so p = (1/4, 3/4) at T = 1; branches answer (1/2, 1/2).
    teacher = torch.tensor([[0.0, math.log(3.0)]])
    model = FixedClassifier(teacher, torch.randn(1, 3, 4), layers=3)
    step = SelfDistillStep(model, uniform_linear_branches([1, 2]), temperature)
    batch = {"input_ids": torch.zeros(1, 3, dtype=torch.long),
             "attention_mask": torch.ones(1, 3, dtype=torch.long),
             "labels": torch.zeros(1, dtype=torch.long)}
    loss, logs = step(batch)
    loss.backward()
    return step, loss, logs


def test_loss_is_the_kl_summed_over_branches_by_hand():
    step, loss, logs = step_loss(1.0)
    # KL(p || q) = 1/4 ln(1/2) + 3/4 ln(3/2) for each branch; two branches.
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert kl == pytest.approx(0.1308120, abs=1e-6)
    assert loss.item() == pytest.approx(2 * kl, abs=1e-6)
    assert logs == pytest.approx({"kl_layer1": kl, "kl_layer2": kl}, abs=1e-6)
    # d KL / d branch logits = q - p = (1/4, -1/4); the bias gets it, the zero input nothing.
    for layer in (1, 2):
        head = step.branches.branch(layer).classifier
        torch.testing.assert_close(head.bias.grad, torch.tensor([0.25, -0.25]))


def test_temperature_softens_both_sides():
    step, loss, _ = step_loss(2.0)
    p1 = 1.0 / (1.0 + math.sqrt(3.0))  # softmax((0, ln 3) / 2)
    kl = p1 * math.log(p1 / 0.5) + (1 - p1) * math.log((1 - p1) / 0.5)
    assert loss.item() == pytest.approx(2 * kl, abs=1e-6)
    grad = (0.5 - p1) / 2.0  # (q - p) / T
    torch.testing.assert_close(step.branches.branch(1).classifier.bias.grad,
                               torch.tensor([grad, -grad]))


def test_normalized_entropy_and_its_gradient_by_hand():
    logits = torch.tensor([[0.0, math.log(3.0)]], requires_grad=True)
    u = normalized_entropy(logits)
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert u.item() == pytest.approx(entropy / math.log(2), abs=1e-6)
    u.sum().backward()
    # dH/dz_i = -p_i (ln p_i + H), divided by ln C.
    want = [-p * (math.log(p) + entropy) / math.log(2) for p in (0.25, 0.75)]
    torch.testing.assert_close(logits.grad, torch.tensor([want]))


def test_the_frozen_classifier_stays_in_eval_mode():
    step, _, _ = step_loss(1.0)
    step.train()
    assert step.branches.training and not step.model.training
    assert not any(p.requires_grad for p in step.model.parameters())


@pytest.fixture(scope="module")
def selfdistilled(tmp_path_factory, finetuned_teacher, demo_data, make_config):
    """Linear branches after layers 1 and 3 of the tiny fine-tuned teacher, trained on the demo
    training file (labels ignored) with the held-out KL every 2 steps."""
    out = tmp_path_factory.mktemp("selfdistill")
    summary = selfdistill(finetuned_teacher[0] / "model", demo_data["train"], out,
                          branch="linear", layers=[3, 1], heldout=0.25,
                          config=make_config(epochs=6, lr=1e-2, eval_every=2))
    return out, summary


def test_branch_kl_falls(selfdistilled):
    _, summary = selfdistilled
    history = summary["history"]
    assert summary["layers"] == [1, 3] and summary["train_rows"] == 72
    assert len(history) >= 10
    assert history[-1]["heldout_kl"] < 0.5 * history[0]["heldout_kl"], history
    assert summary["best"]["heldout_kl"] == min(h["heldout_kl"] for h in history)
    for key in ("agreement_layer1", "agreement_layer3"):
        assert 0.0 <= summary["best"][key] <= 1.0


def test_model_is_bit_identical_and_branches_sit_beside_it(selfdistilled, finetuned_teacher):
    out, _ = selfdistilled
    before = load_file(str(finetuned_teacher[0] / "model" / "model.safetensors"))
    after = load_file(str(out / "model" / "model.safetensors"))
    assert before.keys() == after.keys()
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name
    spec = json.loads((out / "model" / "branches.json").read_text(encoding="utf-8"))
    assert [e["layer"] for e in spec["exits"]] == [1, 3]
    assert {e["kind"] for e in spec["exits"]} == {"linear"}
    loaded = Branches.load(out / "model", hidden=32, num_layers=4)
    assert loaded.layers == [1, 3]


def test_export_of_the_output_is_an_early_exit_bundle(selfdistilled, tmp_path):
    from tinyfast import Runtime
    from tinyfast.export import export

    out, _ = selfdistilled
    export(out / "model", tmp_path / "bundle")
    runtime = Runtime.load(tmp_path / "bundle", threads=1)
    assert runtime.exits == [(1, "linear"), (3, "linear")]


def test_fastbert_branches_on_plain_text(tmp_path, finetuned_teacher, demo_data, make_config):
    summary = selfdistill(finetuned_teacher[0] / "model", demo_data["corpus"], tmp_path / "run",
                          config=make_config(epochs=1), heldout=0.0)
    assert summary["layers"] == [1, 2, 3] and summary["branch"] == "fastbert"
    assert summary["train_rows"] == 128 and summary["best"] is None
    spec = json.loads((tmp_path / "run" / "model" / "branches.json").read_text("utf-8"))
    assert spec["branch"] == {"width": 128, "heads": 2}


@pytest.fixture
def selfdistill_args(finetuned_teacher, demo_data, tmp_path):
    def args(*extra: str, model: str | None = None) -> list[str]:
        return ["selfdistill", model or str(finetuned_teacher[0] / "model"), "--unlabeled",
                str(demo_data["train"]), "--out", str(tmp_path / "run"), "--epochs", "1",
                "--no-progress", *extra]

    return args


def test_command_recipe_and_bench_share_the_library_defaults():
    # The command line and the recipe cannot import torch to read the constants, so they repeat
    # them; this keeps the copies equal.
    from bench_scripts import load_bench
    from tinyfast.pipeline.recipe import DEFAULTS
    from tinyfast.selfdistill import DEFAULT_EPOCHS, DEFAULT_LR

    args = cli.build_parser().parse_args(["selfdistill", "m", "--unlabeled", "u", "--out", "o"])
    bench = load_bench("early_exit.py").parse_args(
        ["--model", "m", "--unlabeled", "u", "--eval", "e", "--work", "w", "--out", "o"])
    for epochs, lr in ((args.epochs, args.lr), (DEFAULTS["selfdistill"]["epochs"],
                                                DEFAULTS["selfdistill"]["lr"]),
                       (bench.epochs, bench.lr)):
        assert (epochs, lr) == (DEFAULT_EPOCHS, DEFAULT_LR)


@pytest.mark.parametrize("extra, message", [
    (["--layers", "4"], "--layers: 4 is not an exit layer of this 4-layer model"),
    (["--layers", "0,1"], "--layers: 0 is not an exit layer"),
    (["--layers", "1,x"], "--layers: expected comma-separated integers"),
    (["--temperature", "nan"], "expected a finite number"),
    (["--temperature", "0"], "must be > 0"),
    (["--branch", "deep"], "invalid choice: 'deep'"),
    (["--width", "6", "--heads", "4"], "branch width 6 is not divisible by its 4 heads"),
    (["--heldout", "1"], "heldout is a share of the text in [0, 1)"),
])
def test_bad_flags_are_one_line_errors(capsys, selfdistill_args, extra, message):
    try:
        code = cli.main(selfdistill_args(*extra))
    except SystemExit as exc:  # the argument parser's own errors
        code = exc.code
    prefix = "tinyfast selfdistill" if "invalid choice" in message or "finite" in message \
        or "> 0" in message else "tinyfast"
    assert message in one_error_line(capsys, code, prefix)


def test_a_model_without_a_classifier_is_refused(capsys, selfdistill_args, tiny_teacher_dir):
    code = cli.main(selfdistill_args(model=str(tiny_teacher_dir)))
    assert "tinyfast_task.json" in one_error_line(capsys, code, "tinyfast")


def test_missing_and_malformed_text_are_one_line_errors(capsys, selfdistill_args, tmp_path):
    argv = selfdistill_args()
    argv[argv.index("--unlabeled") + 1] = str(tmp_path / "missing.tsv")
    assert "missing.tsv" in one_error_line(capsys, cli.main(argv), "tinyfast")
    wrong = tmp_path / "wrong.tsv"
    wrong.write_text("text\tlabel\nfine\tpositive\n", encoding="utf-8")
    argv[argv.index("--unlabeled") + 1] = str(wrong)
    line = one_error_line(capsys, cli.main(argv), "tinyfast")
    assert "wrong.tsv" in line and "sentence" in line


def test_regression_models_have_no_exits(capsys, selfdistill_args, finetuned_teacher, tmp_path):
    import shutil

    model = tmp_path / "regression"
    shutil.copytree(finetuned_teacher[0] / "model", model)
    task = json.loads((model / "tinyfast_task.json").read_text(encoding="utf-8"))
    task.update(task="regression", labels=[])
    (model / "tinyfast_task.json").write_text(json.dumps(task), encoding="utf-8")
    line = one_error_line(capsys, cli.main(selfdistill_args(model=str(model))), "tinyfast")
    assert "early exit needs a classifier with at least 2 labels" in line


def test_plain_text_cannot_feed_a_pair_task(tmp_path, demo_data):
    from tinyfast.data import Columns, TaskMeta
    from tinyfast.data.splits import load_unlabeled
    from tinyfast.errors import DataError

    meta = TaskMeta("classification", ["a", "b"], Columns(text_a="q", text_b="p"), 32)
    with pytest.raises(DataError, match="plain text holds one text a line"):
        load_unlabeled(None, Path(demo_data["corpus"]), meta)
