"""``tinyfast bench MODEL_OR_BUNDLE --data F``: every contender on the same labeled data, in one
command run, each in its own fresh process.

Contenders, in this order (``CONTENDERS``, then one tinyfast entry per speed):

  teacher_torch_fp32   ``--teacher DIR`` in PyTorch fp32
  torch_fp32           the checkpoint in PyTorch fp32 (the reference for label agreement)
  torch_int8_dynamic   the same after ``torch.ao.quantization.quantize_dynamic`` on nn.Linear
  ort_int8             ONNX export, ONNX Runtime dynamic int8 quantization
  ort_int8_fused       the same after ONNX Runtime's BERT graph fusions
  openvino_int8        OpenVINO, static int8 post-training quantization with NNCF (calibrated on
                       rows of the data), static shapes
  tinyfast_int8_speed{S}  the int8 bundle in ``tinyfast.Runtime`` at early-exit speed S

Given a checkpoint, the int8 bundle is exported into the work directory; given a bundle, the
torch, ONNX Runtime and OpenVINO contenders need the checkpoint it came from (``checkpoint``) and
are recorded as skipped otherwise. A contender that cannot run here is recorded with the reason
(``{"skipped": ...}``) and one that broke with the error (``{"failed": ...}``), never with numbers.

What is measured (also written into the report's ``settings``):

- preparation (export, quantization, calibration) happens first in this process and is not
  timed; then each contender is loaded in a fresh worker process (``tinyfast.bench.worker``)
  and warmed up;
- ``--rounds`` rounds; in each, the contenders take turns (the first rotating), one at a time,
  with a short pause between turns so the thread pools of the last one go idle. A turn is a
  share of the batch-1 latency calls (every latency row is timed once per contender) and one
  whole pass over the data at ``batch_size`` rows a call;
- accuracy and macro F1 from the answers of the first pass, against the data's labels;
- latency: each row alone (batch 1), tokenization included, p50/p95/mean over the calls;
- throughput: rows of the data over the median seconds of a pass, tokenization included;
- size on disk: the files the engine loads for the model (weights or graph, not the tokenizer);
- memory: the worker's resident-memory high-water mark (``VmHWM``) after its runs: the
  interpreter, the libraries the contender needs, its model and its runs, nothing of the
  others; ``rss_at_start_mb`` is the same mark before loading (interpreter and harness).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tinyfast.bench.contender import Skipped
from tinyfast.bench.machine import machine_info
from tinyfast.bench.plan import CONTENDERS, REFERENCE, BenchOptions, plan, tinyfast_name
from tinyfast.bench.prepare import Preparer
from tinyfast.bench.timing import latency_ms, rotated
from tinyfast.bench.workers import WorkerError, WorkerProcess
from tinyfast.errors import ConfigError
from tinyfast.metrics import classification_metrics

__all__ = ["SCHEMA_VERSION", "BenchOptions", "failed", "run_bench"]

SCHEMA_VERSION = 1
PAUSE_SECONDS = 0.2
DEFAULT_LATENCY_ROWS = 1000


@contextlib.contextmanager
def _work_dir(given: str | None) -> Iterator[Path]:
    if given is not None:
        path = Path(given).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="tinyfast-bench-") as tmp:
        yield Path(tmp)


def _printer(enabled: bool) -> Callable[[str], None]:
    def say(message: str) -> None:
        if enabled:
            print(f"bench: {message}", file=sys.stderr, flush=True)

    return say


def _load_all(specs: dict[str, dict[str, Any]], work: Path, opts: BenchOptions,
              records: dict[str, dict[str, Any]], say: Callable[[str], None]
              ) -> dict[str, tuple[WorkerProcess, dict[str, Any]]]:
    """Start, load and warm up one worker per spec (one at a time); failures are recorded."""
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    loaded = {}
    for name, spec in specs.items():
        say(f"loading {name}")
        worker = WorkerProcess(name, logs / f"{name}.log", opts.threads)
        worker_spec = {k: v for k, v in spec.items() if k not in ("prepared", "export")}
        try:
            reply = worker.ask("load", spec=worker_spec)
            worker.ask("warmup", calls=opts.warmup)
        except Skipped as exc:
            records[name] = {"skipped": str(exc)}
            worker.close()
            continue
        except WorkerError as exc:
            records[name] = {"failed": str(exc)}
            worker.close()
            continue
        loaded[name] = (worker, reply)
    return loaded


def _measure(loaded: dict[str, tuple[WorkerProcess, dict[str, Any]]], opts: BenchOptions,
             rows: int, records: dict[str, dict[str, Any]], say: Callable[[str], None]
             ) -> dict[str, dict[str, Any]]:
    """The rounds: every contender's latency calls and passes, taking turns."""
    latency_rows = min(rows, opts.latency_rows if opts.latency_rows is not None
                       else DEFAULT_LATENCY_ROWS)
    chunks = [c.tolist() for c in np.array_split(np.arange(latency_rows), opts.rounds)]
    got: dict[str, dict[str, Any]] = {n: {"latency": [], "passes": []} for n in loaded}
    for r in range(opts.rounds):
        say(f"round {r + 1} of {opts.rounds}")
        for name in rotated([n for n in loaded if n in got], r):
            worker = loaded[name][0]
            time.sleep(PAUSE_SECONDS)  # the last contender's spinning threads go idle
            try:
                if chunks[r]:
                    got[name]["latency"] += worker.ask("latency", rows=chunks[r])["seconds"]
                answer = worker.ask("throughput", answers=r == 0)
            except (Skipped, WorkerError) as exc:
                records[name] = {"failed": f"round {r + 1}: {exc}"}
                del got[name]
                continue
            got[name]["passes"].append(answer["seconds"])
            if r == 0:
                got[name]["answers"] = answer
    for name in list(got):
        try:
            got[name]["memory"] = loaded[name][0].ask("finish")
        except (Skipped, WorkerError) as exc:
            records[name] = {"failed": f"finish: {exc}"}
            del got[name]
    return got


