"""tinyfast.models.branches: FastBERT branches, their files beside a checkpoint, validation."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from safetensors.torch import load_file, save_file  # noqa: E402

from tinyfast.errors import ConfigError  # noqa: E402
from tinyfast.models.branches import (  # noqa: E402
    BRANCHES_FILE,
    BRANCHES_WEIGHTS,
    Branches,
    FastBertBranch,
    LinearBranch,
    normalized_entropy,
    random_branches,
)

H, C, W, HEADS = 32, 3, 16, 2


def make_branches(seed: int = 0, width: int = W) -> Branches:
    torch.manual_seed(seed)
    return Branches(H, C, {1: "fastbert", 2: "linear"}, width=width, heads=HEADS).eval()


def batch(seed: int = 0, b: int = 4, length: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, length, H, generator=gen)
    mask = torch.ones(b, length, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    return hidden, mask


# ------------------------------------------------------------------------------------------------
# Modules


def test_tensor_names_are_the_bundle_names() -> None:
    shapes = {k: tuple(v.shape) for k, v in make_branches().state_dict().items()}
    expected = {
        "exits.1.dense_in.weight": (W, H),
        "exits.1.dense_in.bias": (W,),
        "exits.1.classifier.weight": (C, W),
        "exits.1.classifier.bias": (C,),
        "exits.2.classifier.weight": (C, H),
        "exits.2.classifier.bias": (C,),
    }
    for name in ("query", "key", "value", "attn_out", "dense"):
        expected[f"exits.1.{name}.weight"] = (W, W)
        expected[f"exits.1.{name}.bias"] = (W,)
    assert shapes == expected


def full_fastbert(branch: FastBertBranch, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """docs/bundle.md's branch written out literally: attention for every token, then [CLS]."""
    h = torch.tanh(branch.dense_in(hidden))
    b, length, width = h.shape
    d = width // branch.heads

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.view(b, length, branch.heads, d).transpose(1, 2)

    q, k, v = heads(branch.query(h)), heads(branch.key(h)), heads(branch.value(h))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    scores = scores.masked_fill(mask[:, None, None, :] == 0, float("-inf"))
    context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, length, width)
    h = branch.attn_out(context)
    return branch.classifier(torch.tanh(branch.dense(h[:, 0])))


def test_fastbert_branch_equals_the_documented_computation() -> None:
    branch = make_branches().branch(1)
    hidden, mask = batch()
    with torch.no_grad():
        assert torch.allclose(branch(hidden, mask), full_fastbert(branch, hidden, mask), atol=1e-6)


def test_fastbert_branch_ignores_padded_tokens() -> None:
    branch = make_branches().branch(1)
    hidden, mask = batch()
    with torch.no_grad():
        short = branch(hidden[1:2, :4], mask[1:2, :4])
        noisy = hidden[1:2].clone()
        noisy[:, 4:] = 100.0  # whatever sits in padded positions must not matter
        padded = branch(noisy, mask[1:2])
    assert torch.allclose(short, padded, atol=1e-6)


def test_linear_branch_reads_cls() -> None:
    branch = LinearBranch(H, C)
    hidden, mask = batch()
    with torch.no_grad():
        expected = hidden[:, 0] @ branch.classifier.weight.T + branch.classifier.bias
        assert torch.allclose(branch(hidden, mask), expected, atol=1e-6)


def test_branches_forward_takes_hf_hidden_states() -> None:
    branches = make_branches()
    hidden, mask = batch()
    states = [hidden * (i + 1) for i in range(4)]  # index 0 = embeddings, k = after layer k
    with torch.no_grad():
        out = branches(states, mask)
        assert sorted(out) == [1, 2]
        assert torch.allclose(out[1], branches.branch(1)(states[1], mask))
        assert torch.allclose(out[2], branches.branch(2)(states[2], mask))


def test_normalized_entropy() -> None:
    uniform = torch.zeros(2, 4)
    assert torch.allclose(normalized_entropy(uniform), torch.ones(2))
    sure = torch.tensor([[1000.0, 0.0, 0.0]])
    assert normalized_entropy(sure).item() == pytest.approx(0.0, abs=1e-6)
    logits = torch.tensor([[0.3, -1.2, 2.0]])
    p = logits.softmax(-1)
    expected = -(p * p.log()).sum(-1) / math.log(3)
    assert torch.allclose(normalized_entropy(logits), expected, atol=1e-6)
    with pytest.raises(ValueError, match="at least 2 classes"):
        normalized_entropy(torch.zeros(1, 1))


