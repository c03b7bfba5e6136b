"""The contenders of the bench stage (``OUT/bench/bench.json``, the report of ``tinyfast bench``):
accuracy, latency, throughput against the PyTorch and ONNX Runtime references, size and memory,
and why a contender has no numbers."""

from __future__ import annotations

from typing import Any

from tinyfast.bench.plan import REFERENCE
from tinyfast.bench.report import reason
from tinyfast.report.formatting import (
    MISSING,
    accuracy,
    code,
    count,
    is_number,
    megabytes,
    number,
    rate,
    table,
    times,
)
from tinyfast.report.inputs import BENCH, Outputs

__all__ = ["ORT_REFERENCE", "contenders_section", "measured"]

# The runtime peer whose throughput the others are held to, besides PyTorch fp32.
ORT_REFERENCE = "ort_int8"


def measured(bench: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The contenders with numbers (not skipped, not failed), in the report's order."""
    return {name: rec for name, rec in (bench.get("contenders") or {}).items()
            if reason(rec) is None}


def _machine_line(bench: dict[str, Any]) -> str:
    machine = bench.get("machine") or {}
    settings = bench.get("settings") or {}
    parts = [str(machine.get("cpu_model") or "unknown CPU")]
    if is_number(machine.get("logical_cores")):
        parts.append(count(machine["logical_cores"], "logical core"))
    threads = settings.get("threads", machine.get("threads_used"))
    if is_number(threads):
        parts.append(f"{count(threads, 'thread')} per contender")
    loads = []
    for key, when in (("load_average_at_start", "at start"), ("load_average_at_end", "at end")):
        values = machine.get(key)
        if isinstance(values, list) and values:
            loads.append(f"{' / '.join(number(v, '.2f') for v in values)} {when}")
    line = "Machine: " + ", ".join(parts)
    if loads:
        line += "; load average (1 / 5 / 15 min) " + ", ".join(loads)
    return line + "."


def _data_line(bench: dict[str, Any]) -> str:
    data = bench.get("data") or {}
    settings = bench.get("settings") or {}
    parts = [f"Data: {code(data.get('path'))}"]
    if is_number(data.get("rows")):
        parts.append(count(data["rows"], "row"))
    if is_number(settings.get("latency_rows")):
        parts.append(f"latency at batch 1 over {count(settings['latency_rows'], 'row')}")
    if is_number(settings.get("rounds")):
        parts.append(count(settings["rounds"], "round"))
    return ", ".join(parts) + "."


def _throughput(rec: dict[str, Any]) -> Any:
    return rec.get("throughput_rows_per_s")


def _relative(rec: dict[str, Any], ref: dict[str, Any] | None) -> str:
    if ref is None or not is_number(_throughput(rec)) or not is_number(_throughput(ref)) \
            or _throughput(ref) == 0:
        return MISSING
    return times(_throughput(rec) / _throughput(ref))


def _exit_layer(rec: dict[str, Any]) -> str:
    if "speed" not in rec:
        return MISSING
    layers = rec.get("num_layers")
    of_layers = f" of {layers}" if is_number(layers) else ""
    return f"{number(rec.get('mean_exit_layer'), '.2f')}{of_layers}"


def contenders_section(outputs: Outputs) -> str:
    title = "## Contenders"
    bench = outputs.bench
    if bench is None:
        return f"{title}\n\n_No data ({outputs.why_missing('bench', BENCH)})._"
    with_numbers = measured(bench)
    batch = (bench.get("settings") or {}).get("batch_size")
    references = [name for name in (REFERENCE, ORT_REFERENCE) if name in with_numbers]
    header = ["contender", "accuracy", "macro F1", "p50 ms (batch 1)", "p95 ms (batch 1)",
              f"rows/s (batch {batch})" if is_number(batch) else "rows/s",
              *(f"rows/s vs {name}" for name in references), "size", "peak RSS MB",
              "mean exit layer"]
    rows = []
    for name, rec in with_numbers.items():
        latency = rec.get("latency_ms") or {}
        memory = rec.get("memory") or {}
        rows.append([name, accuracy(rec.get("accuracy")), accuracy(rec.get("macro_f1")),
                     number(latency.get("p50"), ".2f"), number(latency.get("p95"), ".2f"),
                     rate(_throughput(rec)),
                     *(_relative(rec, with_numbers[ref]) for ref in references),
                     megabytes(rec.get("size_bytes")), number(memory.get("peak_rss_mb"), ".0f"),
                     _exit_layer(rec)])
    parts = [title, _machine_line(bench) + " " + _data_line(bench)]
    parts.append(table(header, rows, [i > 0 for i in range(len(header))]) if rows
                 else "_No contender has numbers._")
    missing = [f"- {name}: {reason(rec)}" for name, rec in (bench.get("contenders") or {}).items()
               if reason(rec) is not None]
    if missing:
        parts.append("Without numbers:\n\n" + "\n".join(missing))
    return "\n\n".join(parts)
