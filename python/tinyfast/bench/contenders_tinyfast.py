"""tinyfast contenders: ``tinyfast.Runtime`` on a bundle, at a given early-exit speed, tokenizing
with the bundle's own ``tokenizer.json``. The runtime and the exporter are looked up when a
contender is built (never at import), so a stand-in can take their place in tests."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tinyfast.bench.contender import Contender, Inputs, Prediction

__all__ = ["bundle_bytes", "runtime_contender", "runtime_predict", "tinyfast_contender"]

TOKENIZER = "the runtime's own (bundle tokenizer.json)"


def bundle_bytes(bundle: Path, include_tokenizer: bool = True) -> int:
    return sum(p.stat().st_size for p in Path(bundle).iterdir()
               if p.is_file() and (include_tokenizer or p.name != "tokenizer.json"))


def runtime_predict(runtime: Any, speed: float) -> Callable[[Inputs, int], Prediction]:
    """``predict(inputs, seq_len)`` at ``speed``, one batch per call (the bundle's own
    ``max_length`` truncates; ``seq_len`` is the peers' concern)."""

    def predict(texts: Inputs, seq_len: int) -> Prediction:
        res = runtime.predict(texts, speed=speed, batch_size=len(texts))
        return Prediction(
            np.asarray(res.labels), np.asarray(res.probabilities), np.asarray(res.exit_layers)
        )

    return predict


def runtime_contender(name: str, runtime: Any, speed: float) -> Contender:
    return Contender(name, runtime_predict(runtime, speed), {"speed": speed})


def tinyfast_contender(
    name: str,
    model_dir: Path,
    work: Path,
    dtype: str,
    threads: int,
    max_length: int,
    describe: Callable[[Path], str] = str,
) -> tuple[Contender | None, dict[str, Any], Any, dict[str, Any] | None]:
    """Export ``model_dir`` to ``work/bundle-{dtype}`` and load it at speed 0: (contender or
    None, record, runtime, bundle's tinyfast.json). ``describe`` writes the bundle's path into
    the record."""
    import tinyfast

    if not hasattr(tinyfast, "Runtime"):
        return None, {"skipped": "runtime not built"}, None, None
    try:
        from tinyfast.export import export
    except ImportError as exc:
        return None, {"skipped": f"tinyfast.export is not available: {exc}"}, None, None
    bundle = work / f"bundle-{dtype}"
    # A bundle long enough for every workload, where export lets us say so (its default is the
    # checkpoint's training max_length, which may be shorter than the longest workload).
    try:
        takes_length = "max_length" in inspect.signature(export).parameters
    except (TypeError, ValueError):
        takes_length = False
    extra = {"max_length": max_length} if takes_length else {}
    try:
        export(model_dir, bundle, dtype=dtype, **extra)
        meta = json.loads((bundle / "tinyfast.json").read_text())
        runtime = tinyfast.Runtime.load(bundle, threads=threads)
    except Exception as exc:  # the runtime is young: record what broke, run the others
        return None, {"failed": f"{type(exc).__name__}: {exc}"}, None, None

    settings = {
        "bundle": f"tinyfast.export.export(model, out, dtype={dtype!r}"
        + "".join(f", {k}={v!r}" for k, v in extra.items())
        + ")",
        "bundle_dir": describe(bundle),
        "quantization": meta.get("quantization"),
        "max_length": meta.get("max_length"),
        "exits": meta.get("exits", []),
        "speed": 0.0,
        "threads": threads,
        "tokenizer": TOKENIZER,
        "bundle_bytes": bundle_bytes(bundle),
    }
    if hasattr(tinyfast, "cpu_capabilities"):
        settings["kernel"] = tinyfast.cpu_capabilities().get("best_kernel")
    contender = Contender(name, runtime_predict(runtime, 0.0), settings, bundle)
    return contender, {"settings": settings}, runtime, meta