def _record(spec: dict[str, Any], load: dict[str, Any], got: dict[str, Any], rows: int,
            labels: list[int], num_layers: int) -> dict[str, Any]:
    answers = got["answers"]
    probs = np.asarray(answers["probabilities"], dtype=np.float64)
    settings = {**spec.get("prepared", {}), **load["settings"]}
    if "export" in spec:
        settings["export"] = spec["export"]
    record: dict[str, Any] = {"engine": spec["engine"], "settings": settings}
    record.update(classification_metrics(probs, labels))
    lat = got["latency"]
    record["latency_ms"] = {"calls": len(lat), **latency_ms(lat, (50, 95))} if lat else None
    passes = got["passes"]
    record["throughput_rows_per_s"] = rows / float(np.median(passes))
    record["pass_seconds"] = passes
    size = spec.get("size_bytes") or settings.get("model_bytes")
    record["size_bytes"] = size
    record["size_files"] = spec.get("size_files") or [settings.get("model_file")]
    memory = got["memory"]
    start = load.get("rss_at_start_mb")
    peak = memory.get("peak_rss_mb")
    record["memory"] = {
        "peak_rss_mb": peak,
        "rss_at_start_mb": start,
        "peak_rss_over_start_mb": None if peak is None or start is None else peak - start,
        "peak_rss_after_load_mb": load.get("peak_rss_after_load_mb"),
        "rss_after_load_mb": load.get("rss_after_load_mb"),
    }
    record["load_seconds"] = load["load_seconds"]
    if spec["kind"] == "tinyfast":
        exits = np.asarray(answers.get("exit_layers", []))
        record["speed"] = spec["speed"]
        record["num_layers"] = num_layers
        record["mean_exit_layer"] = float(exits.mean()) if exits.size else None
        record["exit_share"] = {str(k): n / exits.size
                                for k, n in sorted(Counter(exits.tolist()).items())}
    record["_labels"] = answers["labels"]
    record["_probabilities"] = probs
    return record


def _compare(records: dict[str, dict[str, Any]]) -> None:
    """Label agreement and accuracy difference of every contender with torch_fp32."""
    ref = records.get(REFERENCE, {})
    for rec in records.values():
        if "_labels" not in rec:
            continue
        if "_labels" in ref:
            same = np.asarray(rec["_labels"]) == np.asarray(ref["_labels"])
            rec["label_agreement_with_torch_fp32"] = float(same.mean())
            rec["accuracy_minus_torch_fp32_points"] = 100 * (rec["accuracy"] - ref["accuracy"])
            diff = np.abs(rec["_probabilities"] - ref["_probabilities"])
            rec["max_abs_prob_diff_with_torch_fp32"] = float(diff.max())
        else:
            rec["label_agreement_with_torch_fp32"] = None
            rec["accuracy_minus_torch_fp32_points"] = None
            rec["max_abs_prob_diff_with_torch_fp32"] = None
    for rec in records.values():
        rec.pop("_labels", None)
        rec.pop("_probabilities", None)


