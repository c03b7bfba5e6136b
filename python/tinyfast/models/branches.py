"""FastBERT early-exit branches: the torch modules and the two files that hold them beside a
checkpoint (``branches.json`` + ``branches.safetensors``, as docs/bundle.md defines them).

The self-distillation trainer writes these files, ``tinyfast export`` reads them, and the Rust
runtime computes the same branches from the bundle. Parameter names are the bundle's tensor names:
``Branches.state_dict()`` yields exactly ``exits.{k}.*``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tinyfast._io import json_type, read_json_object
from tinyfast.errors import ConfigError
from tinyfast.kernels.exit_entropy import exit_entropy

__all__ = [
    "BRANCHES_FILE",
    "BRANCHES_VERSION",
    "BRANCHES_WEIGHTS",
    "KINDS",
    "Branches",
    "FastBertBranch",
    "LinearBranch",
    "normalized_entropy",
    "random_branches",
]

BRANCHES_FILE = "branches.json"
BRANCHES_WEIGHTS = "branches.safetensors"
BRANCHES_VERSION = 1
KINDS = ("fastbert", "linear")
DEFAULT_WIDTH = 128
DEFAULT_HEADS = 2


def _key_padding_bias(attention_mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """Additive bias [B, 1, 1, L] that removes padded keys from the softmax.

    The dtype's most negative value rather than -inf: identical whenever one key is real (the
    [CLS] always is), and a fully padded row gives a uniform average instead of NaN.
    """
    batch, length = like.shape[0], like.shape[1]
    if attention_mask is None:
        return like.new_zeros(batch, 1, 1, length)
    keep = attention_mask[:, None, None, :].to(torch.bool)
    bias = like.new_zeros(batch, 1, 1, length)
    return bias.masked_fill(~keep, torch.finfo(like.dtype).min)


class FastBertBranch(nn.Module):
    """FastBERT's branch classifier: dense to ``width`` + tanh, multi-head self-attention at that
    width with padded keys masked, [CLS] pooling, dense + tanh, output layer.

    No LayerNorm and no residual, as in FastBERT. Only the [CLS] query is computed: the branch
    reads nothing else, so this equals full self-attention followed by taking row 0.
    """

    def __init__(
        self, hidden: int, num_labels: int, width: int = DEFAULT_WIDTH, heads: int = DEFAULT_HEADS
    ) -> None:
        super().__init__()
        _check_width(width, heads, "FastBertBranch")
        self.heads = heads
        self.dense_in = nn.Linear(hidden, width)
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.attn_out = nn.Linear(width, width)
        self.dense = nn.Linear(width, width)
        self.classifier = nn.Linear(width, num_labels)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``hidden_states`` [B, L, H] after some encoder layer -> logits [B, C]."""
        batch, length, _ = hidden_states.shape
        h = torch.tanh(self.dense_in(hidden_states))  # [B, L, W]
        width = h.shape[-1]
        d_head = width // self.heads

        def split(x: torch.Tensor) -> torch.Tensor:  # [B, n, W] -> [B, heads, n, d_head]
            return x.view(batch, x.shape[1], self.heads, d_head).transpose(1, 2)

        q = split(self.query(h[:, :1]))
        k = split(self.key(h))
        v = split(self.value(h))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d_head)
        scores = scores + _key_padding_bias(attention_mask, h)
        context = torch.matmul(torch.softmax(scores, dim=-1), v)  # [B, heads, 1, d_head]
        cls = self.attn_out(context.transpose(1, 2).reshape(batch, width))
        return self.classifier(torch.tanh(self.dense(cls)))


