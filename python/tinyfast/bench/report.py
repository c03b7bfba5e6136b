"""Comparing contenders: label agreement with a reference, latency ratios against a baseline,
and the terminal table of ``tinyfast bench``."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tinyfast.bench.contender import Prediction

__all__ = ["agreement", "format_table", "ratios_vs", "reason"]


def agreement(pred: Prediction, ref: Prediction) -> dict[str, Any]:
    return {
        "rows": int(ref.labels.size),
        "label_agreement": float(np.mean(pred.labels == ref.labels)),
        "max_abs_prob_diff": float(np.abs(pred.probabilities - ref.probabilities).max()),
    }


def ratios_vs(results: dict[str, dict], baseline: str) -> dict[str, Any]:
    """p50 and mean latency of every contender with numbers over ``baseline``'s."""
    base = results.get(baseline, {})
    if "latency_ms" not in base:
        return {"skipped": f"{baseline} has no numbers in this run"}
    out = {}
    for name, res in results.items():
        if "latency_ms" in res:
            out[name] = {
                stat: res["latency_ms"][stat] / base["latency_ms"][stat] for stat in ("p50", "mean")
            }
    return out


def reason(record: dict[str, Any]) -> str | None:
    """Why a contender has no numbers (``skipped: ...`` or ``failed: ...``), or None."""
    for key in ("skipped", "failed"):
        if key in record:
            return f"{key}: {record[key]}"
    return None


def _cell(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def format_table(report: dict[str, Any]) -> str:
    """One line per contender of a ``tinyfast bench`` report: accuracy, macro F1, label
    agreement with torch_fp32, batch-1 latency p50/p95, batch rows/s, size and peak memory (or
    why it has no numbers)."""
    batch = report["settings"]["batch_size"]
    header = ["contender", "accuracy", "macro F1", "agree", "p50 ms", "p95 ms",
              f"rows/s@{batch}", "size MB", "peak MB", "exit"]
    rows, notes = [], []
    for name, rec in report["contenders"].items():
        why = reason(rec)
        if why:
            notes.append((name, why))
            continue
        lat = rec["latency_ms"]
        exit_layer = rec.get("mean_exit_layer")
        rows.append([
            name,
            _cell(rec["accuracy"], ".4f"),
            _cell(rec["macro_f1"], ".4f"),
            _cell(rec.get("label_agreement_with_torch_fp32"), ".3f"),
            _cell(lat["p50"], ".2f"),
            _cell(lat["p95"], ".2f"),
            _cell(rec["throughput_rows_per_s"], ".1f"),
            _cell(rec["size_bytes"] / 1e6 if rec.get("size_bytes") else None, ".1f"),
            _cell(rec["memory"].get("peak_rss_mb"), ".0f"),
            "-" if exit_layer is None else f"{exit_layer:.2f}/{rec['num_layers']}",
        ])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in [header, *rows]]
    width = max(widths[0], *(len(n) for n, _ in notes)) if notes else widths[0]
    lines += [f"{name.ljust(width)}  ({why})" for name, why in notes]
    return "\n".join(lines)
