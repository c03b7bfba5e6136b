"""The runtime's Rust tokenizer (``Runtime.tokenize``: the bundle's tokenizer.json, the MiniLM
WordPiece vocabulary, through to padded int64 arrays) on real sentences of SST-2's dev split, one
sentence or 32 at a time.

Skipped when the shared data is missing (``--data DIR`` or ``$TINYFAST_BENCH_DATA`` name the
folder holding sst2/dev.tsv). The ids must be the Hugging Face tokenizer's, truncated to the
bundle's max_length.
"""

from __future__ import annotations

import numpy as np
import pytest
from _micro import record_rate

import tinyfast

BATCHES = (1, 32)


@pytest.fixture(scope="module")
def runtime(minilm_bundle) -> tinyfast.Runtime:
    return tinyfast.Runtime.load(minilm_bundle.path, threads=1)


def texts_for(sentences: list[str], batch: int) -> list[str]:
    """32 sentences in file order; one sentence of median length for batch 1."""
    if batch == 1:
        by_length = sorted(sentences[:200], key=lambda s: (len(s.split()), s))
        return [by_length[len(by_length) // 2]]
    return sentences[:batch]


@pytest.mark.benchmark(group="tokenize")
@pytest.mark.parametrize("batch", BATCHES)
def test_tokenize(benchmark, sst2_dev, runtime, minilm_bundle, batch: int) -> None:
    # sst2_dev first: without the data the test skips before the bundle is built.
    texts = texts_for(sst2_dev.texts, batch)
    got = benchmark(runtime.tokenize, texts)
    want = minilm_bundle.tokenizer(texts, truncation=True, max_length=runtime.max_length)
    for row, ids in enumerate(want["input_ids"]):
        n = int(got["lengths"][row])
        assert n == len(ids) and np.array_equal(got["input_ids"][row, :n], ids), \
            f"row {row}: the runtime's ids differ from the Hugging Face tokenizer's"
    tokens = int(got["lengths"].sum())
    benchmark.extra_info.update(batch=batch, tokens=tokens, source=sst2_dev.source,
                                tokenizer="MiniLM WordPiece (bundle tokenizer.json)")
    record_rate(benchmark, tokens / 1e3, "ktokens")
