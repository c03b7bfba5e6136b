"""The pipeline's stages: what each one reads, whether it runs, and how it runs.

Every stage writes into its own directory under OUT (``OUT/<stage>``) through the command it
wraps (finetune, distill general, distill task, selfdistill, export) and returns the artifact the
next stages read. Trainers get ``resume=True`` when the runner continues an interrupted stage, so
a killed pipeline finishes with the same result as one that was never stopped (the training loop
resumes exactly, see ``tinyfast.train.loop``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyfast.data import Columns, TaskMeta
from tinyfast.errors import ConfigError
from tinyfast.pipeline.fingerprint import digest_path
from tinyfast.pipeline.recipe import Recipe

__all__ = ["STAGE_RUNNERS", "Context", "Decision", "StageResult"]


@dataclass
class Context:
    """What the stages share: the user's inputs, the recipe, OUT, and what earlier stages made."""

    teacher: str  # "minilm" or a checkpoint directory
    train: Path
    dev: Path
    out: Path
    recipe: Recipe
    corpus: Path | None = None
    unlabeled: Path | None = None
    progress: bool = True
    artifacts: dict[str, Path] = field(default_factory=dict)  # stage -> what it made
    fingerprints: dict[str, str] = field(default_factory=dict)  # stage -> its fingerprint
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def teacher_path(self) -> Path:
        from tinyfast.models import resolve_model_path

        return resolve_model_path(self.teacher)

    def columns(self) -> Columns:
        run = self.recipe["run"]
        return Columns(text_a=run["text_a"], text_b=run["text_b"] or None, label=run["label"])

    def classifier(self) -> Path:
        """The fine-tuned teacher: finetune's model, or the given teacher when it already is a
        classifier."""
        return self.artifacts.get("finetune") or self.teacher_path()

    def upstream(self, *stages: str) -> dict[str, str]:
        """The fingerprints of those of ``stages`` that ran (their artifacts are inputs)."""
        return {f"stage:{s}": self.fingerprints[s] for s in stages if s in self.fingerprints}

    def train_config(self, settings: dict[str, Any], **fields: Any):
        from tinyfast.train import TrainConfig

        run = self.recipe["run"]
        values = dict(seed=run["seed"], progress=self.progress, log_every=20)
        values.update({k: settings[k] for k in ("epochs", "lr", "batch_size", "warmup",
                                                "eval_every") if k in settings})
        values.update(fields)
        return TrainConfig(**values)


@dataclass
class Decision:
    run: bool
    reason: str  # why it runs or not, for the record and the terminal


@dataclass
class StageResult:
    artifact: Path | None
    summary: dict[str, Any]


def _by_recipe(ctx: Context, stage: str) -> Decision:
    """A stage that runs when its recipe table says ``enabled = true``."""
    enabled = ctx.recipe[stage]["enabled"]
    return Decision(enabled, "on in the recipe" if enabled else "off in the recipe")


# --------------------------------------------------------------------------------------------
# finetune


def _finetune_decide(ctx: Context) -> Decision:
    enabled = ctx.recipe["finetune"]["enabled"]
    has_head = (ctx.teacher_path() / "tinyfast_task.json").is_file()
    if enabled == "auto":
        return Decision(not has_head, "the teacher is already a tinyfast classifier" if has_head
                        else "the teacher has no classifier for this task yet")
    if not enabled and not has_head:
        raise ConfigError(f"[finetune] enabled = false, but the teacher {ctx.teacher} is not a "
                          "fine-tuned tinyfast classifier (no tinyfast_task.json)")
    return _by_recipe(ctx, "finetune")


def _finetune_inputs(ctx: Context) -> dict[str, str]:
    return {"teacher": digest_path(ctx.teacher_path()), "train": digest_path(ctx.train),
            "dev": digest_path(ctx.dev)}