def test_random_branches_is_reproducible_and_leaves_the_global_rng_alone() -> None:
    model = torch.nn.Module()
    model.config = type("Config", (), {"hidden_size": H, "num_labels": C})()
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = random_branches(model, [1, 2], ["fastbert", "linear"], seed=5, width=W)
    after = torch.rand(1)
    b = random_branches(model, [1, 2], ["fastbert", "linear"], seed=5, width=W)
    assert torch.equal(before, after)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    assert random_branches(model, [3], "linear").kinds == {3: "linear"}
    with pytest.raises(ConfigError, match="2 layers but 1 kinds"):
        random_branches(model, [1, 2], ["linear"])


@pytest.mark.parametrize(
    ("exits", "width", "heads", "message"),
    [
        ({0: "linear"}, W, HEADS, "exits\\[0\\].layer"),
        ([(2, "linear"), (1, "linear")], W, HEADS, "strictly increasing"),
        ({1: "deebert"}, W, HEADS, "kind is 'deebert'"),
        ({1: "fastbert"}, 15, 2, "not divisible"),
        ({1: "fastbert"}, 0, 2, "width must be a positive integer"),
    ],
)
def test_constructor_validates(exits: Any, width: int, heads: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Branches(H, C, exits, width=width, heads=heads)


# ------------------------------------------------------------------------------------------------
# Files


def test_save_load_round_trip(tmp_path: Path) -> None:
    branches = make_branches()
    branches.save(tmp_path)
    spec = json.loads((tmp_path / BRANCHES_FILE).read_text())
    assert spec == {
        "format_version": 1,
        "num_labels": C,
        "branch": {"width": W, "heads": HEADS},
        "exits": [{"layer": 1, "kind": "fastbert"}, {"layer": 2, "kind": "linear"}],
    }
    stored = load_file(tmp_path / BRANCHES_WEIGHTS)
    assert set(stored) == set(branches.state_dict())
    assert all(t.dtype == torch.float32 for t in stored.values())
    loaded = Branches.load(tmp_path, hidden=H, num_layers=3)
    assert loaded.kinds == {1: "fastbert", 2: "linear"}
    assert (loaded.width, loaded.heads, loaded.num_labels) == (W, HEADS, C)
    for name, tensor in branches.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)
    hidden, mask = batch()
    with torch.no_grad():
        assert torch.equal(loaded.branch(1)(hidden, mask), branches.branch(1)(hidden, mask))
    assert not list(tmp_path.glob("*.tmp"))


def test_linear_only_branches_need_no_branch_field(tmp_path: Path) -> None:
    Branches(H, C, {2: "linear"}).save(tmp_path)
    assert "branch" not in json.loads((tmp_path / BRANCHES_FILE).read_text())
    assert Branches.load(tmp_path, hidden=H).kinds == {2: "linear"}


def test_empty_exits_round_trip(tmp_path: Path) -> None:
    Branches(H, C, {}).save(tmp_path)
    assert Branches.load(tmp_path, hidden=H).layers == []


@pytest.fixture()
def saved(tmp_path: Path) -> Path:
    make_branches().save(tmp_path)
    return tmp_path


def edit_spec(directory: Path, change: Any) -> None:
    path = directory / BRANCHES_FILE
    spec = json.loads(path.read_text())
    change(spec)
    path.write_text(json.dumps(spec))


def _set(key: str, value: Any) -> Any:
    return lambda spec: spec.__setitem__(key, value)


def _set_exit(i: int, key: str, value: Any) -> Any:
    return lambda spec: spec["exits"][i].__setitem__(key, value)


