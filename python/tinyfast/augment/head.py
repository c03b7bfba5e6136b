"""``tinyfast fit-mlm-head``: give an encoder without a masked-LM head (the packaged MiniLM
teacher) one, so that augmentation can ask it for words.

The head is BERT's: a dense layer, GELU and LayerNorm, then a decoder tied to the frozen word
embeddings plus a bias. Only the dense layer, the LayerNorm and the bias learn; the encoder is
frozen and runs without gradients, so a step costs one forward of the encoder. Each step masks
``mask_prob`` of the real tokens of its rows with ``[MASK]`` (how augmentation asks); the
masking is drawn from the torch generator the training loop seeds per step, so a resumed run
masks the same tokens. Held-out lines, masked once with a fixed seed, measure top-1 and top-K
accuracy of the masked words.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tinyfast import train
from tinyfast._io import replace_dir
from tinyfast.data import Columns, TaskMeta
from tinyfast.data.batching import collate
from tinyfast.data.splits import Split, corpus_examples, encode_split, heldout_split
from tinyfast.errors import ConfigError
from tinyfast.models import check_max_length, load_encoder, load_tokenizer
from tinyfast.train import distributed
from tinyfast.train.outputs import claim_out_dir, write_summary

HELDOUT_CAP = 2000
TOP_K = 15


def _mask(batch: dict[str, torch.Tensor], share: float, mask_id: int, special: torch.Tensor,
          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked input ids, labels: the original id at masked positions, -100 elsewhere). At least
    one token of every row is masked."""
    ids = batch["input_ids"]
    real = (batch["attention_mask"] == 1) & ~torch.isin(ids, special)
    draw = torch.rand(ids.shape, generator=generator, device=ids.device)
    chosen = real & (draw < share)
    # Rows where nothing was drawn mask their real token with the smallest draw.
    none = real.any(dim=1) & ~chosen.any(dim=1)
    if none.any():
        lowest = torch.where(real, draw, torch.full_like(draw, 2.0)).argmin(dim=1)
        chosen[none, lowest[none]] = True
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    return torch.where(chosen, torch.full_like(ids, mask_id), ids), labels


