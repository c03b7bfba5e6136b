"""A toy model and data set for the training-loop tests; also run as a script under torchrun
(see test_train.py's DDP test), where it trains and writes the final weights."""

from __future__ import annotations

import argparse
import random
import sys

import torch
from safetensors.torch import save_file
from torch import nn

from tinyfast import train

VOCAB = 50


class ToyClassifier(nn.Module):
    """Mean of token embeddings -> dropout -> linear; the loss is a row mean, like BERT's."""

    def __init__(self, dropout: float = 0.1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, 16, padding_idx=0)
        self.norm = nn.LayerNorm(16)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(16, 3)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        mask = batch["attention_mask"].unsqueeze(-1).float()
        pooled = (self.embed(batch["input_ids"]) * mask).sum(1) / mask.sum(1)
        logits = self.out(self.dropout(self.norm(pooled)))
        loss = nn.functional.cross_entropy(logits, batch["labels"])
        return loss, {"ce": float(loss.detach())}


def toy_dataset(rows: int = 96, seed: int = 1) -> tuple[list[dict], list[int]]:
    rng = random.Random(seed)
    items = []
    for _ in range(rows):
        length = rng.randint(2, 12)
        ids = [rng.randint(1, VOCAB - 1) for _ in range(length)]
        items.append({"input_ids": ids, "token_type_ids": [0] * length, "label": sum(ids) % 3})
    return items, [len(x["input_ids"]) for x in items]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--work", required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    module = ToyClassifier(dropout=0.0)
    items, lengths = toy_dataset()
    config = train.TrainConfig(epochs=2, lr=1e-2, batch_size=8, warmup=0.1, progress=False,
                               save_every=0, device="cpu")
    train.run(module, items, lengths, config, args.work)
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, args.out)
    from tinyfast.train import distributed

    distributed.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
