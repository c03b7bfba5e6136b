"""What the TinyBERT losses read from a forward pass: hidden states (embeddings first), raw
pre-softmax attention scores and logits, captured with hooks so any attention implementation
works."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from tinyfast.errors import ConfigError

__all__ = ["AttentionQK", "Internals", "forward_internals"]


@dataclass
class AttentionQK:
    """One layer's attention inputs, per head: ``q``, ``k`` [B, H, L, d] and the score scale, so
    that a fused loss can compare scores ``q k^T * scale`` tile by tile without storing them."""

    q: torch.Tensor
    k: torch.Tensor
    scale: float

    def scores(self) -> torch.Tensor:
        # Same order as HF's eager attention (matmul, then scale) so the numbers agree exactly.
        return torch.matmul(self.q, self.k.transpose(-1, -2)) * self.scale


@dataclass
class Internals:
    """What distillation needs from one forward pass of a model.

    ``hidden_states[0]`` is the embedding output and ``hidden_states[i]`` the output of layer i (as
    Hugging Face's ``output_hidden_states``); ``attention_scores[i - 1]`` holds layer i's
    pre-softmax scores [B, H, L, L], or ``attention_qk[i - 1]`` the queries and keys they come
    from (for the fused attention loss); ``logits`` is the classifier output.
    """

    hidden_states: Sequence[torch.Tensor]
    attention_scores: Sequence[torch.Tensor] | None = None
    logits: torch.Tensor | None = None
    attention_qk: Sequence[AttentionQK] | None = None

# --------------------------------------------------------------------------------------------
# Internals for the distillation losses

# (query, key) projection names of self-attention modules in BERT-family models.
_QK_NAMES = (("query", "key"), ("q_lin", "k_lin"))


def _self_attentions(model: nn.Module) -> list[tuple[nn.Module, nn.Linear, nn.Linear]]:
    found = []
    for name, module in model.named_modules():
        if "crossattention" in name:
            continue
        for q_name, k_name in _QK_NAMES:
            q, k = getattr(module, q_name, None), getattr(module, k_name, None)
            if isinstance(q, nn.Linear) and isinstance(k, nn.Linear):
                found.append((module, q, k))
                break
    return found


def _num_heads(module: nn.Module, config: PretrainedConfig) -> int:
    for attr in ("num_attention_heads", "n_heads", "num_heads"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    return config.num_attention_heads


class _QKRecord:
    """One layer's self-attention module and what its query/key projections returned."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.q: list[torch.Tensor] = []
        self.k: list[torch.Tensor] = []


def _recorder(store: list[torch.Tensor]) -> Callable[..., None]:
    def record(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        store.append(output)

    return record


@contextlib.contextmanager
def _capture_qk(model: nn.Module) -> Iterator[list[_QKRecord]]:
    """Record each self-attention's query and key projections; the hooks go away on exit."""
    attentions = _self_attentions(model)
    layers = model.config.num_hidden_layers
    if len(attentions) != layers:
        raise ConfigError(
            f"{type(model).__name__}: found {len(attentions)} self-attention query/key projections "
            f"for {layers} layers; attention scores are only supported for BERT-style models"
        )
    records = []
    handles = []
    try:
        for module, q, k in attentions:
            record = _QKRecord(module)
            records.append(record)
            handles.append(q.register_forward_hook(_recorder(record.q)))
            handles.append(k.register_forward_hook(_recorder(record.k)))
        yield records
    finally:
        for handle in handles:
            handle.remove()


def _per_head(q: torch.Tensor, k: torch.Tensor, heads: int, scaling: float | None
              ) -> AttentionQK:
    batch, length, width = q.shape
    d_head = width // heads
    q = q.view(batch, length, heads, d_head).transpose(1, 2)
    k = k.view(batch, k.shape[1], heads, d_head).transpose(1, 2)
    return AttentionQK(q, k, scaling if scaling is not None else d_head**-0.5)


_INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def forward_internals(
    model: PreTrainedModel,
    batch: dict[str, torch.Tensor],
    *,
    want_attention: bool,
    want_logits: bool = True,
    scores: bool = True,
) -> Internals:
    """Hidden states (embeddings first), raw attention scores and logits of one forward pass.

    Scores are ``q k^T / sqrt(d_head)`` per layer, shape [B, H, L, L], with no mask added; they
    come from hooks on the query/key projections so any attention implementation works. With
    ``scores=False`` the per-head queries and keys are returned instead (``attention_qk``).
    """
    accepted = inspect.signature(model.forward).parameters
    inputs = {k: batch[k] for k in _INPUT_KEYS if k in batch and k in accepted}
    capture = _capture_qk(model) if want_attention else contextlib.nullcontext(None)
    with capture as records:
        out = model(**inputs, output_hidden_states=True, return_dict=True)
    qk = None
    if records is not None:
        qk = []
        for record in records:
            if len(record.q) != 1 or len(record.k) != 1:
                raise RuntimeError("expected one query and one key projection per layer and pass")
            heads = _num_heads(record.module, model.config)
            scaling = getattr(record.module, "scaling", None)
            qk.append(_per_head(record.q[0], record.k[0], heads, scaling))
    logits = getattr(out, "logits", None) if want_logits else None
    hidden = list(out.hidden_states)
    if qk is not None and scores:
        return Internals(hidden, attention_scores=[a.scores() for a in qk], logits=logits)
    return Internals(hidden, logits=logits, attention_qk=qk)