class HeadStep(nn.Module):
    """Cross-entropy of the head's predictions at masked positions; the encoder stays frozen and
    in eval mode (no dropout), whatever mode the loop sets."""

    def __init__(self, model: nn.Module, mask_id: int, special: list[int], share: float) -> None:
        super().__init__()
        self.model = model
        self.mask_id = mask_id
        self.share = share
        self.register_buffer("special", torch.tensor(special, dtype=torch.long), persistent=False)
        for p in model.base_model.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> HeadStep:
        super().train(mode)
        self.model.base_model.eval()
        return self

    def logits_at_masks(self, batch, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        ids, labels = _mask(batch, self.share, self.mask_id, self.special, generator)
        with torch.no_grad():
            hidden = self.model.base_model(
                input_ids=ids, attention_mask=batch["attention_mask"],
                token_type_ids=batch["token_type_ids"]).last_hidden_state
        at = labels != -100
        return self.model.cls(hidden[at]), labels[at]

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        logits, labels = self.logits_at_masks(batch)
        return nn.functional.cross_entropy(logits.float(), labels), {}


def _accuracy(step: HeadStep, split: Split, device, pad_id: int, seed: int,
              batch_size: int = 64):
    """Top-1 and top-K accuracy at masked positions of the held-out rows, masked the same way
    at every evaluation."""

    def evaluate(module: nn.Module) -> dict[str, float]:
        generator = torch.Generator(device=device).manual_seed(seed)
        order = np.argsort(np.asarray(split.lengths), kind="stable")
        top1 = topk = total = 0
        loss = 0.0
        for start in range(0, len(order), batch_size):
            rows = [split.dataset[int(i)] for i in order[start:start + batch_size]]
            batch = {k: v.to(device) for k, v in collate(rows, pad_id).items()}
            logits, labels = step.logits_at_masks(batch, generator)
            best = logits.topk(TOP_K, dim=-1).indices
            top1 += int((best[:, 0] == labels).sum())
            topk += int((best == labels[:, None]).any(dim=1).sum())
            loss += float(nn.functional.cross_entropy(logits.float(), labels, reduction="sum"))
            total += len(labels)
        total = max(total, 1)
        return {"top1": top1 / total, f"top{TOP_K}": topk / total, "loss": loss / total,
                "masked_tokens": total}

    return evaluate


def fit_mlm_head(
    teacher: str,
    corpus: str | Path,
    out: str | Path,
    *,
    max_length: int = 64,
    mask_prob: float = 0.15,
    heldout: float = 0.02,
    config: train.TrainConfig | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Fits a masked-LM head on the frozen encoder ``teacher`` over the plain-text ``corpus``;
    the masked LM (encoder + head, a transformers ``*ForMaskedLM`` checkpoint with the
    tokenizer) goes to ``out/model``, the held-out accuracies to ``out/metrics.json``."""
    from transformers import AutoModelForMaskedLM

    config = config or train.TrainConfig(epochs=1, lr=1e-3, batch_size=64, warmup=0.05)
    if not 0 < mask_prob < 1:
        raise ConfigError(f"mask_prob must be in (0, 1) (got {mask_prob})")
    if not 0 <= heldout < 1:
        raise ConfigError(f"heldout is a share of the corpus in [0, 1) (got {heldout})")
    out = Path(out)
    ctx = distributed.setup(config.device)
    claim_out_dir(ctx, out, "fit-mlm-head", overwrite)
    tokenizer = load_tokenizer(teacher)
    encoder = load_encoder(teacher)
    check_max_length(max_length, encoder.config, "the teacher")
    if tokenizer.mask_token_id is None:
        raise ConfigError(f"{teacher}: the tokenizer has no mask token")
    try:
        model = AutoModelForMaskedLM.from_config(encoder.config)
    except ValueError as exc:
        raise ConfigError(f"{teacher}: transformers has no masked-LM model for this "
                          f"architecture ({exc})") from None
    if not hasattr(model, "cls"):
        raise ConfigError(f"{teacher}: fit-mlm-head fits BERT's head (model.cls); this "
                          f"architecture ({type(model).__name__}) has another")
    model.base_model.load_state_dict(encoder.state_dict(), strict=False)
    model.tie_weights()  # the decoder shares the (frozen) word embeddings

    meta = TaskMeta(task="classification", labels=[], columns=Columns(label=None),
                    max_length=max_length)
    split = encode_split(tokenizer, corpus_examples(corpus), meta, with_labels=False)
    train_split, held = heldout_split(split, heldout, HELDOUT_CAP, config.seed)
    step = HeadStep(model, tokenizer.mask_token_id, list(tokenizer.all_special_ids), mask_prob)
    pad_id = tokenizer.pad_token_id or 0
    model.config.architectures = [type(model).__name__]

    def save_best(metrics: dict[str, float]) -> None:
        # Written beside, then swapped in: a reader never sees a half-written checkpoint.
        tmp = Path(tempfile.mkdtemp(prefix=".model.tmp-", dir=out))
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            replace_dir(tmp, out / "model")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    evaluate = _accuracy(step, held, ctx.device, pad_id, config.seed) if len(held) else None
    result = train.run(step, train_split.dataset, train_split.lengths, config, out / "work",
                       evaluate=evaluate, metric=f"top{TOP_K}", on_best=save_best,
                       resume=resume, pad_id=pad_id, desc="fit-mlm-head", ctx=ctx)
    summary = {
        "command": "fit-mlm-head",
        "teacher": str(teacher),
        "corpus": str(corpus),
        "train_rows": len(train_split),
        "heldout_rows": len(held),
        "mask_prob": mask_prob,
        "best": result.best,
        "history": result.history,
        "steps": result.steps,
        "seconds": result.seconds,
        "config": asdict(config),
        "max_length": max_length,
        "trainable_parameters": sum(p.numel() for p in step.parameters() if p.requires_grad),
    }
    write_summary(ctx, out, summary)
    return summary
