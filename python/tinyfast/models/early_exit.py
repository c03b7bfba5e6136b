"""FastBERT adaptive inference in PyTorch: a BERT classifier with its early-exit branches, run
layer by layer with per-row exits and batch compaction.

This is the float reference of the int8 runtime: the same rule (``tinyfast.exits.speeds``), the
same branches (``tinyfast.models.branches``), the same exit layers on an f32 bundle of the same
model. After each layer that has a branch (only when speed > 0), the branch answers for the rows
still running; rows whose normalized entropy is ``< speed`` write their logits and exit layer to
their place in the batch and leave; the others' hidden states and masks are compacted (and cut to
the longest remaining row) before the next layer. Rows reaching the last layer get the model's
own head.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tinyfast.data.batching import predict_batched
from tinyfast.errors import ConfigError
from tinyfast.exits.speeds import check_speed
from tinyfast.models.branches import BRANCHES_FILE, Branches, normalized_entropy

__all__ = ["EarlyExitClassifier"]


def _check_model(model: nn.Module) -> Any:
    """The model's config, after checking it is a BERT sequence classifier we can run."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    bert = getattr(model, "bert", None)
    parts = ("embeddings", "encoder", "pooler")
    if model_type != "bert" or bert is None or any(getattr(bert, p, None) is None for p in parts) \
            or not hasattr(model, "classifier"):
        raise ConfigError(f"early exit needs a Hugging Face BERT sequence classifier (model_type "
                          f"'bert' with a pooler and a classifier), got model_type {model_type!r}")
    if getattr(config, "is_decoder", False):
        raise ConfigError("early exit runs bidirectional encoders only; the model is a decoder")
    if config.problem_type == "regression" or config.num_labels < 2:
        raise ConfigError("early exit needs a classifier with at least 2 labels: a regression "
                          "model has no entropy to exit on")
    if config.problem_type == "multi_label_classification":
        raise ConfigError("early exit needs single-label classification; the model is "
                          "multi_label_classification")
    return config


class EarlyExitClassifier(nn.Module):
    """A BERT sequence classifier (``model.bert`` and its head ``classifier(dropout(pooler))``)
    with FastBERT branches after some of its layers. For inference only: the constructor puts
    it in eval mode and :meth:`forward` runs without gradients."""

    def __init__(self, model: nn.Module, branches: Branches) -> None:
        super().__init__()
        config = _check_model(model)
        num_layers = int(config.num_hidden_layers)
        if branches.hidden != config.hidden_size:
            raise ConfigError(f"the branches read hidden states of size {branches.hidden}, but "
                              f"the model's hidden size is {config.hidden_size}")
        if branches.num_labels != config.num_labels:
            raise ConfigError(f"the branches have {branches.num_labels} outputs but the model has "
                              f"{config.num_labels} labels")
        late = [layer for layer in branches.layers if layer >= num_layers]
        if late:
            raise ConfigError(f"branches after layers {late}, but the model has {num_layers} "
                              f"layers; exits sit after layers 1..{num_layers - 1}")
        self.model = model
        self.branches = branches
        self.num_layers = num_layers
        self.num_labels = int(config.num_labels)
        self.eval()

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> EarlyExitClassifier:
        """A checkpoint directory holding a classifier and its ``branches.json`` +
        ``branches.safetensors``."""
        from tinyfast.models.loading import load_classifier, resolve_model_path

        directory = resolve_model_path(path)
        if not (directory / BRANCHES_FILE).is_file():
            raise ConfigError(f"{directory}: the model has no early exits (no {BRANCHES_FILE}); "
                              "tinyfast selfdistill trains them")
        model = load_classifier(directory)
        _check_model(model)
        config = model.config
        branches = Branches.load(Path(directory), config.hidden_size, config.num_hidden_layers)
        return cls(model, branches)

    @property
    def exits(self) -> dict[int, str]:
        """Layer -> kind of every branch."""
        return self.branches.kinds

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, speed: float = 0.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits float32 [B, C] and exit layers int32 [B] (1-based; ``num_layers`` for rows the
        head answered). Speed 0 runs every layer and no branch: the model's own logits."""
        from transformers.masking_utils import create_bidirectional_mask

        if self.training:
            raise RuntimeError("EarlyExitClassifier runs in eval mode only; call .eval()")
        speed = check_speed(speed)
        bert, config = self.model.bert, self.model.config
        batch = input_ids.shape[0]
        device = input_ids.device
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask = attention_mask.to(torch.long)
        logits = torch.zeros(batch, self.num_labels, dtype=torch.float32, device=device)
        exit_layers = torch.full((batch,), self.num_layers, dtype=torch.int32, device=device)
        if batch == 0:
            return logits, exit_layers
        # Columns past the longest running row can be dropped only when padding is on the right.
        lengths = mask.sum(dim=1)
        positions = torch.arange(mask.shape[1], device=device)
        right_padded = bool(torch.equal(mask, (positions[None, :] < lengths[:, None]).long()))
        exits = set(self.branches.layers) if speed > 0 else set()
        rows = torch.arange(batch, device=device)  # where each running row goes in the output
        hidden = bert.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        for index, layer in enumerate(bert.encoder.layer):
            layer_mask = create_bidirectional_mask(config=config, inputs_embeds=hidden,
                                                   attention_mask=mask)
            hidden = layer(hidden, layer_mask)
            if index + 1 not in exits:
                continue
            branch_logits = self.branches.branch(index + 1)(hidden, mask)
            leave = normalized_entropy(branch_logits) < speed
            if not bool(leave.any()):
                continue
            logits[rows[leave]] = branch_logits[leave].float()
            exit_layers[rows[leave]] = index + 1
            stay = ~leave
            if not bool(stay.any()):
                return logits, exit_layers
            rows, hidden, mask = rows[stay], hidden[stay], mask[stay]
            if right_padded:
                width = int(mask.sum(dim=1).max())
                hidden, mask = hidden[:, :width], mask[:, :width]
        head = self.model.classifier(self.model.dropout(bert.pooler(hidden)))
        logits[rows] = head.float()
        return logits, exit_layers

    def predict(self, split_or_rows: Any, speed: float = 0.0, batch_size: int = 32,
                progress: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Logits float32 [N, C] and exit layers int32 [N] of a tokenized data set, rows in
        input order: a ``tinyfast.data.splits.Split``, or a sequence of rows
        ``{"input_ids": [...], "token_type_ids": [...]}`` (unpadded). Rows are batched by
        length; the results do not depend on ``batch_size`` beyond float rounding."""
        speed = check_speed(speed)
        if hasattr(split_or_rows, "dataset") and hasattr(split_or_rows, "lengths"):
            dataset, lengths = split_or_rows.dataset, list(split_or_rows.lengths)
        else:
            dataset = list(split_or_rows)
            lengths = [len(row["input_ids"]) for row in dataset]
        device = next(self.model.parameters()).device
        pad_id = self.model.config.pad_token_id or 0

        def forward(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            return self(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                        speed=speed)

        logits, exit_layers = predict_batched(forward, dataset, lengths, batch_size=batch_size,
                                              device=device, pad_id=pad_id, progress=progress)
        return logits, exit_layers

    def predictor(self, split: Any, batch_size: int = 32, progress: str | None = None
                  ) -> Callable[[float], tuple[np.ndarray, np.ndarray]]:
        """``predict(speed)`` for ``tinyfast.exits.speed_curve`` over a tokenized split."""
        return lambda speed: self.predict(split, speed, batch_size=batch_size, progress=progress)