def _finetune_run(ctx: Context, out: Path, resume: bool) -> StageResult:
    from tinyfast.finetune import finetune

    s = ctx.recipe["finetune"]
    summary = finetune(ctx.teacher, ctx.train, ctx.dev, out, columns=ctx.columns(),
                       max_length=ctx.recipe["run"]["max_length"], config=ctx.train_config(s),
                       resume=resume, overwrite=not resume)
    return StageResult(out / "model", summary)


# --------------------------------------------------------------------------------------------
# augment (TinyBERT's data augmentation of the training file)


def _augment_decide(ctx: Context) -> Decision:
    return _by_recipe(ctx, "augment")


def _augment_sources(ctx: Context) -> tuple[str | None, str | None]:
    """The masked LM and word-vector file of the recipe ("" is None)."""
    s = ctx.recipe["augment"]
    return s["mlm"] or None, s["vectors"] or None


def _augment_inputs(ctx: Context) -> dict[str, str]:
    mlm, vectors = _augment_sources(ctx)
    inputs = {"train": digest_path(ctx.train)}
    if mlm is not None:
        inputs["mlm"] = digest_path(mlm)
    if vectors is not None:
        inputs["vectors"] = digest_path(vectors)
    if mlm is None and vectors is None:  # whole-word vectors come from the teacher's pieces
        inputs["teacher"] = digest_path(ctx.teacher_path())
    return inputs


def _augment_run(ctx: Context, out: Path, resume: bool) -> StageResult:
    from tinyfast.augment import AugmentOptions, MaskedLMOptions, augment

    s = ctx.recipe["augment"]
    run = ctx.recipe["run"]
    mlm, vectors = _augment_sources(ctx)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"train{ctx.train.suffix or '.tsv'}"
    options = AugmentOptions(n=s["n"], p=s["p"], k=s["k"], seed=run["seed"],
                             threads=run["threads"])
    # Continue a killed run from its partial file; a fresh run replaces a stale output.
    partial = target.with_name(target.name + ".partial")
    summary = augment(ctx.train, target, columns=ctx.columns(), options=options, mlm=mlm,
                      mlm_options=MaskedLMOptions(mode=s["mode"], min_gap=s["min_gap"],
                                                  backend=s["backend"], threads=run["threads"]),
                      vectors=vectors, teacher=ctx.teacher, resume=resume and partial.exists(),
                      overwrite=True, progress=ctx.progress)
    return StageResult(target, summary)


# --------------------------------------------------------------------------------------------
# general distillation


def _general_decide(ctx: Context) -> Decision:
    enabled = ctx.recipe["general"]["enabled"]
    if enabled is True and ctx.corpus is None:
        raise ConfigError("[general] enabled = true needs a corpus (--corpus FILE)")
    if enabled == "auto":
        return Decision(ctx.corpus is not None, "a corpus is given" if ctx.corpus
                        else "no corpus given")
    return _by_recipe(ctx, "general")


def _general_inputs(ctx: Context) -> dict[str, str]:
    assert ctx.corpus is not None
    return {"teacher": digest_path(ctx.teacher_path()), "corpus": digest_path(ctx.corpus)}


def _general_run(ctx: Context, out: Path, resume: bool) -> StageResult:
    from tinyfast.distill import distill_general

    s = ctx.recipe["general"]
    summary = distill_general(ctx.teacher, ctx.corpus, out, student=s["student"],
                              max_length=ctx.recipe["run"]["max_length"],
                              config=ctx.train_config(s), heldout=s["heldout"], resume=resume,
                              overwrite=not resume)
    return StageResult(out / "model", summary)


# --------------------------------------------------------------------------------------------
# task distillation


def _task_decide(ctx: Context) -> Decision:
    return _by_recipe(ctx, "task")


def _task_inputs(ctx: Context) -> dict[str, str]:
    inputs = {"train": digest_path(ctx.train), "dev": digest_path(ctx.dev)}
    if "finetune" not in ctx.fingerprints:
        inputs["teacher"] = digest_path(ctx.classifier())
    return inputs | ctx.upstream("finetune", "augment", "general")


