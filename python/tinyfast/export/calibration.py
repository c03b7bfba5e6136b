"""Calibration for int8 export: the input statistics of every encoder linear of a BERT
classifier over unlabeled text (the task's sentences, a plain-text corpus), which the bundle
writer turns into smoothing factors and GPTQ-rounded weights (``tinyfast.bundle.smoothing``,
``tinyfast.bundle.gptq``). Padding tokens are left out: the runtime never sees them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinyfast.bundle.writer import InputStats
from tinyfast.errors import ConfigError

__all__ = ["DEFAULT_CALIBRATION_ROWS", "calibration_stats", "linear_inputs", "spread_rows"]

# About 20k tokens of SST-2's sentences. Among 256-4096 rows this did best on held-out text
# (benches/RESULTS.md, "Calibration on held-out text"): the smoothing factors follow each
# feature's maximum, which keeps growing with the rows seen.
DEFAULT_CALIBRATION_ROWS = 1024


def linear_inputs(model: Any) -> dict[str, torch.nn.Module]:
    """Bundle name of each encoder linear -> the module whose input is that linear's input (the
    query projection stands for the stacked qkv, which shares its input)."""
    sites: dict[str, torch.nn.Module] = {}
    for i, layer in enumerate(model.bert.encoder.layer):
        sites[f"layers.{i}.qkv"] = layer.attention.self.query
        sites[f"layers.{i}.attn_out"] = layer.attention.output.dense
        sites[f"layers.{i}.ffn_in"] = layer.intermediate.dense
        sites[f"layers.{i}.ffn_out"] = layer.output.dense
    return sites


def spread_rows(n: int, limit: int) -> list[int]:
    """At most ``limit`` row indices spread evenly over ``0..n`` (all of them when n <= limit)."""
    if n <= limit:
        return list(range(n))
    return sorted({int(i) for i in np.linspace(0, n - 1, limit)})


@torch.no_grad()
def calibration_stats(model: Any, path: str | os.PathLike[str], tokenizer: Any, meta: Any,
                      rows: int = DEFAULT_CALIBRATION_ROWS, batch_size: int = 32
                      ) -> tuple[dict[str, InputStats], dict[str, Any]]:
    """Statistics of every encoder linear's input over up to ``rows`` rows of ``path`` (read as
    ``tinyfast selfdistill --unlabeled`` reads it), and a record of what was used."""
    from tinyfast.data.batching import predict_batched
    from tinyfast.data.splits import encode_split, read_unlabeled

    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ConfigError(f"calibration rows must be an integer >= 1, got {rows!r}")
    examples = read_unlabeled(path, meta)
    if not examples:
        raise ConfigError(f"{path}: no calibration rows")
    chosen = spread_rows(len(examples), rows)  # only these are tokenized
    split = encode_split(tokenizer, [examples[i] for i in chosen], meta, with_labels=False)
    dataset = [split.dataset[i] for i in range(len(split))]
    lengths = list(split.lengths)
    sites = linear_inputs(model)
    acc: dict[str, list[Any]] = {name: [None, None, 0] for name in sites}
    current: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(_module: Any, args: tuple[Any, ...]) -> None:
            x = args[0][current["mask"]].detach().to(torch.float64)  # real tokens only
            a = acc[name]
            amax, moments = x.abs().amax(dim=0), x.T @ x
            a[0] = amax if a[0] is None else torch.maximum(a[0], amax)
            a[1] = moments if a[1] is None else a[1] + moments
            a[2] += x.shape[0]
        return record

    def forward(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        current["mask"] = batch["attention_mask"].bool()
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     token_type_ids=batch["token_type_ids"]).logits

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in sites.items()]
    try:
        model.eval()
        predict_batched(forward, dataset, lengths, batch_size=batch_size,
                        device=next(model.parameters()).device,
                        pad_id=model.config.pad_token_id or 0)
    finally:
        for h in handles:
            h.remove()
    stats = {name: InputStats(a[0].cpu().numpy(), a[1].cpu().numpy(), int(a[2]))
             for name, a in acc.items()}
    record = {"file": str(Path(path)), "rows": len(chosen), "tokens": int(sum(lengths))}
    return stats, record