def _pop(key: str) -> Any:
    return lambda spec: spec.pop(key)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("format_version", 2), "format_version is 2"),
        (_pop("format_version"), "format_version is None"),
        (_set("format_version", True), "format_version is True"),
        (_set("num_labels", 0), "num_labels must be a positive integer"),
        (_set("num_labels", "3"), "num_labels must be a positive integer"),
        (_set("exits", {"1": "fastbert"}), "exits must be a list"),
        (_set("exits", ["fastbert"]), "exits\\[0\\] must be an object"),
        (lambda s: s["exits"][0].pop("layer"), "exits\\[0\\] has no field 'layer'"),
        (lambda s: s["exits"][1].pop("kind"), "exits\\[1\\] has no field 'kind'"),
        (_set_exit(0, "layer", 0), "exits\\[0\\].layer must be an integer 1..2"),
        (_set_exit(0, "layer", "1"), "exits\\[0\\].layer must be an integer"),
        (_set_exit(0, "layer", 1.0), "exits\\[0\\].layer must be an integer"),
        (_set_exit(1, "layer", 1), "exits\\[1\\].layer 1 comes after layer 1"),
        (_set_exit(1, "layer", 3), "exits\\[1\\].layer is 3, but the model has 3 layers"),
        (_set_exit(1, "kind", "Linear"), "exits\\[1\\].kind is 'Linear'"),
        (_pop("branch"), "branch must be an object"),
        (_set("branch", {"width": 16, "heads": 3}), "branch: branch width 16 is not divisible"),
        (_set("branch", {"width": -16, "heads": 2}), "width must be a positive integer"),
        (_set("branch", {"width": 16}), "heads must be a positive integer"),
    ],
)
def test_load_rejects_bad_json_fields(saved: Path, change: Any, message: str) -> None:
    edit_spec(saved, change)
    with pytest.raises(ConfigError, match=message) as info:
        Branches.load(saved, hidden=H, num_layers=3)
    assert BRANCHES_FILE in str(info.value)


def test_load_rejects_unreadable_json(saved: Path) -> None:
    (saved / BRANCHES_FILE).write_text('{"format_version": 1,\n "exits": [}')
    with pytest.raises(ConfigError, match=r"branches.json:2: invalid JSON"):
        Branches.load(saved, hidden=H)
    (saved / BRANCHES_FILE).write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        Branches.load(saved, hidden=H)


def test_load_rejects_missing_files(saved: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(ConfigError, match="branches.json: no such file"):
        Branches.load(empty, hidden=H)
    (saved / BRANCHES_WEIGHTS).unlink()
    with pytest.raises(ConfigError, match="branches.safetensors: no such file"):
        Branches.load(saved, hidden=H)


def rewrite_weights(directory: Path, change: Any) -> None:
    path = directory / BRANCHES_WEIGHTS
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.pop("exits.1.query.bias"), "missing tensors 'exits.1.query.bias'"),
        (lambda t: t.__setitem__("exits.3.classifier.bias", torch.zeros(C)),
         "tensors not described by branches.json: 'exits.3.classifier.bias'"),
        (lambda t: t.__setitem__("exits.1.dense.weight", torch.zeros(W, W + 1)),
         r"'exits.1.dense.weight' has shape \[16, 17\], expected \[16, 16\]"),
        (lambda t: t.__setitem__("exits.2.classifier.bias", torch.zeros(C, dtype=torch.float16)),
         "'exits.2.classifier.bias' is F16, expected F32"),
        (lambda t: t.__setitem__("exits.2.classifier.bias", torch.zeros(C, dtype=torch.float64)),
         "'exits.2.classifier.bias' is F64, expected F32"),
        (lambda t: t.__setitem__("exits.1.key.bias", torch.full((W,), float("nan"))),
         "'exits.1.key.bias' holds NaN"),
    ],
)
def test_load_rejects_bad_tensors(saved: Path, change: Any, message: str) -> None:
    rewrite_weights(saved, change)
    with pytest.raises(ConfigError, match=message) as info:
        Branches.load(saved, hidden=H)
    assert BRANCHES_WEIGHTS in str(info.value)


def test_load_checks_shapes_against_the_model(saved: Path) -> None:
    with pytest.raises(ConfigError, match=r"'exits.1.dense_in.weight' has shape \[16, 32\], "
                                          r"expected \[16, 48\]"):
        Branches.load(saved, hidden=48)


def test_load_rejects_a_width_the_tensors_do_not_have(saved: Path) -> None:
    edit_spec(saved, _set("branch", {"width": 8, "heads": 2}))
    with pytest.raises(ConfigError, match="expected \\[8, 32\\]"):
        Branches.load(saved, hidden=H)


def test_load_rejects_a_corrupt_weights_file(saved: Path) -> None:
    (saved / BRANCHES_WEIGHTS).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ConfigError, match="not a readable safetensors file"):
        Branches.load(saved, hidden=H)