def _task_run(ctx: Context, out: Path, resume: bool) -> StageResult:
    from tinyfast.distill import StageSettings, distill_task

    s = ctx.recipe["task"]
    init = s["init"]
    general = ctx.artifacts.get("general")
    if init == "auto":
        init = "checkpoint" if general is not None else "random"
    summary = distill_task(
        str(ctx.classifier()), ctx.train, ctx.dev, out, student=s["student"], init=init,
        init_checkpoint=str(general) if init == "checkpoint" else None,
        augmented=ctx.artifacts.get("augment"), columns=ctx.columns(),
        intermediate=StageSettings(s["intermediate_epochs"], s["intermediate_lr"], 0.0),
        prediction=StageSettings(s["prediction_epochs"], s["prediction_lr"], 0.1),
        temperature=s["temperature"],
        config=ctx.train_config(s),  # epochs and rates come per step, above
        resume=resume, overwrite=not resume)
    return StageResult(out / "model", summary)


# --------------------------------------------------------------------------------------------
# selfdistill (FastBERT branches)


def _model_to_adapt(ctx: Context) -> Path:
    return ctx.artifacts.get("task") or ctx.classifier()


def _selfdistill_decide(ctx: Context) -> Decision:
    return _by_recipe(ctx, "selfdistill")


def _unlabeled(ctx: Context) -> Path:
    """FastBERT's unlabeled text: --unlabeled, else the augmented training file, else the
    training file (its labels are ignored)."""
    return ctx.unlabeled or ctx.artifacts.get("augment") or ctx.train


def _selfdistill_inputs(ctx: Context) -> dict[str, str]:
    if ctx.unlabeled is None and "augment" in ctx.artifacts:
        inputs = ctx.upstream("augment")
    else:
        inputs = {"unlabeled": digest_path(_unlabeled(ctx))}
    if "task" not in ctx.fingerprints and "finetune" not in ctx.fingerprints:
        inputs["model"] = digest_path(_model_to_adapt(ctx))
    return inputs | ctx.upstream("finetune", "task")


def _selfdistill_run(ctx: Context, out: Path, resume: bool) -> StageResult:
    from tinyfast.selfdistill import selfdistill

    s = ctx.recipe["selfdistill"]
    summary = selfdistill(str(_model_to_adapt(ctx)), _unlabeled(ctx), out, branch=s["branch"],
                          temperature=s["temperature"], heldout=s["heldout"],
                          config=ctx.train_config(s), resume=resume, overwrite=not resume)
    return StageResult(out / "model", summary)


# --------------------------------------------------------------------------------------------
# export


def _model_to_export(ctx: Context) -> Path:
    return ctx.artifacts.get("selfdistill") or _model_to_adapt(ctx)


def _export_decide(ctx: Context) -> Decision:
    return _by_recipe(ctx, "export")


def _calibration(ctx: Context) -> Path | None:
    """The text the int8 export calibrates on (self-distillation's), or None for plain
    rounding."""
    s = ctx.recipe["export"]
    return _unlabeled(ctx) if s["dtype"] == "int8" and s["calibration_rows"] > 0 else None


def _export_inputs(ctx: Context) -> dict[str, str]:
    upstream = ctx.upstream("finetune", "task", "selfdistill")
    inputs = upstream or {"model": digest_path(_model_to_export(ctx))}
    calibration = _calibration(ctx)
    if calibration is not None:
        if ctx.unlabeled is None and "augment" in ctx.artifacts:
            inputs |= ctx.upstream("augment")
        else:
            inputs["calibration"] = digest_path(calibration)
    return inputs


