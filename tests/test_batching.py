"""Dataset, collation and the bucketing sampler in tinyfast.data.batching."""

from __future__ import annotations

import random

import pytest
import torch

from tinyfast.data import Encoded
from tinyfast.data.batching import BucketBatchSampler, EncodedDataset, collate


def random_lengths(n: int, seed: int = 1) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(3, 128) for _ in range(n)]


def epoch(sampler: BucketBatchSampler, e: int) -> list[list[int]]:
    sampler.set_epoch(e)
    return list(sampler)


def flat(batches: list[list[int]]) -> list[int]:
    return [i for b in batches for i in b]


# ---------------------------------------------------------------------------------------------
# Dataset and collate


def test_dataset_items_and_collate() -> None:
    enc = Encoded([[2, 5, 3], [2, 3]], [[0, 0, 0], [0, 0]], [1, 0])
    data = EncodedDataset(enc)
    assert len(data) == 2
    assert data[1] == {"input_ids": [2, 3], "token_type_ids": [0, 0], "label": 0}
    out = collate([data[0], data[1]], pad_id=9)
    assert out["input_ids"].tolist() == [[2, 5, 3], [2, 3, 9]]
    assert out["token_type_ids"].tolist() == [[0, 0, 0], [0, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert out["labels"].tolist() == [1, 0]
    for key in ("input_ids", "token_type_ids", "attention_mask", "labels"):
        assert out[key].dtype == torch.long


def test_collate_pairs_regression_and_unlabeled() -> None:
    items = [
        {"input_ids": [2, 5, 3, 6, 3], "token_type_ids": [0, 0, 0, 1, 1], "label": 0.5},
        {"input_ids": [2, 3, 3], "token_type_ids": [0, 0, 1], "label": 2.0},
    ]
    out = collate(items)
    assert out["token_type_ids"].tolist() == [[0, 0, 0, 1, 1], [0, 0, 1, 0, 0]]
    assert out["input_ids"].shape == (2, 5)
    assert out["labels"].dtype == torch.float32
    assert out["labels"].tolist() == [0.5, 2.0]

    unlabeled = EncodedDataset(Encoded([[2, 3]], [[0, 0]], None))
    assert "label" not in unlabeled[0]
    out = collate([unlabeled[0]])
    assert set(out) == {"input_ids", "token_type_ids", "attention_mask"}


def test_collate_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        collate([])
    with pytest.raises(ValueError, match="label"):
        collate(
            [
                {"input_ids": [1], "token_type_ids": [0], "label": 1},
                {"input_ids": [1], "token_type_ids": [0]},
            ]
        )


def test_with_dataloader() -> None:
    lengths = random_lengths(30)
    enc = Encoded([[7] * n for n in lengths], [[0] * n for n in lengths], list(range(30)))
    sampler = BucketBatchSampler(enc.lengths, batch_size=4, bucket_size=2, seed=3)
    loader = torch.utils.data.DataLoader(
        EncodedDataset(enc), batch_sampler=sampler, collate_fn=collate
    )
    seen = []
    for batch in loader:
        width = batch["input_ids"].shape[1]
        assert batch["attention_mask"].sum(1).max() == width  # padded to this batch's longest
        seen += batch["labels"].tolist()
    assert sorted(seen) == list(range(30))


# ---------------------------------------------------------------------------------------------
# Sampler


def test_sampler_covers_every_index_once_and_len_matches() -> None:
    lengths = random_lengths(103)
    for shuffle in (True, False):
        sampler = BucketBatchSampler(lengths, batch_size=8, shuffle=shuffle, bucket_size=3)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 13
        assert sorted(flat(batches)) == list(range(103))
        assert sorted(len(b) for b in batches) == [7] + [8] * 12


def test_sampler_without_shuffle_keeps_input_order() -> None:
    sampler = BucketBatchSampler(random_lengths(10), batch_size=4, shuffle=False)
    assert epoch(sampler, 0) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert epoch(sampler, 5) == epoch(sampler, 0)


def test_sampler_is_a_function_of_seed_and_epoch() -> None:
    lengths = random_lengths(200)
    a = BucketBatchSampler(lengths, batch_size=8, seed=7, bucket_size=4)
    b = BucketBatchSampler(lengths, batch_size=8, seed=7, bucket_size=4)
    assert epoch(a, 3) == epoch(b, 3)  # fresh objects agree: resuming needs nothing else
    assert list(a) == list(a)  # iterating twice gives the same epoch
    assert epoch(a, 0) != epoch(a, 1)  # set_epoch changes the order
    other_seed = BucketBatchSampler(lengths, batch_size=8, seed=8, bucket_size=4)
    assert epoch(other_seed, 0) != epoch(a, 0)


def test_sampler_order_matches_the_documented_recipe() -> None:
    lengths = random_lengths(50)
    sampler = BucketBatchSampler(lengths, batch_size=5, seed=4, bucket_size=2)
    g = torch.Generator().manual_seed(4 + 2)
    order = torch.randperm(50, generator=g).tolist()
    batches = []
    for start in range(0, 50, 10):
        bucket = sorted(order[start : start + 10], key=lengths.__getitem__)
        batches += [bucket[:5], bucket[5:]]
    expected = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
    assert epoch(sampler, 2) == expected


def test_sampler_batches_are_length_homogeneous() -> None:
    lengths = random_lengths(1000)
    bucketed = list(BucketBatchSampler(lengths, batch_size=16, bucket_size=20))
    plain = list(BucketBatchSampler(lengths, batch_size=16, bucket_size=1))

    def padding(batches: list[list[int]]) -> int:
        return sum(
            max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches
        )

    # bucket_size=1 still sorts inside each batch but cannot group similar rows across batches.
    assert padding(bucketed) * 5 < padding(plain)
    # Batches are not in length order across the epoch (that would bias training).
    maxima = [max(lengths[i] for i in b) for b in bucketed]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("n", [64, 61, 58])  # tails of 0, 5 and 2 rows
def test_two_replicas_split_the_one_replica_global_batches(shuffle: bool, n: int) -> None:
    lengths = random_lengths(n)
    common = {"shuffle": shuffle, "seed": 11, "bucket_size": 3}
    single = epoch(BucketBatchSampler(lengths, batch_size=8, **common), 1)
    ranks = [
        BucketBatchSampler(lengths, batch_size=4, num_replicas=2, rank=r, **common) for r in (0, 1)
    ]
    shards = [epoch(s, 1) for s in ranks]
    assert len(shards[0]) == len(shards[1]) == len(ranks[0]) == len(single)  # same step count
    for whole, first, second in zip(single, *shards, strict=True):
        assert first + second == whole
        assert first and second and abs(len(first) - len(second)) <= 1
        if len(whole) == 8:
            assert len(first) == 4
    assert sorted(flat(shards[0]) + flat(shards[1])) == list(range(n))


def test_uneven_tail_is_split_as_evenly_as_possible() -> None:
    # 22 rows, 3 ranks of 2: global batches of 6, tail of 4 -> sizes 2, 1, 1.
    shards = [
        list(BucketBatchSampler([5] * 22, 2, shuffle=False, num_replicas=3, rank=r))
        for r in range(3)
    ]
    assert [s[-1] for s in shards] == [[18, 19], [20], [21]]


def test_tail_smaller_than_replicas_is_padded_by_repeating() -> None:
    # 13 rows, 4 ranks of 3: global batches of 12 and a tail of one row.
    shards = [
        epoch(BucketBatchSampler([5] * 13, 3, shuffle=False, num_replicas=4, rank=r), 0)
        for r in range(4)
    ]
    assert all(len(s) == 2 for s in shards)
    assert [s[-1] for s in shards] == [[12], [12], [12], [12]]
    covered = flat([b for s in shards for b in s])
    assert sorted(set(covered)) == list(range(13)) and len(covered) == 13 + 3


def test_drop_last() -> None:
    lengths = random_lengths(61)
    for r in (0, 1):
        sampler = BucketBatchSampler(lengths, 4, num_replicas=2, rank=r, drop_last=True)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 7
        assert all(len(b) == 4 for b in batches)
    plain = list(BucketBatchSampler(random_lengths(61), 4, shuffle=False, drop_last=True))
    assert flat(plain) == list(range(60))


def test_sampler_edge_cases_and_validation() -> None:
    empty = BucketBatchSampler([], batch_size=4)
    assert len(empty) == 0 and list(empty) == []
    with pytest.raises(ValueError, match="rank"):
        BucketBatchSampler([1, 2], batch_size=1, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="batch_size"):
        BucketBatchSampler([1, 2], batch_size=0)
