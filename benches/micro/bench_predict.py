"""``Runtime.predict`` end to end (tokenization, the 6-layer int8 encoder, the head) on a
MiniLM-L6-shaped bundle with random weights, one sentence or 32 sentences of exactly 64 tokens
per call, speed 0 (every row runs every layer), the runtime's default kernel, one thread.

Texts are generated (a fixed word list and seed, ``tinyfast.bench.workload``), so the suite needs
no data files; the cost depends on the token count, not on the words. Checked: shapes, finite
probabilities, every row leaving at the last layer, the batch-1 logits bit for bit equal to the
portable kernels' and row 0 of the batch-32 call equal to that row predicted alone.
"""

from __future__ import annotations

import numpy as np
import pytest
from _micro import record_rate, same_bits

import tinyfast
from tinyfast.bench.workload import exact_length_texts, load_source_texts

BATCHES = (1, 32)
SEQ_LEN = 64
THREADS = 1


@pytest.fixture(scope="module")
def runtime(minilm_bundle) -> tinyfast.Runtime:
    return tinyfast.Runtime.load(minilm_bundle.path, threads=THREADS)


@pytest.fixture(scope="module")
def texts(minilm_bundle) -> list[str]:
    source, _ = load_source_texts(None, "sentence", seed=0)
    return exact_length_texts(minilm_bundle.tokenizer, source, SEQ_LEN, max(BATCHES))


@pytest.mark.benchmark(group="predict")
@pytest.mark.parametrize("batch", BATCHES)
def test_predict(benchmark, runtime, minilm_bundle, texts, batch: int) -> None:
    inputs = texts[:batch]
    out = benchmark(runtime.predict, inputs, speed=0.0, batch_size=32)
    assert out.labels.shape == (batch,)
    assert out.probabilities.shape == (batch, 2)
    assert np.all(np.isfinite(out.probabilities))
    np.testing.assert_allclose(out.probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert np.all(out.exit_layers == minilm_bundle.layers)
    if batch == 1:
        portable = tinyfast.Runtime.load(minilm_bundle.path, threads=THREADS, kernel="portable")
        want = portable.predict(inputs, speed=0.0).logits
        assert same_bits(out.logits, want), f"{runtime.kernel} logits differ from portable's"
    else:
        alone = runtime.predict(inputs[:1], speed=0.0).logits
        assert same_bits(out.logits[:1], alone), "row 0 depends on the rest of the batch"
    benchmark.extra_info.update(batch=batch, seq=SEQ_LEN, kernel=runtime.kernel,
                                threads=runtime.threads, layers=minilm_bundle.layers,
                                hidden=384, heads=12, ffn=1536, speed=0.0)
    record_rate(benchmark, batch, "sentences")