def _export_run(ctx: Context, out: Path, resume: bool) -> StageResult:
    from tinyfast.export import export

    out.mkdir(parents=True, exist_ok=True)
    calibration = _calibration(ctx)
    bundle = export(_model_to_export(ctx), out / "bundle", dtype=ctx.recipe["export"]["dtype"],
                    progress=ctx.progress, calibration=calibration,
                    calibration_rows=ctx.recipe["export"]["calibration_rows"] if calibration
                    else None, residual_layers=ctx.recipe["export"]["residual_layers"])
    meta = json.loads((bundle / "tinyfast.json").read_text(encoding="utf-8"))
    size = sum(p.stat().st_size for p in bundle.iterdir() if p.is_file())
    return StageResult(bundle, {"bundle_bytes": size, "quantization": meta.get("quantization"),
                                "smoothing": meta.get("smoothing", False),
                                "residual_layers": meta.get("residual_layers", []),
                                "exits": meta.get("exits", [])})


# --------------------------------------------------------------------------------------------
# evaluate over speeds (the int8 runtime on the dev set)


def _evaluate_decide(ctx: Context) -> Decision:
    decision = _by_recipe(ctx, "evaluate")
    if decision.run and "export" not in ctx.artifacts:
        raise ConfigError("[evaluate] runs the exported bundle; it needs [export] enabled")
    return decision


def _evaluate_inputs(ctx: Context) -> dict[str, str]:
    return {"dev": digest_path(ctx.dev)} | ctx.upstream("export")


def _evaluate_run(ctx: Context, out: Path, resume: bool) -> StageResult:
    from tinyfast.data import read_examples
    from tinyfast.exits import ModelShape, runtime_predictor, speed_curve
    from tinyfast.runtime import Runtime

    s = ctx.recipe["evaluate"]
    bundle = ctx.artifacts["export"]
    runtime = Runtime.load(bundle, threads=ctx.recipe["run"]["threads"])
    meta = TaskMeta.load(_model_to_export(ctx))
    examples = read_examples(ctx.dev, meta.columns, meta.task)
    inputs = [e.text_a if e.text_b is None else (e.text_a, e.text_b) for e in examples]
    labels = [meta.label_id(e.label, e.where) for e in examples]
    lengths = runtime.tokenize(inputs)["lengths"].tolist()
    speeds = s["speeds"] if runtime.exits else [0.0]
    points = speed_curve(runtime_predictor(runtime, inputs, s["batch_size"]), labels, lengths,
                         speeds, ModelShape.from_bundle(bundle), task=meta.task)
    out.mkdir(parents=True, exist_ok=True)
    teacher = _teacher_metrics(ctx, examples)
    curve = {"bundle": "export/bundle", "data": str(ctx.dev), "rows": len(inputs),
             "num_layers": runtime.num_layers, "threads": runtime.threads, "teacher": teacher,
             "points": points}
    (out / "curve.json").write_text(json.dumps(curve, indent=1) + "\n", encoding="utf-8")
    return StageResult(out / "curve.json", {"teacher": teacher, "points": points})


def _teacher_metrics(ctx: Context, examples: list[Any]) -> dict[str, float]:
    """The fine-tuned teacher's dev metrics in PyTorch, the reference the student is held to."""
    from tinyfast.data.splits import encode_split
    from tinyfast.metrics import task_metrics
    from tinyfast.models import load_classifier, load_tokenizer
    from tinyfast.train.evaluation import classifier_logits, predict_logits

    teacher = ctx.classifier()
    tokenizer = load_tokenizer(teacher)
    model = load_classifier(teacher).eval()
    meta = TaskMeta.load(teacher)
    dev = encode_split(tokenizer, examples, meta, with_labels=True)
    logits = predict_logits(classifier_logits(model), dev.dataset, dev.lengths,
                            pad_id=tokenizer.pad_token_id or 0)
    return task_metrics(meta.task, logits, dev.labels)


# --------------------------------------------------------------------------------------------
# bench (tinyfast bench: the bundle beside the teacher and the peers, on the dev set)


def _bench_decide(ctx: Context) -> Decision:
    decision = _by_recipe(ctx, "bench")
    if decision.run and "export" not in ctx.artifacts:
        raise ConfigError("[bench] measures the exported bundle; it needs [export] enabled")
    return decision


