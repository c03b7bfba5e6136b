"""Training logs: the ``train_log.jsonl`` files ``tinyfast.train.loop`` appends under a trainer's
``work/`` directory, one JSON object a line: ``{"event": "train", "epoch", "step", "lr", "loss",
"rows_per_s", ...loss parts}`` every ``log_every`` steps and ``{"event": "eval", "step",
...metrics}`` after each evaluation. A line that is not such an object is a one-line
``DataError`` naming the file and line."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyfast._io import JSON_LIMIT, json_type, read_limited
from tinyfast.errors import DataError
from tinyfast.report.formatting import is_number

__all__ = ["LOG_FILE", "TrainLog", "read_train_log", "stage_logs"]

LOG_FILE = "train_log.jsonl"
_EVENTS = ("train", "eval")


@dataclass
class TrainLog:
    path: Path
    name: str  # where under work/ it lies ("intermediate", "prediction"; "" for work/ itself)
    train: list[dict[str, Any]] = field(default_factory=list)  # by step
    evals: list[dict[str, Any]] = field(default_factory=list)  # by step

    def eval_metrics(self) -> list[str]:
        """The numeric metrics the evaluations recorded, in the order they first appear."""
        names: dict[str, None] = {}
        for record in self.evals:
            names.update((k, None) for k, v in record.items() if k != "step" and is_number(v))
        return list(names)


def stage_logs(stage_dir: Path) -> list[TrainLog]:
    """Every training log of a trainer's output directory (task distillation has two: its
    intermediate and prediction steps), in path order."""
    work = stage_dir / "work"
    if not work.is_dir():
        return []
    logs = []
    for path in sorted(work.rglob(LOG_FILE)):
        where = path.parent.relative_to(work).as_posix()
        logs.append(read_train_log(path, "" if where == "." else where))
    return logs


def read_train_log(path: Path, name: str = "") -> TrainLog:
    text = read_limited(path, JSON_LIMIT, DataError)
    try:
        lines = text.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(str(path), f"not UTF-8 text (byte {exc.start})") from None
    # A resumed run logs again the steps after its last checkpoint: the later line is the run
    # that went on, so it replaces the earlier one of the same step.
    by_event: dict[str, dict[float, dict[str, Any]]] = {event: {} for event in _EVENTS}
    for number, line in enumerate(lines, 1):
        record = _parse(path, number, line)
        event = record.get("event")
        if event in by_event:
            by_event[event][record["step"]] = record
    return TrainLog(path, name,
                    train=[r for _, r in sorted(by_event["train"].items())],
                    evals=[r for _, r in sorted(by_event["eval"].items())])


def _parse(path: Path, number: int, line: str) -> dict[str, Any]:
    where = f"{path}:{number}"
    if not line.strip():
        raise DataError(where, "empty line (a training log holds one JSON object a line)")
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(where, f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(record, dict):
        raise DataError(where, f"expected a JSON object, got {json_type(record)}")
    event = record.get("event")
    if event in _EVENTS and not is_number(record.get("step")):
        raise DataError(where, f"a '{event}' line needs a numeric step")
    if event == "train" and "loss" not in record:
        raise DataError(where, "a 'train' line needs its loss")
    return record
