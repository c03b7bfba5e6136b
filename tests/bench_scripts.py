"""Loading a script of benches/ as a module, for the tests that run a benchmark end to end."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

BENCHES = Path(__file__).resolve().parents[1] / "benches"


def load_bench(script: str) -> types.ModuleType:
    """``benches/<script>`` imported under the name ``<stem>_bench`` (a fresh module each call)."""
    path = BENCHES / script
    spec = importlib.util.spec_from_file_location(f"{path.stem}_bench", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
