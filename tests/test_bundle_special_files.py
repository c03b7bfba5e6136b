"""``Runtime.load`` on bundles whose files are not what they should be: a character device
(through a symbolic link), a FIFO or a directory in place of a file, and a ``tokenizer.json`` that
makes the ``tokenizers`` crate panic. Each must raise ``tinyfast.BundleError`` at once with a
one-line message naming the file, and print nothing to stderr.

Every load runs in its own Python process with a timeout, so a loader that blocks on a FIFO or
reads ``/dev/zero`` forever fails the test instead of hanging (or exhausting memory in) the run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).parent))
import runtime_fixtures as rf  # noqa: E402

TIMEOUT = 60
FILES = ["tinyfast.json", "model.safetensors", "tokenizer.json"]

LOAD = """
import json, sys
import tinyfast
try:
    tinyfast.Runtime.load(sys.argv[1], threads=1)
except tinyfast.BundleError as e:
    print(json.dumps({"error": "BundleError", "message": str(e), "path": e.path}))
else:
    print(json.dumps({"error": None}))
"""


@pytest.fixture(scope="module")
def good_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rf.build_bundles(tmp_path_factory.mktemp("special")).int8


def load_in_subprocess(bundle: Path) -> tuple[dict, str]:
    """The outcome of loading ``bundle`` in a fresh process, and what it printed to stderr."""
    # Limit the child's memory too: a loader that reads /dev/zero must not take the machine down.
    # 8 GiB of address space (thread stacks and malloc arenas count): a healthy load of the tiny
    # bundle needs far less.
    def limit_memory() -> None:
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    try:
        done = subprocess.run([sys.executable, "-c", LOAD, str(bundle)], capture_output=True,
                              text=True, timeout=TIMEOUT, preexec_fn=limit_memory, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail(f"Runtime.load did not finish within {TIMEOUT} s")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def make_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


def make_fifo(path: Path) -> None:
    os.mkfifo(path)


def make_dir(path: Path) -> None:
    path.mkdir()


@pytest.mark.parametrize("file", FILES)
@pytest.mark.parametrize("make, kind", [(make_zero, "a character device"),
                                         (make_fifo, "a FIFO"),
                                         (make_dir, "a directory")],
                         ids=["dev-zero", "fifo", "directory"])
def test_special_file_raises_bundle_error(good_bundle: Path, tmp_path: Path, file: str,
                                          make, kind: str) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(good_bundle, bundle)
    (bundle / file).unlink()
    make(bundle / file)
    outcome, stderr = load_in_subprocess(bundle)
    assert outcome["error"] == "BundleError", outcome
    message = outcome["message"]
    assert message.endswith(f"{file}: not a regular file ({kind})"), message
    assert "\n" not in message
    assert outcome["path"] == str(bundle / file)
    assert stderr == ""


def test_symlink_to_a_regular_file_loads(good_bundle: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(good_bundle, bundle)
    (bundle / "tokenizer.json").rename(tmp_path / "real-tokenizer.json")
    (bundle / "tokenizer.json").symlink_to(tmp_path / "real-tokenizer.json")
    outcome, _ = load_in_subprocess(bundle)
    assert outcome["error"] is None


def test_tokenizer_panic_is_silent(good_bundle: Path, tmp_path: Path) -> None:
    """A syntax error inside ``decoder`` hits an ``expect`` in the tokenizers crate's
    deserializer: the loader reports it as an error of tokenizer.json, and the panic message is
    not printed."""
    bundle = tmp_path / "bundle"
    shutil.copytree(good_bundle, bundle)
    path = bundle / "tokenizer.json"
    text = path.read_text()
    match = re.search(r'"decoder"\s*:\s*\{', text)
    assert match, "the fixture's tokenizer.json has a decoder"
    path.write_text(text[:match.end()] + '"x" ' + text[match.end():])
    outcome, stderr = load_in_subprocess(bundle)
    assert "panicked at" not in stderr, stderr
    assert stderr == "", stderr
    assert outcome["error"] == "BundleError", outcome
    message = outcome["message"]
    assert "\n" not in message
    assert message.startswith(f"{path}: not a valid tokenizers file"), message
