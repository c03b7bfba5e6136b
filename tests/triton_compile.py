"""Compiling Triton kernels to a GPU binary without a GPU: the interpreter runs kernels as numpy
and forgives what the compiler rejects (types of loop-carried values, bool stores, pointer
arithmetic), so kernel tests also compile them for sm_80 with Triton's bundled ptxas."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def compile_for_ampere(script: str, cache: Path) -> None:
    """Runs ``script`` (which compiles kernels and prints "ok") with the interpreter off; skips
    where the installed Triton ships no ptxas to compile with."""
    triton = pytest.importorskip("triton")
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.is_file():
        pytest.skip("this Triton has no bundled ptxas")
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "TRITON_INTERPRET": "0", "TRITON_CACHE_DIR": str(cache),
             "TRITON_DEFAULT_FP_FUSION": "1"},
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"
