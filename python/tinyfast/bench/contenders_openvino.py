"""The OpenVINO contender at its best case: static shapes and static post-training quantization.

The fp32 ONNX export (``contenders_ort.export_onnx``) is converted with ``openvino.convert_model``
and reshaped to one static ``[1, seq]`` shape; ``nncf.quantize`` (``ModelType.TRANSFORMER``,
CPU target) calibrates it on real rows padded to that shape and writes the int8 IR (``.xml`` +
``.bin``). At run time the IR is reshaped to ``[batch, seq]`` for each batch size asked, compiled
for the CPU with ``INFERENCE_NUM_THREADS`` equal to the other contenders' threads, one stream,
the latency hint and f32 for what stays in floating point (as every other contender here), and
every call pads its rows to ``seq`` tokens (and a short batch to ``batch`` rows, whose extra
answers are dropped). Needs the optional packages ``openvino`` and ``nncf``
(``tinyfast[openvino]``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tinyfast.bench.contender import Inputs, Prediction, Skipped, from_logits
from tinyfast.bench.contenders_ort import quiet
from tinyfast.bench.encoding import Encode

__all__ = [
    "PACKAGES",
    "OpenVINOEngine",
    "calibration_rows",
    "missing",
    "openvino_predict",
    "quantize_openvino",
]

PACKAGES = ("openvino", "nncf")
INSTALL = "pip install 'tinyfast[openvino]'"


def missing() -> str | None:
    """Why the OpenVINO contender cannot run here (a package is not installed), or None."""
    absent = [p for p in PACKAGES if importlib.util.find_spec(p) is None]
    if absent:
        return f"{' and '.join(absent)} not installed ({INSTALL})"
    return None


def _require() -> None:
    reason = missing()
    if reason:
        raise Skipped(reason)


def calibration_rows(encode: Encode, inputs: Sequence[Any], seq_len: int
                     ) -> list[dict[str, np.ndarray]]:
    """One ``[1, seq_len]`` feed per input, padded to ``seq_len`` as the engine will see it."""
    return [encode([row], seq_len) for row in inputs]


def quantize_openvino(fp32_onnx: Path, names: Sequence[str],
                      calibration: Sequence[dict[str, np.ndarray]], seq_len: int,
                      out_xml: Path) -> dict[str, Any]:
    """Static int8 post-training quantization of the ONNX fp32 model at shape ``[1, seq_len]``
    with NNCF; writes the IR to ``out_xml`` (and its ``.bin``) and returns its settings."""
    _require()
    import nncf
    import openvino as ov

    if not calibration:
        raise ValueError("the OpenVINO contender needs calibration rows")
    model = ov.convert_model(os.fspath(fp32_onnx))
    model.reshape({name: ov.PartialShape([1, seq_len]) for name in names})
    feeds = [{n: np.asarray(row[n], dtype=np.int64) for n in names} for row in calibration]
    with quiet(), contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bars
        quantized = nncf.quantize(
            model,
            nncf.Dataset(feeds),
            model_type=nncf.ModelType.TRANSFORMER,
            target_device=nncf.TargetDevice.CPU,
            subset_size=len(feeds),
        )
    ov.save_model(quantized, os.fspath(out_xml), compress_to_fp16=False)
    ops = Counter(op.get_type_name() for op in quantized.get_ops())
    return {
        "conversion": "openvino.convert_model(fp32 ONNX export), reshaped to static "
        f"[1, {seq_len}] for calibration; [batch, {seq_len}] at run time",
        "quantization": {
            "tool": "nncf.quantize (static post-training quantization)",
            "model_type": "TRANSFORMER",
            "target_device": "CPU",
            "preset": "default of ModelType.TRANSFORMER (mixed: symmetric weights, asymmetric "
            "activations)",
            "calibration_rows": len(feeds),
            "calibration_shape": [1, seq_len],
        },
        "int8_graph_ops": {k: v for k, v in ops.most_common() if k in (
            "FakeQuantize", "FakeConvert", "MatMul", "Convert")},
        "model_bytes": out_xml.stat().st_size + out_xml.with_suffix(".bin").stat().st_size,
        "model_files": [out_xml.name, out_xml.with_suffix(".bin").name],
        "versions": {"openvino": ov.__version__, "nncf": nncf.__version__},
    }


def compile_config(threads: int) -> dict[str, Any]:
    """The CPU plugin's settings, as recorded in the results."""
    return {
        "INFERENCE_NUM_THREADS": threads,
        "NUM_STREAMS": 1,
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
    }


class OpenVINOEngine:
    """The int8 IR compiled for the CPU once per batch size (static ``[batch, seq_len]``)."""

    def __init__(self, xml: Path, threads: int) -> None:
        _require()
        import openvino as ov

        self._ov = ov
        self.core = ov.Core()
        self.xml = Path(xml)
        self.threads = threads
        model = self.core.read_model(os.fspath(self.xml))
        self.names = [port.get_any_name() for port in model.inputs]
        self.seq_len = int(model.inputs[0].get_partial_shape()[1].get_length())
        self.compiled: dict[int, Any] = {}

    def compiled_for(self, batch: int) -> Any:
        if batch not in self.compiled:
            ov = self._ov
            model = self.core.read_model(os.fspath(self.xml))
            model.reshape({n: ov.PartialShape([batch, self.seq_len]) for n in self.names})
            self.compiled[batch] = self.core.compile_model(model, "CPU",
                                                           compile_config(self.threads))
        return self.compiled[batch]

    def logits(self, feeds: dict[str, np.ndarray], batch: int) -> np.ndarray:
        rows = len(feeds[self.names[0]])
        if rows < batch:  # a short last batch: repeat its last row, drop those answers
            extra = batch - rows
            feeds = {n: np.concatenate([v, np.repeat(v[-1:], extra, axis=0)])
                     for n, v in feeds.items()}
        compiled = self.compiled_for(batch)
        out = compiled({n: feeds[n] for n in self.names})
        return np.asarray(out[compiled.output(0)])[:rows]


def openvino_predict(engine: OpenVINOEngine, encode: Encode, batches: Sequence[int] = ()
                     ) -> Callable[[Inputs, int], Prediction]:
    """``predict(inputs, seq_len)``: pad every row to the engine's static length (``seq_len``
    must not exceed it) and the call to the smallest of ``batches`` that holds it (none given:
    the call's own size), so only those shapes are ever compiled."""
    sizes = sorted(batches)

    def predict(inputs: Inputs, seq_len: int) -> Prediction:
        if seq_len > engine.seq_len:
            raise ValueError(f"sequence {seq_len} > the engine's static length {engine.seq_len}")
        rows = len(inputs)
        batch = next((b for b in sizes if b >= rows), rows)
        return from_logits(engine.logits(encode(inputs, engine.seq_len), batch))

    return predict
