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
from tinyfast.pipeline.recipe import AUGMENT_NOT_WIRED, Recipe

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
        values = dict(seed=run["seed"], progress=self.progress, log_every=50)
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
    return Decision(bool(enabled), "on in the recipe" if enabled else "off in the recipe")


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
# augment (not run by the pipeline yet: the recipe can only keep it off)


def _augment_decide(ctx: Context) -> Decision:
    return Decision(False, f"off: {AUGMENT_NOT_WIRED}")


# --------------------------------------------------------------------------------------------
# general distillation


def _general_decide(ctx: Context) -> Decision:
    enabled = ctx.recipe["general"]["enabled"]
    if enabled is True and ctx.corpus is None:
        raise ConfigError("[general] enabled = true needs a corpus (--corpus FILE)")
    if enabled == "auto":
        return Decision(ctx.corpus is not None, "a corpus is given" if ctx.corpus
                        else "no corpus given")
    return Decision(bool(enabled), "on in the recipe" if enabled else "off in the recipe")


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
    enabled = ctx.recipe["task"]["enabled"]
    return Decision(enabled, "on in the recipe" if enabled else "off in the recipe")


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
    enabled = ctx.recipe["selfdistill"]["enabled"]
    return Decision(enabled, "on in the recipe" if enabled else "off in the recipe")


def _unlabeled(ctx: Context) -> Path:
    return ctx.unlabeled or ctx.train


def _selfdistill_inputs(ctx: Context) -> dict[str, str]:
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
    enabled = ctx.recipe["export"]["enabled"]
    return Decision(enabled, "on in the recipe" if enabled else "off in the recipe")


def _export_inputs(ctx: Context) -> dict[str, str]:
    upstream = ctx.upstream("finetune", "task", "selfdistill")
    return upstream or {"model": digest_path(_model_to_export(ctx))}


def _export_run(ctx: Context, out: Path, resume: bool) -> StageResult:
    from tinyfast.export import export

    out.mkdir(parents=True, exist_ok=True)
    bundle = export(_model_to_export(ctx), out / "bundle", dtype=ctx.recipe["export"]["dtype"],
                    progress=ctx.progress)
    meta = json.loads((bundle / "tinyfast.json").read_text(encoding="utf-8"))
    size = sum(p.stat().st_size for p in bundle.iterdir() if p.is_file())
    return StageResult(bundle, {"bundle_bytes": size, "quantization": meta.get("quantization"),
                                "exits": meta.get("exits", [])})


# --------------------------------------------------------------------------------------------
# evaluate over speeds (the int8 runtime on the dev set)


def _evaluate_decide(ctx: Context) -> Decision:
    enabled = ctx.recipe["evaluate"]["enabled"]
    if enabled and "export" not in ctx.artifacts:
        raise ConfigError("[evaluate] runs the exported bundle; it needs [export] enabled")
    return Decision(enabled, "on in the recipe" if enabled else "off in the recipe")


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


@dataclass(frozen=True)
class StageRunner:
    decide: Callable[[Context], Decision]
    inputs: Callable[[Context], dict[str, str]]
    run: Callable[[Context, Path, bool], StageResult]


def _never(ctx: Context) -> dict[str, str]:
    return {}


def _cannot(ctx: Context, out: Path, resume: bool) -> StageResult:
    raise ConfigError("this stage is not available in this tinyfast")


STAGE_RUNNERS: dict[str, StageRunner] = {
    "finetune": StageRunner(_finetune_decide, _finetune_inputs, _finetune_run),
    "augment": StageRunner(_augment_decide, _never, _cannot),
    "general": StageRunner(_general_decide, _general_inputs, _general_run),
    "task": StageRunner(_task_decide, _task_inputs, _task_run),
    "selfdistill": StageRunner(_selfdistill_decide, _selfdistill_inputs, _selfdistill_run),
    "export": StageRunner(_export_decide, _export_inputs, _export_run),
    "evaluate": StageRunner(_evaluate_decide, _evaluate_inputs, _evaluate_run),
}
