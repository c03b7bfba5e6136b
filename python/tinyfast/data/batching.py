"""Batches for training and evaluation: a dataset over ``Encoded``, dynamic padding, a
length-bucketing batch sampler whose order depends on (seed, epoch) alone, so resuming and DDP
ranks agree on it without talking to each other, and prediction over a dataset in length-sorted
batches (``predict_batched``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from tinyfast.data.readers import Encoded


class EncodedDataset(torch.utils.data.Dataset):
    """Item ``i`` is ``{"input_ids": [...], "token_type_ids": [...], "label": int | float}``;
    ``label`` is absent when the data has no labels."""

    def __init__(self, encoded: Encoded) -> None:
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {
            "input_ids": self.encoded.input_ids[i],
            "token_type_ids": self.encoded.token_type_ids[i],
        }
        if self.encoded.labels is not None:
            item["label"] = self.encoded.labels[i]
        return item


def collate(batch: list[dict], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad to the longest row of this batch (not to max_length: most batches are much shorter).

    Returns long tensors ``input_ids``, ``token_type_ids``, ``attention_mask`` of shape [B, L], and
    ``labels`` (long for integer labels, float32 otherwise) when the items carry labels. Other
    keys are ignored.
    """
    if not batch:
        raise ValueError("collate got an empty batch")
    width = max(len(item["input_ids"]) for item in batch)
    ids, types, mask = [], [], []
    for item in batch:
        n = len(item["input_ids"])
        if len(item["token_type_ids"]) != n:
            raise ValueError("input_ids and token_type_ids differ in length")
        pad = width - n
        ids.append(list(item["input_ids"]) + [pad_id] * pad)
        types.append(list(item["token_type_ids"]) + [0] * pad)
        mask.append([1] * n + [0] * pad)
    out = {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "token_type_ids": torch.tensor(types, dtype=torch.long),
        "attention_mask": torch.tensor(mask, dtype=torch.long),
    }
    has_label = ["label" in item for item in batch]
    if any(has_label):
        if not all(has_label):
            raise ValueError("some items in the batch have a label and some do not")
        labels = [item["label"] for item in batch]
        is_int = all(isinstance(x, int) and not isinstance(x, bool) for x in labels)
        out["labels"] = torch.tensor(labels, dtype=torch.long if is_int else torch.float32)
    return out


class BucketBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Yields this rank's list of indices for each step of an epoch.

    The order is a pure function of (seed, epoch). With ``shuffle``: all indices are permuted with
    ``torch.Generator().manual_seed(seed + epoch)``, cut into chunks of
    ``batch_size * num_replicas * bucket_size``, each chunk sorted by length (so rows of a batch
    have similar lengths and padding stays small), cut into global batches of
    ``batch_size * num_replicas``, and the order of the global batches shuffled with the same
    generator. Without ``shuffle``: global batches are consecutive runs of the input order, which
    evaluation needs to map predictions back.

    Rank ``r`` takes the contiguous slice ``[r * batch_size:(r + 1) * batch_size]`` of every
    global batch, so all ranks take the same number of steps (DDP needs that). The last, partial
    global batch is kept unless ``drop_last`` and split across ranks as evenly as possible (sizes
    differ by at most one). Each index appears exactly once per epoch across ranks, with one
    exception: if that last global batch has fewer rows than ``num_replicas``, its rows are
    repeated cyclically until every rank gets one, because a rank with an empty batch would stall
    DDP. That adds at most ``num_replicas - 1`` duplicates; exact evaluation should run on one rank
    or de-duplicate by index.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        bucket_size: int = 50,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        if batch_size < 1 or bucket_size < 1 or num_replicas < 1:
            raise ValueError("batch_size, bucket_size and num_replicas must be >= 1")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.bucket_size = bucket_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order ``__iter__`` yields (call it before every epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        n, size = len(self.lengths), self.batch_size * self.num_replicas
        return n // size if self.drop_last else math.ceil(n / size)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self._global_batches():
            yield self._shard(batch)

    def _global_batches(self) -> list[list[int]]:
        n, size = len(self.lengths), self.batch_size * self.num_replicas
        if not self.shuffle:
            batches = [list(range(i, min(i + size, n))) for i in range(0, n, size)]
        else:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=g).tolist()
            chunk = size * self.bucket_size
            batches = []
            for start in range(0, n, chunk):
                # sorted() is stable, so equal lengths keep their random order.
                bucket = sorted(order[start : start + chunk], key=self.lengths.__getitem__)
                batches += [bucket[i : i + size] for i in range(0, len(bucket), size)]
        if self.drop_last and batches and len(batches[-1]) < size:
            batches.pop()  # only the last batch of the last chunk can be partial
        if self.shuffle:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        return batches

    def _shard(self, batch: list[int]) -> list[int]:
        r, k = self.rank, self.num_replicas
        if len(batch) < k:
            return [batch[r % len(batch)]]  # documented tail case: repeat rows, never go empty
        base, extra = divmod(len(batch), k)
        start = r * base + min(r, extra)  # the first `extra` ranks take one row more
        return batch[start : start + base + (r < extra)]


@torch.no_grad()
def predict_batched(
    forward: Callable[[dict[str, torch.Tensor]], torch.Tensor | tuple[torch.Tensor, ...]],
    dataset: Sequence[dict[str, Any]],
    lengths: Sequence[int],
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    pad_id: int = 0,
    progress: str | None = None,
) -> tuple[np.ndarray, ...]:
    """Run ``forward`` over a tokenized dataset and return its outputs as numpy arrays, rows in
    dataset order. Rows are batched by length (less padding) and put back in place afterwards.
    ``forward`` maps a padded batch (``input_ids``, ``token_type_ids``, ``attention_mask``) to a
    tensor or a tuple of tensors, rows first; floating outputs become float32. ``progress``
    names a progress bar over the rows (on stderr); None shows none."""
    from tqdm import tqdm

    order = np.argsort(np.asarray(lengths), kind="stable")
    outs: list[np.ndarray] | None = None
    bar = tqdm(total=len(order), desc=progress, unit="row", disable=progress is None,
               dynamic_ncols=True)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        batch = collate([dataset[int(i)] for i in rows], pad_id)
        batch.pop("labels", None)
        batch = {k: v.to(device) for k, v in batch.items()}
        result = forward(batch)
        parts = result if isinstance(result, tuple) else (result,)
        arrays = [(p.float() if p.is_floating_point() else p).cpu().numpy() for p in parts]
        if outs is None:
            outs = [np.empty((len(order), *a.shape[1:]), dtype=a.dtype) for a in arrays]
        for out, array in zip(outs, arrays, strict=True):
            out[rows] = array
        bar.update(len(rows))
    bar.close()
    if outs is None:
        raise ValueError("cannot predict on an empty dataset")
    return tuple(outs)