class LinearBranch(nn.Module):
    """The light branch: one linear layer on the [CLS] hidden state."""

    def __init__(self, hidden: int, num_labels: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(hidden, num_labels)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``hidden_states`` [B, L, H] -> logits [B, C]; the mask is not needed."""
        return self.classifier(hidden_states[:, 0])


def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """FastBERT's uncertainty: entropy(softmax(logits)) / ln(C), in [0, 1], over the last axis."""
    num_labels = logits.shape[-1]
    if num_labels < 2:
        raise ValueError(f"normalized entropy needs at least 2 classes, got {num_labels}")
    # The definition is the fused op's reference (Triton on CUDA); rows of any leading shape.
    _, uncertainty, _ = exit_entropy(logits.float().reshape(-1, num_labels))
    return uncertainty.reshape(logits.shape[:-1])


# --------------------------------------------------------------------------------------------
# Validation shared by the constructor and the loader


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_width(width: Any, heads: Any, where: str) -> None:
    if not _is_int(width) or width < 1:
        raise ConfigError(f"{where}: branch width must be a positive integer, got {width!r}")
    if not _is_int(heads) or heads < 1:
        raise ConfigError(f"{where}: branch heads must be a positive integer, got {heads!r}")
    if width % heads:
        raise ConfigError(
            f"{where}: branch width {width} is not divisible by its {heads} heads"
        )


def _check_exits(
    exits: Sequence[tuple[Any, Any]], where: str, num_layers: int | None
) -> list[tuple[int, str]]:
    """Layers strictly increasing, each 1-based and before the last layer; known kinds."""
    checked: list[tuple[int, str]] = []
    top = f"1..{num_layers - 1}" if num_layers is not None else ">= 1"
    for i, (layer, kind) in enumerate(exits):
        field = f"exits[{i}]"
        if not _is_int(layer) or layer < 1:
            raise ConfigError(f"{where}: {field}.layer must be an integer {top}, got {layer!r}")
        if num_layers is not None and layer > num_layers - 1:
            raise ConfigError(
                f"{where}: {field}.layer is {layer}, but the model has {num_layers} layers; exits "
                f"sit after layers {top} (after the last layer the model's own head answers)"
            )
        if checked and layer <= checked[-1][0]:
            raise ConfigError(
                f"{where}: {field}.layer {layer} comes after layer {checked[-1][0]}; exit layers "
                "must be strictly increasing"
            )
        if kind not in KINDS:
            raise ConfigError(
                f"{where}: {field}.kind is {kind!r}; expected one of {', '.join(KINDS)}"
            )
        checked.append((layer, kind))
    return checked


def _expected_shapes(
    hidden: int, num_labels: int, exits: Sequence[tuple[int, str]], width: int
) -> dict[str, tuple[int, ...]]:
    """Every tensor name of docs/bundle.md under ``exits.{k}.`` with its shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    for layer, kind in exits:
        prefix = f"exits.{layer}."
        if kind == "linear":
            shapes[prefix + "classifier.weight"] = (num_labels, hidden)
            shapes[prefix + "classifier.bias"] = (num_labels,)
            continue
        shapes[prefix + "dense_in.weight"] = (width, hidden)
        shapes[prefix + "dense_in.bias"] = (width,)
        for name in ("query", "key", "value", "attn_out", "dense"):
            shapes[prefix + name + ".weight"] = (width, width)
            shapes[prefix + name + ".bias"] = (width,)
        shapes[prefix + "classifier.weight"] = (num_labels, width)
        shapes[prefix + "classifier.bias"] = (num_labels,)
    return shapes


# --------------------------------------------------------------------------------------------
# The container


class Branches(nn.Module):
    """All early-exit branches of one model, keyed by the 1-based layer they follow."""

    def __init__(
        self,
        hidden: int,
        num_labels: int,
        exits: Mapping[int, str] | Sequence[tuple[int, str]],
        width: int = DEFAULT_WIDTH,
        heads: int = DEFAULT_HEADS,
    ) -> None:
        super().__init__()
        pairs = list(exits.items()) if isinstance(exits, Mapping) else list(exits)
        checked = _check_exits(pairs, "branches", None)
        if not _is_int(hidden) or hidden < 1:
            raise ConfigError(f"branches: hidden size must be a positive integer, got {hidden!r}")
        if not _is_int(num_labels) or num_labels < 1:
            raise ConfigError(
                f"branches: num_labels must be a positive integer, got {num_labels!r}"
            )
        _check_width(width, heads, "branches")
        self.hidden = hidden
        self.num_labels = num_labels
        self.width = width
        self.heads = heads
        modules: dict[str, nn.Module] = {}
        for layer, kind in checked:
            if kind == "fastbert":
                modules[str(layer)] = FastBertBranch(hidden, num_labels, width, heads)
            else:
                modules[str(layer)] = LinearBranch(hidden, num_labels)
        # The attribute name is the tensor-name prefix of the bundle: exits.{k}.*
        self.exits = nn.ModuleDict(modules)

    @property
    def layers(self) -> list[int]:
        return [int(key) for key in self.exits]

    @property
    def kinds(self) -> dict[int, str]:
        return {
            int(key): "fastbert" if isinstance(module, FastBertBranch) else "linear"
            for key, module in self.exits.items()
        }

    def branch(self, layer: int) -> nn.Module:
        return self.exits[str(layer)]

    def forward(
        self, hidden_states: Sequence[torch.Tensor], attention_mask: torch.Tensor | None = None
    ) -> dict[int, torch.Tensor]:
        """Logits of every branch. ``hidden_states`` as transformers returns them with
        ``output_hidden_states=True``: index 0 is the embeddings, index k the output of layer k."""
        return {
            layer: self.branch(layer)(hidden_states[layer], attention_mask)
            for layer in self.layers
        }

    def spec(self) -> dict[str, Any]:
        """The content of ``branches.json``."""
        spec: dict[str, Any] = {"format_version": BRANCHES_VERSION, "num_labels": self.num_labels}
        kinds = self.kinds
        if "fastbert" in kinds.values():
            spec["branch"] = {"width": self.width, "heads": self.heads}
        spec["exits"] = [{"layer": layer, "kind": kind} for layer, kind in kinds.items()]
        return spec

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``branches.safetensors`` then ``branches.json`` into ``directory``.

        Each file is replaced atomically, and the JSON (the file readers look for) goes last, so a
        crash never leaves a JSON that describes weights which are not there yet.
        """
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {
            name: tensor.detach().to(torch.float32).cpu().contiguous().clone()
            for name, tensor in self.state_dict().items()
        }
        weights = out / BRANCHES_WEIGHTS
        tmp = weights.with_name(weights.name + ".tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, weights)
        spec_path = out / BRANCHES_FILE
        tmp = spec_path.with_name(spec_path.name + ".tmp")
        tmp.write_text(json.dumps(self.spec(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, spec_path)
        return spec_path

    @classmethod
    def load(
        cls, directory: str | os.PathLike[str], hidden: int, num_layers: int | None = None
    ) -> Branches:
        """Read and validate the branches of a checkpoint whose hidden size is ``hidden``.

        With ``num_layers`` the exit layers are also checked against the model's depth. Every
        problem is a ``ConfigError`` naming the file and the field.
        """
        spec_path = Path(directory) / BRANCHES_FILE
        spec = read_json_object(spec_path)
        where = str(spec_path)
        version = spec.get("format_version")
        if version != BRANCHES_VERSION or not _is_int(version):
            raise ConfigError(
                f"{where}: format_version is {version!r}; this tinyfast reads version "
                f"{BRANCHES_VERSION}"
            )
        num_labels = spec.get("num_labels")
        if not _is_int(num_labels) or num_labels < 1:
            raise ConfigError(f"{where}: num_labels must be a positive integer, got {num_labels!r}")
        raw_exits = spec.get("exits")
        if not isinstance(raw_exits, list):
            raise ConfigError(f"{where}: exits must be a list, got {json_type(raw_exits)}")
        pairs: list[tuple[Any, Any]] = []
        for i, entry in enumerate(raw_exits):
            if not isinstance(entry, dict):
                raise ConfigError(
                    f"{where}: exits[{i}] must be an object with layer and kind, got "
                    f"{json_type(entry)}"
                )
            for key in ("layer", "kind"):
                if key not in entry:
                    raise ConfigError(f"{where}: exits[{i}] has no field {key!r}")
            pairs.append((entry["layer"], entry["kind"]))
        exits = _check_exits(pairs, where, num_layers)
        has_fastbert = any(kind == "fastbert" for _, kind in exits)
        width, heads = DEFAULT_WIDTH, DEFAULT_HEADS
        if "branch" in spec or has_fastbert:
            branch = spec.get("branch")
            if not isinstance(branch, dict):
                raise ConfigError(
                    f"{where}: branch must be an object {{\"width\": W, \"heads\": N}} (needed by "
                    f"fastbert exits), got {json_type(branch)}"
                )
            width, heads = branch.get("width"), branch.get("heads")
            _check_width(width, heads, f"{where}: branch")
        if not _is_int(hidden) or hidden < 1:
            raise ConfigError(f"branches: hidden size must be a positive integer, got {hidden!r}")
        expected = _expected_shapes(hidden, num_labels, exits, width)
        state = _read_weights(Path(directory) / BRANCHES_WEIGHTS, expected)
        branches = cls(hidden, num_labels, exits, width, heads)
        branches.load_state_dict(state, strict=True)
        return branches.eval()


def _read_weights(path: Path, expected: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Check names, dtypes and shapes from the header before reading any data."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise ConfigError(f"{path}: no such file (branches.json lists exits, their weights are "
                          "missing)")
    try:
        with safe_open(str(path), framework="pt") as f:
            names = set(f.keys())
            missing = sorted(set(expected) - names)
            extra = sorted(names - set(expected))
            if missing:
                raise ConfigError(f"{path}: missing tensors {_listing(missing)}")
            if extra:
                raise ConfigError(
                    f"{path}: tensors not described by branches.json: {_listing(extra)}"
                )
            for name, shape in expected.items():
                piece = f.get_slice(name)
                dtype = piece.get_dtype()
                if dtype != "F32":
                    raise ConfigError(f"{path}: tensor '{name}' is {dtype}, expected F32")
                got = tuple(piece.get_shape())
                if got != shape:
                    raise ConfigError(
                        f"{path}: tensor '{name}' has shape {list(got)}, expected {list(shape)}"
                    )
            state = {name: f.get_tensor(name) for name in expected}
    except SafetensorError as exc:
        raise ConfigError(f"{path}: not a readable safetensors file: {exc}") from None
    for name, tensor in state.items():
        if not torch.isfinite(tensor).all():
            raise ConfigError(f"{path}: tensor '{name}' holds NaN or infinite values")
    return state


def _listing(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    return shown + (f" ... ({len(names) - limit} more)" if len(names) > limit else "")


def random_branches(
    model: nn.Module,
    layers: Sequence[int],
    kind: str | Sequence[str] = "fastbert",
    seed: int = 0,
    width: int = DEFAULT_WIDTH,
    heads: int = DEFAULT_HEADS,
) -> Branches:
    """Randomly initialised branches sized for a Hugging Face classifier (tests, benchmarks)."""
    kinds = [kind] * len(layers) if isinstance(kind, str) else list(kind)
    if len(kinds) != len(layers):
        raise ConfigError(f"random_branches: {len(layers)} layers but {len(kinds)} kinds")
    config = model.config  # type: ignore[attr-defined]
    # A private RNG stream: the caller's torch seed state stays untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        exits = list(zip(layers, kinds, strict=True))
        branches = Branches(config.hidden_size, config.num_labels, exits, width, heads)
    return branches.eval()
