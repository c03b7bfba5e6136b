"""What a finished ``tinyfast pipeline`` left under its output directory, read and shape-checked
once: the pipeline summary, each stage's summary, the int8 speed curve and the bench report.

Any file may be missing (a stage was off, or has not run yet); ``why_missing`` says why in the
words of the summary. A file that is there but broken is a one-line ``DataError`` naming it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyfast._io import json_type, read_json_object
from tinyfast.errors import ConfigError, DataError
from tinyfast.report.formatting import is_number, stage_status

__all__ = ["BENCH", "CURVE", "SUMMARY", "Outputs", "read_outputs"]

# Where the pipeline's stages write, relative to its output directory.
RECORDS = "pipeline"  # <stage>.json: fingerprint, status, artifact, seconds, summary
SUMMARY = f"{RECORDS}/summary.json"
CURVE = "evaluate/curve.json"
BENCH = "bench/bench.json"
TRAINER_SUMMARY = "metrics.json"  # what every trainer writes into its output directory
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-]+")


@dataclass
class Outputs:
    out: Path
    summary: dict[str, Any] | None  # OUT/pipeline/summary.json
    curve: dict[str, Any] | None  # OUT/evaluate/curve.json
    bench: dict[str, Any] | None  # OUT/bench/bench.json
    # Stage -> what it returned (its record's summary, or its trainer's metrics.json).
    stage_summaries: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def stages(self) -> dict[str, dict[str, Any]]:
        """Stage -> {status, reason?, seconds?, resumed?}, in the order the stages ran."""
        return (self.summary or {}).get("stages", {})

    def finished(self, stage: str) -> bool:
        """Whether ``stage``'s output is there: it ran now or in an earlier run."""
        # Stage names become paths under OUT: only plain names, never "../elsewhere".
        return bool(_PLAIN_NAME.fullmatch(stage)) and \
            self.stages.get(stage, {}).get("status") in ("ran", "skipped")

    def teacher_accuracy(self) -> Any:
        """The fine-tuned teacher's dev accuracy: as the evaluate stage measured it next to the
        int8 curve, else as the pipeline summary recorded it (finetune's best)."""
        measured = (self.curve or {}).get("teacher")
        if isinstance(measured, dict) and "accuracy" in measured:
            return measured["accuracy"]
        results = (self.summary or {}).get("results")
        return results.get("teacher_dev_accuracy") if isinstance(results, dict) else None

    def points(self) -> list[dict[str, Any]]:
        """The int8 speed curve's points (``tinyfast.exits.speed_curve``), [] without one."""
        return (self.curve or {}).get("points", [])

    def why_missing(self, stage: str, relative: str) -> str:
        """Why ``relative`` (a file ``stage`` writes) is not there."""
        if self.summary is None:
            return f"{relative} is missing, and there is no {SUMMARY} to say why"
        info = self.stages.get(stage)
        if info is None:
            return f"{stage}: not among the stages of this pipeline run"
        if info.get("status") == "off":
            return f"{stage}: {stage_status(info)}"
        return f"{stage}: {stage_status(info)}, but {relative} is missing"


def read_outputs(out: str | Path) -> Outputs:
    """Everything the report reads under ``out``; a ``ConfigError`` when ``out`` is not a
    pipeline output directory."""
    out = Path(out)
    if not out.exists():
        raise ConfigError(f"{out}: no such directory")
    if not out.is_dir():
        raise ConfigError(f"{out}: not a directory")
    summary = _optional(out / SUMMARY, "the pipeline summary")
    curve = _optional(out / CURVE, "an int8 speed curve")
    bench = _optional(out / BENCH, "a tinyfast bench report")
    if summary is None and curve is None and bench is None:
        raise ConfigError(f"{out}: holds no pipeline output (none of {SUMMARY}, {CURVE}, "
                          f"{BENCH}); give the --out directory of tinyfast pipeline")
    if summary is not None:
        _check_table(out / SUMMARY, summary, "stages")
    if curve is not None:
        _check_points(out / CURVE, curve)
    if bench is not None:
        _check_table(out / BENCH, bench, "contenders")
    outputs = Outputs(out, summary, curve, bench)
    for stage in outputs.stages:
        if outputs.finished(stage):
            found = _stage_summary(out, stage)
            if found is not None:
                outputs.stage_summaries[stage] = found
    return outputs


def _optional(path: Path, what: str) -> dict[str, Any] | None:
    if not path.exists():
        return None
    return read_json_object(path, what, error=DataError)


def _check_table(path: Path, data: dict[str, Any], key: str) -> None:
    """``data[key]``, when there, is an object of objects (stage -> status, contender ->
    record)."""
    if key not in data:
        return
    table = data[key]
    if not isinstance(table, dict):
        raise DataError(str(path), f"{key}: expected an object, got {json_type(table)}")
    for name, entry in table.items():
        if not isinstance(entry, dict):
            raise DataError(str(path), f"{key}.{name}: expected an object, got "
                                       f"{json_type(entry)}")


def _check_points(path: Path, curve: dict[str, Any]) -> None:
    points = curve.get("points", [])
    if not isinstance(points, list):
        raise DataError(str(path), f"points: expected an array, got {json_type(points)}")
    for i, point in enumerate(points):
        if not isinstance(point, dict) or not is_number(point.get("speed")):
            raise DataError(str(path), f"points[{i}]: expected an object with a numeric speed")
        if "accuracy" in point and not _is_json_number(point["accuracy"]):
            raise DataError(str(path), f"points[{i}].accuracy: expected a number, got "
                                       f"{json_type(point['accuracy'])}")
        if not isinstance(point.get("exit_share", {}), dict):
            raise DataError(str(path), f"points[{i}].exit_share: expected an object")


def _is_json_number(value: Any) -> bool:
    # NaN passes: a metric that came out undefined is still a number the tables write as "-".
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _stage_summary(out: Path, stage: str) -> dict[str, Any] | None:
    """The stage's summary from its record, else from its trainer's ``metrics.json`` (a record
    of an interrupted stage has none)."""
    record_path = out / RECORDS / f"{stage}.json"
    if record_path.exists():
        record = read_json_object(record_path, "a stage record", error=DataError)
        summary = record.get("summary")
        if isinstance(summary, dict):
            return summary
        if summary is not None:
            raise DataError(str(record_path), f"summary: expected an object, got "
                                              f"{json_type(summary)}")
    metrics = out / stage / TRAINER_SUMMARY
    if metrics.exists():
        return read_json_object(metrics, "a training summary", error=DataError)
    return None
