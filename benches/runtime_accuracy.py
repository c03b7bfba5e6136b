"""Runtime accuracy: tinyfast's int8 and f32 bundles against the PyTorch model they came from.

For every ``--model DIR --data FILE`` pair (repeat the two flags for more pairs, in order):

- read the data with the model's own task file (tinyfast_task.json: columns, labels, max length);
- run the Hugging Face model (AutoModelForSequenceClassification, fp32, eval) over every row;
- export an int8 and an f32 bundle (tinyfast.export.export) and run tinyfast.Runtime on both at
  speed 0 (no early exit, even when the checkpoint carries branches);
- compare: accuracy of each, the int8 - PyTorch difference in points, label agreement with
  PyTorch, the largest |logit difference|, and the token ids of the Hugging Face tokenizer against
  ``Runtime.tokenize`` on every row; rows per second of each engine (tokenization included, batches
  of ``--batch-size`` in file order, ``--threads`` threads for everyone).

Goals: int8 within 0.3 points of PyTorch, >= 99% label agreement, f32 logits within
1e-4 of PyTorch's. Anything that cannot run is recorded with the reason, never with numbers.

    python benches/runtime_accuracy.py \\
        --model runs/teacher/model --data ../shared/data/sst2/dev.tsv \\
        --model runs/student/model --data ../shared/data/sst2/dev.tsv \\
        --out bench-results/runtime_accuracy.json --threads 2
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benches/_paths.py when loaded by path
from _paths import recorded_path  # noqa: E402

SCHEMA_VERSION = 1
ENGINES = ("torch_fp32", "tinyfast_int8", "tinyfast_f32")
GOAL_POINTS = 0.3
GOAL_AGREEMENT = 0.99
GOAL_F32_LOGITS = 1e-4
MISMATCH_EXAMPLES = 5


# ---------------------------------------------------------------------------------------------
# The engines


def _timed(run: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    out = run()
    return out, time.perf_counter() - start


def torch_logits(
    model_dir: Path,
    tokenizer: Any,
    inputs: Sequence[Any],
    pairs: bool,
    max_length: int,
    batch_size: int,
) -> tuple[np.ndarray, float, dict[str, Any]]:
    """fp32 logits [N, C] of the Hugging Face model, the seconds they took, and its settings."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, local_files_only=True)
    model = model.float().eval()

    def batch(rows: Sequence[Any]) -> np.ndarray:
        first = [r[0] for r in rows] if pairs else list(rows)
        second = [r[1] for r in rows] if pairs else None
        enc = tokenizer(
            first,
            second,
            truncation="longest_first",
            max_length=max_length,
            padding=True,
            return_token_type_ids=True,  # as tinyfast trains (encode_examples) and the runtime runs
            return_tensors="pt",
        )
        with torch.inference_mode():
            return model(**enc).logits.float().numpy()

    def run() -> np.ndarray:
        parts = [batch(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)]
        return np.concatenate(parts)

    batch(inputs[:batch_size])  # warm-up, untimed
    logits, seconds = _timed(run)
    settings = {
        "class": type(model).__name__,
        "dtype": "float32",
        "mode": "eval + torch.inference_mode",
        "attention": getattr(model.config, "_attn_implementation", None),
        "tokenizer": "HF fast tokenizer of the checkpoint, truncation longest_first to "
        f"max_length {max_length}, padding to the longest row of each batch, token_type_ids "
        "always passed (tinyfast trains with them and the runtime computes them)",
    }
    return logits, seconds, settings


