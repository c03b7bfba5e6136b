"""``tinyfast pipeline``: the stages in order, each skipped when what it reads has not changed.

Each stage's record, ``OUT/pipeline/<stage>.json``, holds its fingerprint (``fingerprint.py``)
and its status: written as ``running`` before the stage starts and replaced by ``done`` (with its
artifact and summary) after it ends. On a rerun a ``done`` stage with the same fingerprint is
skipped; a ``running`` one with the same fingerprint was interrupted and continues from its last
checkpoint; anything else starts afresh in its own directory. ``from_stage`` reruns that stage
and every later one whatever their records say.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from tinyfast.errors import ConfigError
from tinyfast.pipeline.fingerprint import fingerprint
from tinyfast.pipeline.recipe import STAGES, Recipe, load_recipe
from tinyfast.pipeline.stages import STAGE_RUNNERS, Context

__all__ = ["RECORDS", "run_pipeline"]

RECORDS = "pipeline"  # OUT/pipeline/<stage>.json and OUT/pipeline/summary.json


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically: a kill never leaves half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # missing or unreadable: the stage runs again
    return record if isinstance(record, dict) else None


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"pipeline: {message}", file=sys.stderr, flush=True)


def run_pipeline(
    teacher: str,
    train: str | Path,
    dev: str | Path,
    out: str | Path,
    *,
    corpus: str | Path | None = None,
    unlabeled: str | Path | None = None,
    recipe: Recipe | str | Path | None = None,
    from_stage: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Runs the recipe's stages from ``teacher`` on ``train``/``dev`` into ``out`` and returns
    the summary also written to ``out/pipeline/summary.json``."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    if from_stage is not None and from_stage not in STAGES:
        raise ConfigError(f"--from {from_stage}: no such stage (stages: {', '.join(STAGES)})")
    out = Path(out)
    ctx = Context(teacher=str(teacher), train=Path(train), dev=Path(dev), out=out,
                  recipe=recipe, corpus=Path(corpus) if corpus else None,
                  unlabeled=Path(unlabeled) if unlabeled else None, progress=progress)
    for name, path in (("--train", ctx.train), ("--dev", ctx.dev), ("--corpus", ctx.corpus),
                       ("--unlabeled", ctx.unlabeled)):
        if path is not None and not path.is_file():
            raise ConfigError(f"{name} {path}: no such file")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory")
    _set_threads(recipe)
    started = time.perf_counter()
    forced = STAGES.index(from_stage) if from_stage is not None else len(STAGES)
    stages: dict[str, Any] = {}
    for index, name in enumerate(STAGES):
        runner = STAGE_RUNNERS[name]
        record_path = out / RECORDS / f"{name}.json"
        decision = runner.decide(ctx)
        if not decision.run:
            stages[name] = {"status": "off", "reason": decision.reason}
            _say(progress, f"{name}: off ({decision.reason})")
            continue
        settings = {"run": recipe["run"], name: recipe[name]}
        fp = fingerprint(name, settings, runner.inputs(ctx))
        record = _read_record(record_path)
        same = record is not None and record.get("fingerprint") == fp and index < forced
        artifact = record.get("artifact") if same else None
        if same and record["status"] == "done" and (artifact is None or (out / artifact).exists()):
            ctx.fingerprints[name] = fp
            if artifact is not None:
                ctx.artifacts[name] = out / artifact
            ctx.summaries[name] = record["summary"]
            stages[name] = {"status": "skipped", "reason": "inputs and settings unchanged",
                            "seconds": record["seconds"], "resumed": record.get("resumed", False)}
            _say(progress, f"{name}: unchanged, skipped")
            continue
        resume = same and record["status"] == "running"
        # The summary so far: where an unfinished run stands, and what the report stage reads.
        _write_json(out / RECORDS / "summary.json", _summary(ctx, stages, started))
        _say(progress, f"{name}: {'continuing' if resume else 'running'} ({decision.reason})")
        _write_json(record_path, {"stage": name, "fingerprint": fp, "status": "running"})
        t0 = time.perf_counter()
        result = runner.run(ctx, out / name, resume)
        seconds = time.perf_counter() - t0
        artifact_rel = _inside(out, result.artifact) if result.artifact else None
        # seconds: this invocation's; a resumed stage's earlier invocations are not counted.
        _write_json(record_path, {"stage": name, "fingerprint": fp, "status": "done",
                                  "artifact": artifact_rel, "seconds": seconds, "resumed": resume,
                                  "summary": result.summary})
        ctx.fingerprints[name] = fp
        if artifact_rel is not None:  # as a skipped stage's: OUT as given, then the record's path
            ctx.artifacts[name] = out / artifact_rel
        ctx.summaries[name] = result.summary
        stages[name] = {"status": "ran", "resumed": resume, "seconds": seconds}
    summary = _summary(ctx, stages, started)
    _write_json(out / RECORDS / "summary.json", summary)
    return summary


def _inside(out: Path, path: Path) -> str:
    """``path`` relative to ``out`` (either may be relative or absolute, with ``..`` or
    symbolic links: stages hand back resolved paths)."""
    return path.resolve().relative_to(out.resolve()).as_posix()


def _summary(ctx: Context, stages: dict[str, Any], started: float) -> dict[str, Any]:
    def given(path: Path | None) -> str | None:
        return str(path) if path is not None else None

    return {
        "teacher": ctx.teacher,
        "train": str(ctx.train),
        "dev": str(ctx.dev),
        "corpus": given(ctx.corpus),
        "unlabeled": given(ctx.unlabeled),
        "recipe": ctx.recipe.to_dict(),
        "recipe_source": ctx.recipe.source,
        "stages": dict(stages),
        "artifacts": {k: _inside(ctx.out, v) for k, v in ctx.artifacts.items()},
        "results": _results(ctx),
        "seconds": time.perf_counter() - started,
    }


def _set_threads(recipe: Recipe) -> None:
    threads = recipe["run"]["threads"]
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def _best_accuracy(summary: dict[str, Any] | None) -> float | None:
    best = (summary or {}).get("best") or {}
    return best.get("accuracy")


def _results(ctx: Context) -> dict[str, Any]:
    """The headline figures: teacher and student dev accuracy, and the int8 curve."""
    evaluated = ctx.summaries.get("evaluate", {})
    teacher = (evaluated.get("teacher") or {}).get("accuracy")
    results: dict[str, Any] = {
        "teacher_dev_accuracy": teacher if teacher is not None
        else _best_accuracy(ctx.summaries.get("finetune")),
        "student_dev_accuracy": _best_accuracy(ctx.summaries.get("task")),
    }
    curve = evaluated.get("points")
    if curve:
        results["int8_curve"] = [{k: p[k] for k in ("speed", "accuracy", "mean_exit_layer",
                                                     "relative_flops", "rows_per_second")
                                  if k in p} for p in curve]
    return results
