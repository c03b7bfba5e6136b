"""One contender in a fresh process: ``python -m tinyfast.bench.worker``.

The parent (``tinyfast.bench.command``) starts one worker per contender and drives it with one
JSON object per line on stdin; the worker answers one JSON object per line on its own copy of
the original stdout (anything a library prints goes to stderr instead). So the process's peak
resident memory is that contender's alone: the interpreter, the libraries it needs, its model
and the runs the parent asked for.

Requests (``op``):

- ``load``: ``spec`` says what to load (see ``build``); answers ``load_seconds`` and the memory
  (``rss_at_start_mb``: the high-water mark before loading, interpreter and harness only);
- ``warmup``: ``calls`` untimed batch-1 calls and two untimed calls at ``batch_size``;
- ``latency``: each row of ``rows`` (indices into the inputs) alone, timed call by call;
- ``throughput``: every input, ``batch_size`` rows a call, timed as a whole pass; answers the
  labels, probabilities and exit layers as well;
- ``finish``: the memory (``peak_rss_mb``), then the worker exits.

Errors answer ``{"error": ...}`` (``{"skipped": ...}`` for a contender that cannot run here).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from tinyfast.bench.contender import Contender, Skipped
from tinyfast.bench.machine import current_rss_mb, peak_rss_mb
from tinyfast.bench.timing import collector_paused

__all__ = ["build", "main"]

KINDS = ("torch", "torch_int8_dynamic", "ort", "openvino", "tinyfast")


def build(spec: dict[str, Any]) -> Contender:
    """The contender ``spec`` describes: ``kind`` (one of KINDS), ``name``, ``model`` (a
    checkpoint, an ONNX file, an OpenVINO IR .xml or a bundle), ``threads``; ``tokenizer`` and
    ``pad_id`` (ort, openvino), ``batch_size`` (openvino's static batch), ``speed`` (tinyfast),
    ``save_to`` (torch_int8_dynamic: where its state dict goes, to weigh it)."""
    kind, name, threads = spec["kind"], spec["name"], int(spec["threads"])
    if kind in ("torch", "torch_int8_dynamic"):
        import torch

        from tinyfast.bench.contenders_torch import torch_contender

        torch.set_num_threads(threads)
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)
        save_to = Path(spec["save_to"]) if spec.get("save_to") else None
        return torch_contender(name, spec["model"], kind == "torch_int8_dynamic", save_to)
    if kind == "ort":
        from tinyfast.bench.contenders_ort import inference_options, ort_predict, ort_session
        from tinyfast.bench.encoding import FileEncoder

        engine = ort_session(Path(spec["model"]), threads)
        encode = FileEncoder(spec["tokenizer"], spec["pad_id"])
        settings = {"inference_options": inference_options(threads),
                    "tokenizer": "tokenizers (tokenizer.json), padding=longest, truncation"}
        return Contender(name, ort_predict(engine, encode), settings)
    if kind == "openvino":
        from tinyfast.bench.contenders_openvino import (
            OpenVINOEngine,
            compile_config,
            openvino_predict,
        )
        from tinyfast.bench.encoding import FileEncoder

        engine = OpenVINOEngine(Path(spec["model"]), threads)
        encode = FileEncoder(spec["tokenizer"], spec["pad_id"], static=True)
        batches = (1, int(spec["batch_size"]))
        for batch in batches:  # compiling is loading: before the first timed call
            engine.compiled_for(batch)
        settings = {"compile_config": compile_config(threads),
                    "static_shapes": [[b, engine.seq_len] for b in batches],
                    "tokenizer": f"tokenizers (tokenizer.json), padded to {engine.seq_len}, "
                                 "truncation"}
        return Contender(name, openvino_predict(engine, encode, batches), settings)
    if kind == "tinyfast":
        from tinyfast.bench.contenders_tinyfast import TOKENIZER, runtime_predict
        from tinyfast.runtime import Runtime

        runtime = Runtime.load(spec["model"], threads=threads)
        speed = float(spec.get("speed", 0.0))
        settings = {"speed": speed, "threads": threads, "kernel": runtime.kernel,
                    "tokenizer": TOKENIZER}
        return Contender(name, runtime_predict(runtime, speed), settings)
    raise ValueError(f"unknown contender kind {kind!r} (expected one of {', '.join(KINDS)})")


def _inputs(path: str) -> list[Any]:
    rows = json.loads(Path(path).read_text(encoding="utf-8"))
    return [tuple(r) if isinstance(r, list) else r for r in rows]


class Worker:
    def __init__(self) -> None:
        self.contender: Contender | None = None
        self.inputs: list[Any] = []
        self.seq_len = 0
        self.batch_size = 32

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "load":
            return self.load(request["spec"])
        if self.contender is None:
            raise RuntimeError(f"{op!r} before 'load'")
        predict = self.contender.predict
        if op == "warmup":
            for i in range(int(request.get("calls", 8))):
                predict([self.inputs[i % len(self.inputs)]], self.seq_len)
            for _ in range(2):
                predict(self.inputs[: self.batch_size], self.seq_len)
            return {}
        if op == "latency":
            seconds = []
            with collector_paused():
                for i in request["rows"]:
                    row = [self.inputs[i]]
                    start = time.perf_counter()
                    predict(row, self.seq_len)
                    seconds.append(time.perf_counter() - start)
            return {"seconds": seconds}
        if op == "throughput":
            parts = []
            with collector_paused():
                start = time.perf_counter()
                for k in range(0, len(self.inputs), self.batch_size):
                    parts.append(predict(self.inputs[k : k + self.batch_size], self.seq_len))
                seconds = time.perf_counter() - start
            out: dict[str, Any] = {"seconds": seconds}
            if request.get("answers"):
                out["labels"] = [int(x) for p in parts for x in p.labels]
                out["probabilities"] = [[float(v) for v in row] for p in parts
                                        for row in p.probabilities]
                if all(p.exit_layers is not None for p in parts):
                    out["exit_layers"] = [int(x) for p in parts for x in p.exit_layers]
            return out
        if op == "finish":
            return {"peak_rss_mb": peak_rss_mb(), "rss_mb": current_rss_mb()}
        raise ValueError(f"unknown request {op!r}")

    def load(self, spec: dict[str, Any]) -> dict[str, Any]:
        self.inputs = _inputs(spec["inputs"])
        self.seq_len = int(spec["seq_len"])
        self.batch_size = int(spec.get("batch_size", 32))
        at_start = peak_rss_mb()
        start = time.perf_counter()
        self.contender = build(spec)
        seconds = time.perf_counter() - start
        gc.collect()
        gc.freeze()  # the model's objects: later collections need not walk them
        return {"load_seconds": seconds, "settings": self.contender.settings,
                "rss_at_start_mb": at_start, "peak_rss_after_load_mb": peak_rss_mb(),
                "rss_after_load_mb": current_rss_mb()}


def _answer(stream: TextIO, message: dict[str, Any]) -> None:
    stream.write(json.dumps(message) + "\n")
    stream.flush()


def main() -> int:
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # library prints must not reach answers
    worker = Worker()
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            reply = worker.handle(request)
        except Skipped as exc:
            _answer(answers, {"skipped": str(exc)})
            return 0
        except Exception as exc:  # reported to the parent, which records it as failed
            import traceback

            traceback.print_exc(file=sys.stderr)
            _answer(answers, {"error": f"{type(exc).__name__}: {exc}"})
            return 1
        _answer(answers, {"ok": True, **reply})
        if request.get("op") == "finish":
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
