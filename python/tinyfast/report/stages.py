"""The stage table: every stage the pipeline summary lists, in its order, with its status, wall
time and the one result that says how it went."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tinyfast.bench.report import reason
from tinyfast.report.formatting import (
    MISSING,
    accuracy,
    count,
    duration,
    is_number,
    megabytes,
    number,
    share,
    speed,
    stage_status,
    table,
)
from tinyfast.report.inputs import SUMMARY, Outputs

__all__ = ["stage_section"]


def stage_section(outputs: Outputs) -> str:
    title = "## Stages"
    if outputs.summary is None:
        return f"{title}\n\n_No data: {SUMMARY} is missing, so the stages are unknown._"
    rows = []
    for stage, info in outputs.stages.items():
        result = key_result(stage, outputs) if outputs.finished(stage) else ""
        rows.append([stage, stage_status(info), duration(info.get("seconds")),
                     result or MISSING])
    body = table(["stage", "status", "wall time", "result"], rows, [False, False, True, False])
    note = ("A skipped stage's wall time is that of the run that made its output; the total "
            "above counts this run alone. A resumed stage's wall time counts only the "
            "invocation that finished it.")
    return f"{title}\n\n{body}\n\n{note}"


def key_result(stage: str, outputs: Outputs) -> str:
    """The figure that sums ``stage`` up, "" when there is none (or the stage is unknown)."""
    describe = _RESULTS.get(stage)
    if describe is None:
        return ""
    return describe(outputs.stage_summaries.get(stage) or {}, outputs)


def _best(summary: dict[str, Any]) -> dict[str, Any]:
    best = summary.get("best")
    return best if isinstance(best, dict) else {}


def _dev_best(summary: dict[str, Any]) -> str:
    best = _best(summary)
    if "accuracy" in best:
        return f"best dev accuracy {accuracy(best['accuracy'])}"
    if "pearson" in best:  # regression tasks pick their best model by pearson
        return f"best dev pearson {number(best['pearson'], '.4f')}"
    return ""


def _finetune(summary: dict[str, Any], outputs: Outputs) -> str:
    return _dev_best(summary)


def _augment(summary: dict[str, Any], outputs: Outputs) -> str:
    rows, rows_out = summary.get("rows"), summary.get("rows_out")
    if not is_number(rows) or not is_number(rows_out):
        return ""
    return f"{count(rows, 'training row')} -> {rows_out:,}"


def _general(summary: dict[str, Any], outputs: Outputs) -> str:
    loss = _best(summary).get("heldout_loss")
    return f"best held-out loss {number(loss, '.4f')}" if loss is not None else ""


def _task(summary: dict[str, Any], outputs: Outputs) -> str:
    text = _dev_best(summary)
    student, teacher = _best(summary).get("accuracy"), outputs.teacher_accuracy()
    if is_number(student) and is_number(teacher):
        text += f" ({share(student, teacher)} of the teacher)"
    return text


def _selfdistill(summary: dict[str, Any], outputs: Outputs) -> str:
    kl = _best(summary).get("heldout_kl")
    return f"held-out KL {number(kl, '.4f')}" if kl is not None else ""


def _exit_layers(exits: Any) -> list[Any]:
    """The layers of a bundle's exits: ``[{"layer": 1, "kind": ...}, ...]`` as tinyfast.json
    writes them, or ``[[1, kind], ...]`` as the runtime lists them."""
    layers = []
    for entry in exits if isinstance(exits, list) else []:
        if isinstance(entry, dict):
            layers.append(entry.get("layer"))
        elif isinstance(entry, list) and entry:
            layers.append(entry[0])
    return layers


def _export(summary: dict[str, Any], outputs: Outputs) -> str:
    if not summary:
        return ""
    parts = [f"bundle {megabytes(summary.get('bundle_bytes'))}"]
    if summary.get("quantization"):
        parts.append(str(summary["quantization"]))
    layers = _exit_layers(summary.get("exits"))
    parts.append(f"exits after layers {', '.join(str(x) for x in layers)}" if layers
                 else "no exits")
    return ", ".join(parts)


def _evaluate(summary: dict[str, Any], outputs: Outputs) -> str:
    points = outputs.points()  # evaluate's artifact: its record repeats them
    if not points:
        return ""
    speeds = ", ".join(speed(p.get("speed")) for p in points)
    rows = (outputs.curve or {}).get("rows")
    on = f" on {count(rows, 'dev row')}" if is_number(rows) else ""
    return f"speeds {speeds}{on}"


def _bench(summary: dict[str, Any], outputs: Outputs) -> str:
    contenders = (outputs.bench or {}).get("contenders") or summary.get("contenders") or {}
    if not contenders:
        return ""
    measured = sum(1 for rec in contenders.values() if reason(rec) is None)
    return f"{measured} of {count(len(contenders), 'contender')} measured"


_RESULTS: dict[str, Callable[[dict[str, Any], Outputs], str]] = {
    "finetune": _finetune,
    "augment": _augment,
    "general": _general,
    "task": _task,
    "selfdistill": _selfdistill,
    "export": _export,
    "evaluate": _evaluate,
    "bench": _bench,
}