def runtime_logits(
    runtime: Any, inputs: Sequence[Any], batch_size: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Logits [N, C] and exit layers [N] of a tinyfast.Runtime at speed 0, and the seconds."""
    runtime.predict(list(inputs[:batch_size]), speed=0.0, batch_size=batch_size)  # warm-up
    start = time.perf_counter()
    out = runtime.predict(list(inputs), speed=0.0, batch_size=batch_size)
    seconds = time.perf_counter() - start
    return np.asarray(out.logits), np.asarray(out.exit_layers), seconds


def token_check(
    tokenizer: Any,
    runtime: Any,
    inputs: Sequence[Any],
    pairs: bool,
    max_length: int,
    where: Sequence[str],
) -> dict[str, Any]:
    """Token ids and token types of the Hugging Face tokenizer against Runtime.tokenize."""
    first = [r[0] for r in inputs] if pairs else list(inputs)
    second = [r[1] for r in inputs] if pairs else None
    hf = tokenizer(
        first,
        second,
        truncation="longest_first",
        max_length=max_length,
        padding=False,
        return_token_type_ids=True,
    )
    ours = runtime.tokenize(list(inputs))
    ids, types, lengths = ours["input_ids"], ours["token_type_ids"], ours["lengths"]
    mismatches, examples = 0, []
    for row in range(len(inputs)):
        n = int(lengths[row])
        want_ids = list(hf["input_ids"][row])
        want_types = list(hf["token_type_ids"][row])
        got_ids, got_types = ids[row, :n].tolist(), types[row, :n].tolist()
        if got_ids != want_ids or got_types != want_types:
            mismatches += 1
            if len(examples) < MISMATCH_EXAMPLES:
                examples.append(
                    {
                        "row": where[row],
                        "hf_ids": want_ids,
                        "runtime_ids": got_ids,
                        "hf_types": want_types,
                        "runtime_types": got_types,
                    }
                )
    return {
        "rows": len(inputs),
        "mismatched_rows": mismatches,
        "identical": mismatches == 0,
        "compared": "input_ids and token_type_ids, row by row (the runtime's padding removed)",
        "examples": examples,
    }


# ---------------------------------------------------------------------------------------------
# One model on one data file


def _rate(rows: int, seconds: float) -> dict[str, float]:
    return {"seconds": seconds, "rows_per_s": rows / seconds if seconds > 0 else float("nan")}


def goals(torch_acc: float, int8: dict[str, Any], f32: dict[str, Any]) -> dict[str, Any]:
    """The issue's three goals for one pair; ``met`` is None where the numbers are missing."""

    def goal(target: str, value: float | None, met: Callable[[float], bool]) -> dict[str, Any]:
        return {"target": target, "value": value, "met": None if value is None else met(value)}

    points = int8.get("accuracy")
    points = None if points is None else 100 * (points - torch_acc)
    return {
        "int8_accuracy_within_points": goal(
            f"|int8 - torch| <= {GOAL_POINTS} points",
            points,
            lambda v: abs(v) <= GOAL_POINTS + 1e-9,
        ),
        "int8_label_agreement": goal(
            f">= {GOAL_AGREEMENT:.0%} of rows",
            int8.get("label_agreement_vs_torch"),
            lambda v: v >= GOAL_AGREEMENT,
        ),
        "f32_max_abs_logit_diff": goal(
            f"<= {GOAL_F32_LOGITS:g}",
            f32.get("max_abs_logit_diff_vs_torch"),
            lambda v: v <= GOAL_F32_LOGITS,
        ),
    }


def run_bundle(
    model_dir: Path,
    work: Path,
    dtype: str,
    inputs: Sequence[Any],
    labels: Sequence[str],
    ref: np.ndarray,
    gold: np.ndarray,
    threads: int,
    batch_size: int,
) -> tuple[Any, dict[str, Any]]:
    """Export a bundle of ``dtype``, run it at speed 0 and compare it with the torch logits."""
    import tinyfast
    from tinyfast.export import export

    bundle = Path(export(model_dir, work / f"bundle-{dtype}", dtype=dtype))
    config = json.loads((bundle / "tinyfast.json").read_text(encoding="utf-8"))
    runtime = tinyfast.Runtime.load(bundle, threads=threads)
    if list(runtime.labels) != list(labels):
        raise ValueError(f"{bundle}: labels {runtime.labels}, the task has {list(labels)}")
    logits, exits, seconds = runtime_logits(runtime, inputs, batch_size)
    pred, torch_pred = logits.argmax(axis=1), ref.argmax(axis=1)
    torch_acc = float(np.mean(torch_pred == gold))
    diff = np.abs(logits.astype(np.float64) - ref.astype(np.float64))
    acc = float(np.mean(pred == gold))
    return runtime, {
        "accuracy": acc,
        "accuracy_diff_points_vs_torch": 100 * (acc - torch_acc),
        "label_agreement_vs_torch": float(np.mean(pred == torch_pred)),
        "rows_disagreeing_with_torch": int(np.sum(pred != torch_pred)),
        "max_abs_logit_diff_vs_torch": float(diff.max()),
        "mean_abs_logit_diff_vs_torch": float(diff.mean()),
        **_rate(len(inputs), seconds),
        "settings": {
            "bundle": f"tinyfast.export.export(model, out, dtype={dtype!r})",
            "quantization": config["quantization"],
            "bundle_exits": config.get("exits", []),
            "speed": 0.0,
            "rows_answered_by_head": int(np.sum(exits == runtime.num_layers)),
            "threads": runtime.threads,
            "kernel": runtime.kernel,
            "batch_size": batch_size,
            "tokenizer": "the runtime's own (bundle tokenizer.json), max_length "
            f"{runtime.max_length}",
        },
    }


def evaluate(model: str, data: str, work: Path, threads: int, batch_size: int) -> dict[str, Any]:
    """The record of one (model, data) pair; raises on anything that stops it."""
    import tinyfast
    from tinyfast.data import TaskMeta, read_examples
    from tinyfast.models import load_tokenizer

    model_dir = Path(model)
    meta = TaskMeta.load(model_dir)
    record: dict[str, Any] = {
        "model": recorded_path(model_dir),
        "data": recorded_path(data),
        "task": meta.task,
        "labels": list(meta.labels),
        "columns": {
            "text_a": meta.columns.text_a,
            "text_b": meta.columns.text_b,
            "label": meta.columns.label,
        },
        "max_length": meta.max_length,
    }
    if meta.task != "classification":
        return record | {"skipped": f"task {meta.task!r}: accuracy needs a classification model"}
    if meta.columns.label is None:
        return record | {"skipped": "the task file names no label column"}
    examples = read_examples(data, meta.columns, task=meta.task)
    gold = np.array([meta.label_id(str(ex.label), ex.where) for ex in examples])
    pairs = meta.columns.text_b is not None
    inputs = (
        [(ex.text_a, ex.text_b) for ex in examples] if pairs else [ex.text_a for ex in examples]
    )
    where = [ex.where for ex in examples]
    rows = len(inputs)
    record["rows"] = rows
    record["gold_label_counts"] = {
        meta.labels[i]: int(n) for i, n in enumerate(np.bincount(gold, minlength=len(meta.labels)))
    }

    tokenizer = load_tokenizer(model_dir)
    ref, seconds, settings = torch_logits(
        model_dir, tokenizer, inputs, pairs, meta.max_length, batch_size
    )
    if ref.shape != (rows, len(meta.labels)):
        raise ValueError(
            f"{model_dir}: the model gives {ref.shape[1]} outputs, the task has "
            f"{len(meta.labels)} labels"
        )
    torch_pred = ref.argmax(axis=1)
    torch_acc = float(np.mean(torch_pred == gold))
    record["torch_fp32"] = {"accuracy": torch_acc, **_rate(rows, seconds), "settings": settings}

    engines: dict[str, dict[str, Any]] = {}
    built = hasattr(tinyfast, "Runtime")
    tokens: dict[str, Any] = {"skipped": "no bundle ran" if built else "runtime not built"}
    for name, dtype in (("tinyfast_int8", "int8"), ("tinyfast_f32", "f32")):
        if not built:
            engines[name] = {"skipped": "runtime not built"}
            continue
        try:
            runtime, engines[name] = run_bundle(
                model_dir, work, dtype, inputs, meta.labels, ref, gold, threads, batch_size
            )
        except Exception as exc:  # record it, keep the other engine's numbers
            engines[name] = {"failed": f"{type(exc).__name__}: {exc}"}
            continue
        if "rows" not in tokens:  # the first bundle that runs (both share tokenizer.json)
            tokens = token_check(tokenizer, runtime, inputs, pairs, meta.max_length, where)
            tokens["bundle"] = dtype
        del runtime
    record.update(engines)
    record["token_ids"] = tokens
    record["goals"] = goals(torch_acc, engines["tinyfast_int8"], engines["tinyfast_f32"])
    known = [g["met"] for g in record["goals"].values()]
    record["goals_met"] = None if None in known else all(known)
    return record


# ---------------------------------------------------------------------------------------------
# Report


def machine_info(threads: int) -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    versions: dict[str, str | None] = {}
    for module in ("torch", "transformers", "tokenizers", "numpy", "tinyfast"):
        try:
            versions[module] = getattr(__import__(module), "__version__", None)
        except ImportError:
            versions[module] = None
    info: dict[str, Any] = {
        "cpu_model": cpu,
        "logical_cores": os.cpu_count(),
        "threads_used": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = list(os.getloadavg())
    return info


def print_summary(report: dict[str, Any], stream: Any = sys.stdout) -> None:
    for run in report["runs"]:
        head = f"{run['model']} on {run['data']}"
        if "skipped" in run or "failed" in run:
            print(f"{head}: {run.get('skipped') or run.get('failed')}", file=stream)
            continue
        print(f"{head} ({run['rows']} rows)", file=stream)
        for name in ENGINES:
            res = run[name]
            if "accuracy" not in res:
                print(f"  {name:<14} ({res.get('skipped') or res.get('failed')})", file=stream)
                continue
            line = f"  {name:<14} accuracy {100 * res['accuracy']:6.2f}%  "
            line += f"{res['rows_per_s']:8.1f} rows/s"
            if name != "torch_fp32":
                line += (
                    f"  agreement {100 * res['label_agreement_vs_torch']:6.2f}%  "
                    f"max |dlogit| {res['max_abs_logit_diff_vs_torch']:.2e}"
                )
            print(line, file=stream)
        tokens = run["token_ids"]
        shown = tokens.get("skipped") or f"{tokens['mismatched_rows']} rows differ"
        print(f"  token ids HF vs runtime: {shown}", file=stream)
        for name, goal in run["goals"].items():
            value = "n/a" if goal["value"] is None else f"{goal['value']:.4g}"
            print(f"  goal {name}: {value} ({goal['target']}): met {goal['met']}", file=stream)
    print(f"all goals met: {report['goals_met']}", file=stream)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model",
        action="append",
        required=True,
        help="a tinyfast classifier checkpoint (with tinyfast_task.json); repeatable",
    )
    p.add_argument(
        "--data",
        action="append",
        required=True,
        help="labelled TSV/JSONL for the --model at the same position; repeatable",
    )
    p.add_argument("--out", default="bench-results/runtime_accuracy.json")
    p.add_argument("--threads", type=int, default=1, help="threads for every engine")
    p.add_argument("--batch-size", type=int, default=32, help="rows per call, every engine")
    p.add_argument("--work-dir", help="keep the exported bundles here (default: temp)")
    args = p.parse_args(argv)
    if len(args.model) != len(args.data):
        p.error(f"{len(args.model)} --model but {len(args.data)} --data: give them in pairs")
    for name in ("threads", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))
    transformers.utils.logging.disable_progress_bar()
    machine = machine_info(args.threads)
    runs = []
    for i, (model, data) in enumerate(zip(args.model, args.data, strict=True)):
        pair_dir = work / f"pair{i}"
        pair_dir.mkdir(parents=True, exist_ok=True)
        try:
            runs.append(evaluate(model, data, pair_dir, args.threads, args.batch_size))
        except Exception as exc:
            where = {"model": recorded_path(model), "data": recorded_path(data)}
            runs.append(where | {"failed": f"{type(exc).__name__}: {exc}"})
    verdicts = [r.get("goals_met") for r in runs]
    if hasattr(os, "getloadavg"):
        machine["load_average_at_end"] = list(os.getloadavg())
    return {
        "benchmark": "runtime_accuracy",
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "settings": {
            "threads": {
                "torch_num_threads": torch.get_num_threads(),
                "RAYON_NUM_THREADS": os.environ["RAYON_NUM_THREADS"],
                "tinyfast_threads": args.threads,
            },
            "batch_size": args.batch_size,
            "order": "file order, batches of batch_size, one untimed warm-up batch per engine",
            "timed": "tokenization and forward pass of every row (rows_per_s)",
            "speed": 0.0,
            "goals": {
                "int8_accuracy_within_points": GOAL_POINTS,
                "int8_label_agreement": GOAL_AGREEMENT,
                "f32_max_abs_logit_diff": GOAL_F32_LOGITS,
            },
        },
        "runs": runs,
        "goals_met": None if None in verdicts else all(verdicts),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rayon_before = os.environ.get("RAYON_NUM_THREADS")
    try:
        if args.work_dir:
            work = Path(args.work_dir)
            work.mkdir(parents=True, exist_ok=True)
            report = run(args, work)
        else:
            with tempfile.TemporaryDirectory(prefix="tinyfast-accuracy-") as tmp:
                report = run(args, Path(tmp))
    finally:  # main() may run inside a longer process (tests): leave its environment as it was
        if rayon_before is None:
            os.environ.pop("RAYON_NUM_THREADS", None)
        else:
            os.environ["RAYON_NUM_THREADS"] = rayon_before
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print_summary(report)
    print(f"wrote {out}")
    failed = []
    for r in report["runs"]:
        if "failed" in r:
            failed.append(f"{r['model']} on {r['data']}")
        failed += [f"{r['model']} on {r['data']}: {e}" for e in ENGINES if "failed" in r.get(e, {})]
    if failed:
        print(f"failed: {'; '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