def run_bench(opts: BenchOptions) -> dict[str, Any]:
    """Run the comparison and return the report (see the module's documentation)."""
    if opts.rounds < 1 or opts.batch_size < 1 or opts.threads < 1:
        raise ConfigError("rounds, batch size and threads must be >= 1")
    say = _printer(opts.progress)
    started = time.perf_counter()
    the_plan = plan(opts)
    names = [*CONTENDERS, *(tinyfast_name(s) for s in opts.speeds)]
    machine = machine_info(opts.threads)
    with _work_dir(opts.work_dir) as work:
        inputs_file = work / "inputs.json"
        inputs_file.write_text(json.dumps(the_plan.inputs), encoding="utf-8")
        prep = Preparer(opts, the_plan, work, say)
        prep.run(names, inputs_file)
        loaded = _load_all(prep.specs, work, opts, prep.records, say)
        try:
            got = _measure(loaded, opts, len(the_plan.inputs), prep.records, say)
        finally:
            for worker, _ in loaded.values():
                worker.close()
        records = prep.records
        for name, measured in got.items():
            records[name] = _record(prep.specs[name], loaded[name][1], measured,
                                    len(the_plan.inputs), the_plan.label_ids,
                                    the_plan.given.num_layers)
        _compare(records)
        bundle_exits = prep.bundle_meta.get("exits", the_plan.given.exits)
        bundle_path = str(prep.bundle) if prep.bundle is not None else None
        if prep.bundle is not None and opts.work_dir is None and the_plan.kind == "checkpoint":
            bundle_path = "<temporary work directory>/bundle-int8 (removed)"
    if hasattr(os, "getloadavg"):
        machine["load_average_at_end"] = list(os.getloadavg())
    latency_rows = min(len(the_plan.inputs), opts.latency_rows if opts.latency_rows is not None
                       else DEFAULT_LATENCY_ROWS)
    given = the_plan.given
    return {
        "benchmark": "tinyfast_bench",
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": opts.command,
        "machine": machine,
        "model": {
            "path": str(given.path),
            "kind": the_plan.kind,
            "checkpoint": str(the_plan.checkpoint.path) if the_plan.checkpoint else None,
            "bundle": bundle_path,
            "teacher": str(the_plan.teacher.path) if the_plan.teacher else None,
            "task": given.task,
            "labels": given.labels,
            "num_layers": given.num_layers,
            "exits": bundle_exits,
            "max_length": prep.seq_len,
        },
        "data": {
            "path": str(opts.data),
            "rows": len(the_plan.inputs),
            "columns": {"text_a": the_plan.columns.text_a, "text_b": the_plan.columns.text_b,
                        "label": the_plan.columns.label},
            "label_counts": {given.labels[k]: v for k, v in
                             sorted(Counter(the_plan.label_ids).items())},
        },
        "settings": {
            "threads": opts.threads,
            "batch_size": opts.batch_size,
            "rounds": opts.rounds,
            "latency_rows": latency_rows,
            "warmup_calls": opts.warmup,
            "speeds": list(opts.speeds),
            "calibration_rows": opts.calibration_rows,
            "pause_between_turns_seconds": PAUSE_SECONDS,
            "processes": "one fresh worker process per contender (python -m "
            "tinyfast.bench.worker); preparation (export, quantization, calibration) runs "
            "before, in the command's process, untimed",
            "order": "round robin: in round r the contenders take turns starting with the "
            "(r mod n)-th, one at a time; a turn is its share of the latency rows, then one "
            "pass over the data",
            "latency": "batch 1: each of the first latency_rows rows alone, tokenization "
            "included; every row timed once per contender over the rounds",
            "throughput": "rows of the data / median seconds of a pass over all of them at "
            "batch_size rows a call, tokenization included; accuracy and macro F1 come from "
            "the first pass",
            "size": "bytes of the files the engine loads for the model: weights or graph, "
            "not the tokenizer (torch_int8_dynamic: its state dict as torch.save writes it)",
            "memory": "peak_rss_mb: the worker process's resident-memory high-water mark "
            "(VmHWM of /proc/self/status) after loading and all its runs: interpreter, the "
            "contender's libraries, model and runs, nothing of the other contenders; "
            "rss_at_start_mb: the same mark before loading",
            "tokenization": "inside every timed call; torch: the HF fast tokenizer; ONNX "
            "Runtime and OpenVINO: the checkpoint's tokenizer.json through the tokenizers "
            "library; tinyfast: the bundle's tokenizer.json in the runtime. All truncate to "
            "the bundle's max_length; OpenVINO pads every row to it (static shapes)",
        },
        "contenders": {n: records[n] for n in names},
        "wall_seconds": time.perf_counter() - started,
    }


def failed(report: dict[str, Any]) -> list[str]:
    return [n for n, rec in report["contenders"].items() if "failed" in rec]
