"""``tinyfast selfdistill``: FastBERT's second stage. A fine-tuned classifier (finetune's or distill
task's ``OUT/model``) gets a branch classifier after its layers; the backbone and the final
classifier stay frozen and teach the branches, on unlabeled text, with the sum over branches of
``KL(final classifier || branch)``. The output is the unchanged model plus ``branches.json`` and
``branches.safetensors``: ``tinyfast export`` turns it into an early-exit bundle."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tinyfast import train
from tinyfast.data import TaskMeta
from tinyfast.data.batching import collate
from tinyfast.data.splits import Split, heldout_split, load_unlabeled
from tinyfast.errors import ConfigError
from tinyfast.kernels.soft_cross_entropy import soft_cross_entropy
from tinyfast.models import (
    check_max_length,
    count_parameters,
    load_classifier,
    load_tokenizer,
    resolve_model_path,
    save_classifier,
)
from tinyfast.models.branches import BRANCHES_FILE, DEFAULT_HEADS, DEFAULT_WIDTH, KINDS, Branches
from tinyfast.train import distributed
from tinyfast.train.outputs import claim_out_dir, write_summary

__all__ = ["DEFAULT_EPOCHS", "DEFAULT_LR", "SelfDistillStep", "default_exit_layers",
           "selfdistill"]

# FastBERT's official self-distillation learning rate.
DEFAULT_LR = 2e-4
# The branches' held-out KL still falls after 3 epochs: over 10, the MiniLM teachers' went from
# 0.46 to 0.24 (TREC) and from 0.43 to 0.40 (SST-2, best at epoch 5); the best branches on the
# held-out rows are the ones kept, and a step is cheap (the frozen backbone runs forward only).
DEFAULT_EPOCHS = 10.0


class SelfDistillStep(nn.Module):
    """Loss = sum over branches of ``KL(softmax(z_final / T) || softmax(z_branch / T))``.

    The classifier is frozen and kept in eval mode whatever mode the loop sets (no dropout): the
    targets and the hidden states the branches read are the ones inference sees.
    """

    uses_every_parameter = True  # every branch gets a loss; the frozen model has no trainables

    def __init__(self, model: nn.Module, branches: Branches, temperature: float = 1.0) -> None:
        super().__init__()
        if not (np.isfinite(temperature) and temperature > 0):
            raise ConfigError(f"temperature must be finite and > 0 (got {temperature})")
        self.model = model.requires_grad_(False).eval()
        self.branches = branches
        self.temperature = float(temperature)

    def train(self, mode: bool = True) -> SelfDistillStep:
        super().train(mode)
        self.model.eval()
        return self

    def logits(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(branch logits [K, B, C] in exit-layer order, final logits [B, C])."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            out = self.model(**inputs, output_hidden_states=True)
        by_layer = self.branches(out.hidden_states, inputs.get("attention_mask"))
        return torch.stack([by_layer[layer] for layer in self.branches.layers]), out.logits

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        student, teacher = self.logits(batch)
        per_branch = soft_cross_entropy(student, teacher.detach(), self.temperature, kl=True)
        values = per_branch.detach().tolist()
        logs = {f"kl_layer{layer}": v
                for layer, v in zip(self.branches.layers, values, strict=True)}
        return per_branch.sum(), logs


def default_exit_layers(num_layers: int) -> list[int]:
    """Every layer but the last (after the last one the model's own classifier answers)."""
    return list(range(1, num_layers))


def _heldout_metrics(
    step: SelfDistillStep, split: Split, device: torch.device, pad_id: int, batch_size: int = 64
) -> Callable[[nn.Module], dict[str, float]]:
    """Per branch on held-out rows: KL to the final classifier and how often the two agree on the
    label; ``heldout_kl`` (their sum, the training loss) picks the best branches."""

    def evaluate(module: nn.Module) -> dict[str, float]:
        layers = step.branches.layers
        kl = np.zeros(len(layers))
        agree = np.zeros(len(layers))
        order = np.argsort(np.asarray(split.lengths), kind="stable")
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = collate([split.dataset[int(i)] for i in idx], pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.no_grad():
                student, teacher = step.logits(batch)
                per_branch = soft_cross_entropy(student, teacher, step.temperature, kl=True)
            kl += per_branch.double().cpu().numpy() * len(idx)
            same = student.argmax(-1) == teacher.argmax(-1)[None]
            agree += same.sum(dim=1).double().cpu().numpy()
        rows = max(len(order), 1)
        metrics = {"heldout_kl": float(kl.sum() / rows)}
        for i, layer in enumerate(layers):
            metrics[f"kl_layer{layer}"] = float(kl[i] / rows)
            metrics[f"agreement_layer{layer}"] = float(agree[i] / rows)
        return metrics

    return evaluate


def _check_layers(layers: Sequence[int] | None, num_layers: int) -> list[int]:
    if num_layers < 2:
        raise ConfigError(f"the model has {num_layers} layer; early exits need at least 2")
    if layers is None:
        return default_exit_layers(num_layers)
    checked = sorted(set(layers))
    if not checked:
        raise ConfigError("--layers: give at least one layer")
    bad = [layer for layer in checked if not 1 <= layer < num_layers]
    if bad:
        raise ConfigError(f"--layers: {bad[0]} is not an exit layer of this {num_layers}-layer "
                          f"model; exits sit after layers 1..{num_layers - 1}")
    return checked


def selfdistill(
    model: str | Path,
    unlabeled: str | Path,
    out: str | Path,
    *,
    branch: str = "fastbert",
    layers: Sequence[int] | None = None,
    temperature: float = 1.0,
    width: int = DEFAULT_WIDTH,
    heads: int = DEFAULT_HEADS,
    max_length: int | None = None,
    config: train.TrainConfig | None = None,
    heldout: float = 0.05,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Trains early-exit branches of ``model`` (a classifier checkpoint) by self-distillation on
    ``unlabeled`` (a TSV/JSONL file with the model's text columns, whose labels are ignored, or
    plain text, one text a line). ``out/model`` receives the model, unchanged, with the branches
    that were best on a held-out ``heldout`` share of the text (at most 1000 rows).
    ``branch``: "fastbert" (FastBERT's attention branch, ``width`` and ``heads``) or "linear";
    ``layers``: the 1-based layers that get a branch (default: every layer but the last)."""
    config = config or train.TrainConfig(epochs=DEFAULT_EPOCHS, lr=DEFAULT_LR, batch_size=32,
                                         warmup=0.1)
    if branch not in KINDS:
        raise ConfigError(f"branch must be one of {', '.join(KINDS)} (got {branch!r})")
    if not 0 <= heldout < 1:
        raise ConfigError(f"heldout is a share of the text in [0, 1) (got {heldout})")
    out = Path(out)
    ctx = distributed.setup(config.device)
    claim_out_dir(ctx, out, "selfdistill", overwrite)
    source = resolve_model_path(model)
    meta = TaskMeta.load(source)
    if meta.task != "classification" or meta.num_labels < 2:
        raise ConfigError(f"{source}: early exit needs a classifier with at least 2 labels "
                          f"(this model is a {meta.task} model with {meta.num_labels} output(s))")
    tokenizer = load_tokenizer(source)
    classifier = load_classifier(source, meta)
    num_layers = classifier.config.num_hidden_layers
    exit_layers = _check_layers(layers, num_layers)
    max_length = max_length or meta.max_length
    check_max_length(max_length, classifier.config)
    text = load_unlabeled(tokenizer, unlabeled, replace(meta, max_length=max_length))
    train_split, held_split = heldout_split(text, heldout, 1000, config.seed)

    torch.manual_seed(config.seed)  # the same seed starts the same branches
    branches = Branches(classifier.config.hidden_size, meta.num_labels,
                        [(layer, branch) for layer in exit_layers], width, heads)
    step = SelfDistillStep(classifier, branches, temperature)
    pad_id = tokenizer.pad_token_id or 0

    def save_best(metrics: dict[str, float]) -> None:
        save_classifier(classifier, tokenizer, meta, out / "model", extra=branches.save)

    result = train.run(
        step, train_split.dataset, train_split.lengths, config, out / "work",
        evaluate=_heldout_metrics(step, held_split, ctx.device, pad_id) if len(held_split)
        else None,
        metric="heldout_kl", greater_is_better=False, on_best=save_best, resume=resume,
        pad_id=pad_id, desc="selfdistill", ctx=ctx,
    )
    summary = {
        "command": "selfdistill",
        "model": str(model),
        "unlabeled": str(unlabeled),
        "branch": branch,
        "layers": exit_layers,
        "width": width if branch == "fastbert" else None,
        "heads": heads if branch == "fastbert" else None,
        "temperature": temperature,
        "replaced_branches": (source / BRANCHES_FILE).is_file(),
        "branch_parameters": count_parameters(branches),
        "model_parameters": count_parameters(classifier),
        "train_rows": len(train_split),
        "heldout_rows": len(held_split),
        "best": result.best,
        "history": result.history,
        "steps": result.steps,
        "seconds": result.seconds,
        "config": asdict(config),
        "max_length": max_length,
        "world_size": ctx.world_size,
    }
    write_summary(ctx, out, summary)
    return summary

