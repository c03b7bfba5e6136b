"""A Runtime loaded before ``fork`` predicts in the child, as gunicorn --preload, Celery prefork and
``multiprocessing.Pool`` use a model.

The child inherits the runtime's thread pool but not its threads; the runtime builds a new pool
of the same size in the child on its first call there. Each scenario runs in its own Python process
(a new session, killed whole on timeout), so a regression fails after a timeout instead of hanging
the test run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).parent))
import runtime_fixtures as rf  # noqa: E402

TIMEOUT = 120
TEXTS = rf.random_texts(24, seed=7)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rf.build_bundles(tmp_path_factory.mktemp("fork")).int8


def run_script(tmp_path: Path, code: str, *args: str) -> dict:
    """Runs ``code`` as a script with ``args``; returns the JSON object it prints last."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    proc = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, process_group=0)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        # The whole process group: forked children that hang would outlive their parent.
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the script did not finish within {TIMEOUT} s (a forked child hung?)\n{err}")
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


COMMON = """
    import json, os, sys
    import tinyfast

    TEXTS = json.loads(sys.argv[2])

    def rows(p):
        return {"labels": p.labels.tolist(), "probabilities": p.probabilities.tobytes().hex(),
                "exit_layers": p.exit_layers.tolist()}
"""


def test_os_fork_child_predicts_like_the_parent(bundle: Path, tmp_path: Path) -> None:
    result = run_script(tmp_path, COMMON + """
    rt = tinyfast.Runtime.load(sys.argv[1], threads=2)
    before = rows(rt.predict(TEXTS, speed=0.3, batch_size=4))  # the pool's threads now run
    children = []
    for _ in range(2):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            code = 1
            try:
                out = {"threads": rt.threads, "rows": rows(rt.predict(TEXTS, speed=0.3,
                                                                      batch_size=4))}
                with os.fdopen(w, "w") as f:
                    f.write(json.dumps(out))
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        with os.fdopen(r) as f:
            children.append(json.loads(f.read()))
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    after = rows(rt.predict(TEXTS, speed=0.3, batch_size=4))
    print(json.dumps({"before": before, "children": children, "after": after}))
    """, str(bundle), json.dumps(TEXTS))
    assert len(result["children"]) == 2
    for child in result["children"]:
        assert child["threads"] == 2
        assert child["rows"] == result["before"]
    assert result["after"] == result["before"]


def test_multiprocessing_fork_pool_maps_predict(bundle: Path, tmp_path: Path) -> None:
    result = run_script(tmp_path, COMMON + """
    import multiprocessing

    rt = tinyfast.Runtime.load(sys.argv[1], threads=2)

    def predict_one(text):
        p = rt.predict([text], speed=0.3)
        return [int(p.labels[0]), p.probabilities[0].tobytes().hex(), int(p.exit_layers[0]),
                os.getpid()]

    if __name__ == "__main__":
        want = [predict_one(t)[:3] for t in TEXTS]
        with multiprocessing.get_context("fork").Pool(2) as pool:
            got = pool.map(predict_one, TEXTS, chunksize=2)
        after = [predict_one(t)[:3] for t in TEXTS]
        print(json.dumps({"want": want, "got": got, "after": after, "parent": os.getpid()}))
    """, str(bundle), json.dumps(TEXTS))
    assert [g[:3] for g in result["got"]] == result["want"]
    workers = {g[3] for g in result["got"]}
    assert result["parent"] not in workers
    assert result["after"] == result["want"]