def _bench_inputs(ctx: Context) -> dict[str, str]:
    inputs = {"dev": digest_path(ctx.dev)} | ctx.upstream("finetune", "export", "evaluate")
    if "finetune" not in ctx.fingerprints:
        inputs["teacher"] = digest_path(ctx.classifier())
    return inputs


def _bench_speeds(ctx: Context) -> list[float]:
    """The recipe's speeds and, when the evaluate stage ran, its chosen speed (the largest
    within tinyfast.exits.ACCURACY_TOLERANCE_POINTS of speed 0 on the dev set)."""
    from tinyfast.exits import chosen_point

    speeds = set(ctx.recipe["bench"]["speeds"])
    chosen = chosen_point(ctx.summaries.get("evaluate", {}).get("points") or [])
    if chosen is not None:
        speeds.add(chosen["speed"])
    return sorted(speeds)


def _bench_run(ctx: Context, out: Path, resume: bool) -> StageResult:
    from tinyfast.bench.command import BenchOptions, run_bench

    s = ctx.recipe["bench"]
    columns = ctx.columns()
    out.mkdir(parents=True, exist_ok=True)
    options = BenchOptions(
        model=str(ctx.artifacts["export"]), data=str(ctx.dev), teacher=str(ctx.classifier()),
        checkpoint=str(_model_to_export(ctx)), speeds=_bench_speeds(ctx), threads=s["threads"],
        batch_size=s["batch_size"], rounds=s["rounds"], latency_rows=s["latency_rows"] or None,
        max_rows=s["max_rows"] or None, calibration_rows=s["calibration_rows"],
        contenders=s["contenders"], work_dir=str(out / "work"), text_a=columns.text_a,
        text_b=columns.text_b, label=columns.label, seed=ctx.recipe["run"]["seed"],
        progress=ctx.progress, command="tinyfast pipeline (bench stage)")
    report = run_bench(options)
    target = out / "bench.json"
    target.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    measured = {}
    for name, rec in report["contenders"].items():
        keep = ("accuracy", "throughput_rows_per_s") if "accuracy" in rec else ("skipped",
                                                                              "failed")
        measured[name] = {k: rec[k] for k in keep if k in rec}
    return StageResult(target, {"contenders": measured, "wall_seconds": report["wall_seconds"]})


# --------------------------------------------------------------------------------------------
# report (report.md and plots from every stage's records)


def _report_decide(ctx: Context) -> Decision:
    return _by_recipe(ctx, "report")


def _report_inputs(ctx: Context) -> dict[str, str]:
    return ctx.upstream(*ctx.fingerprints)


def _report_run(ctx: Context, out: Path, resume: bool) -> StageResult:
    from tinyfast.report import build_report

    path = build_report(ctx.out, plots=ctx.recipe["report"]["plots"])
    return StageResult(path, {"report": path.relative_to(ctx.out).as_posix(),
                              "plots": sorted(p.name for p in path.parent.glob("*.png"))})


@dataclass(frozen=True)
class StageRunner:
    decide: Callable[[Context], Decision]
    inputs: Callable[[Context], dict[str, str]]
    run: Callable[[Context, Path, bool], StageResult]


STAGE_RUNNERS: dict[str, StageRunner] = {
    "finetune": StageRunner(_finetune_decide, _finetune_inputs, _finetune_run),
    "augment": StageRunner(_augment_decide, _augment_inputs, _augment_run),
    "general": StageRunner(_general_decide, _general_inputs, _general_run),
    "task": StageRunner(_task_decide, _task_inputs, _task_run),
    "selfdistill": StageRunner(_selfdistill_decide, _selfdistill_inputs, _selfdistill_run),
    "export": StageRunner(_export_decide, _export_inputs, _export_run),
    "evaluate": StageRunner(_evaluate_decide, _evaluate_inputs, _evaluate_run),
    "bench": StageRunner(_bench_decide, _bench_inputs, _bench_run),
    "report": StageRunner(_report_decide, _report_inputs, _report_run),
}
