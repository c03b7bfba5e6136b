"""Accuracy against training budget for TinyBERT on SST-2 (follow-up to distill_sst2.py).

Starts from what ``distill_sst2.py`` left in ``--base`` (the fine-tuned teacher and the general
distillation checkpoint) and measures two budget levers at once:

  * task distillation epochs: intermediate + prediction epochs on the base general checkpoint;
  * general distillation epochs: the base checkpoint distilled for ``--more-general`` further
    epochs of the corpus (a new warmup + decay schedule), then the same task distillation;

and trains the undistilled baseline (tinybert4, random init, labels only) for ``--baseline-epochs``
so that it gets a budget comparable to the task distillation's.

Each run is a ``tinyfast`` CLI command (printed, so it can be rerun by hand) in its own process
with ``--threads`` torch threads; independent runs go side by side. A run whose ``metrics.json``
exists is reused. Every dev accuracy, step count and wall time goes to ``--out/budget.json``.

    python benches/distill_budget.py --base bench-results/distill_sst2 --out bench-results/budget
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benches/_paths.py when loaded by path
from _paths import recorded_path  # noqa: E402


def _run(name: str, out: Path, argv: list[str], threads: int) -> subprocess.Popen | None:
    """Starts one CLI run unless its metrics exist; its log goes to ``out/<name>.log``."""
    if (out / name / "metrics.json").exists():
        print(f"== {name}: reusing {out / name / 'metrics.json'}", flush=True)
        return None
    cmd = [sys.executable, "-m", "tinyfast", *argv, "--threads", str(threads), "--no-progress"]
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    log = open(out / f"{name}.log", "w")  # noqa: SIM115 - closed when the process ends
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


def _wait(name: str, proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.wait() != 0:
        raise SystemExit(f"distill_budget: run {name} failed (exit {proc.returncode}), see its log")


def _task_argv(args: argparse.Namespace, init: Path, out: Path) -> list[str]:
    sst2 = Path(args.data) / "sst2"
    return [
        "distill", "task",
        "--teacher", str(Path(args.base) / "teacher" / "model"),
        "--student-init", str(init),
        "--train", str(sst2 / "train.tsv"), "--dev", str(sst2 / "dev.tsv"),
        "--out", str(out), "--max-length", str(args.max_length),
        "--intermediate-epochs", str(args.intermediate_epochs),
        "--intermediate-lr", str(args.intermediate_lr),
        "--prediction-epochs", str(args.prediction_epochs),
        "--prediction-lr", str(args.prediction_lr),
        "--batch-size", "32", "--eval-every", "108",
    ]  # fmt: skip


def _general_argv(args: argparse.Namespace, init: Path, out: Path) -> list[str]:
    return [
        "distill", "general",
        "--corpus", str(Path(args.data) / "corpus" / "movie_reviews.txt"),
        "--student-init", str(init), "--out", str(out),
        "--max-length", str(args.max_length), "--epochs", str(args.more_general),
        "--lr", str(args.general_lr), "--warmup", "0.05", "--batch-size", "64",
        "--eval-every", "250",
    ]  # fmt: skip


def _baseline_argv(args: argparse.Namespace, out: Path) -> list[str]:
    sst2 = Path(args.data) / "sst2"
    return [
        "finetune", "--teacher", "minilm", "--student", "tinybert4", "--init", "random",
        "--train", str(sst2 / "train.tsv"), "--dev", str(sst2 / "dev.tsv"),
        "--out", str(out), "--max-length", str(args.max_length),
        "--epochs", str(args.baseline_epochs), "--lr", str(args.baseline_lr),
        "--batch-size", "32", "--eval-every", "108",
    ]  # fmt: skip


def _curve(metrics: dict[str, Any]) -> list[dict[str, float]]:
    return [
        {"step": h["step"], "accuracy": h["accuracy"]}
        for h in metrics["history"]
        if "accuracy" in h
    ]


def _summary(metrics: dict[str, Any], general_epochs: float) -> dict[str, Any]:
    stages = metrics["stages"]
    return {
        "general_epochs": general_epochs,
        "intermediate_epochs": stages["intermediate"]["epochs"],
        "prediction_epochs": stages["prediction"]["epochs"],
        "dev_accuracy": metrics["best"]["accuracy"],
        "task_seconds": metrics["seconds"],
        "curve": _curve(metrics),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="distill_sst2.py's --out (teacher/, general/)")
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--out", default="bench-results/distill_budget")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--more-general", type=float, default=1.0, help="further general epochs")
    p.add_argument("--general-lr", type=float, default=3e-4)
    p.add_argument("--intermediate-epochs", type=float, default=10)
    p.add_argument("--intermediate-lr", type=float, default=1e-4)
    p.add_argument("--prediction-epochs", type=float, default=3)
    p.add_argument("--prediction-lr", type=float, default=5e-5)
    p.add_argument("--baseline-epochs", type=float, default=10)
    p.add_argument("--baseline-lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    args = p.parse_args(argv)

    base, out = Path(args.base), Path(args.out)
    needed = [base / "teacher" / "model", base / "general" / "model", base / "general/metrics.json"]
    for path in needed:
        if not path.exists():
            print(f"distill_budget: missing {path} (run distill_sst2.py first)", file=sys.stderr)
            return 2
    out.mkdir(parents=True, exist_ok=True)
    base_general = json.loads((base / "general" / "metrics.json").read_text())
    base_epochs = base_general["config"]["epochs"]

    # The task run on the base checkpoint and the longer general run are independent.
    task_base = _run(
        "task_base",
        out,
        _task_argv(args, base / "general" / "model", out / "task_base"),
        args.threads,
    )
    general = _run(
        "general_more",
        out,
        _general_argv(args, base / "general" / "model", out / "general_more"),
        args.threads,
    )
    _wait("general_more", general)
    task_more = _run(
        "task_more",
        out,
        _task_argv(args, out / "general_more" / "model", out / "task_more"),
        args.threads,
    )
    # Two runs at a time (the default --threads 1 on 2 cores): the baseline follows task_base.
    _wait("task_base", task_base)
    baseline = _run("baseline", out, _baseline_argv(args, out / "baseline"), args.threads)
    _wait("task_more", task_more)
    _wait("baseline", baseline)

    def metrics(name: str) -> dict[str, Any]:
        return json.loads((out / name / "metrics.json").read_text())

    more = metrics("general_more")
    teacher = json.loads((base / "teacher" / "metrics.json").read_text())["best"]["accuracy"]
    points = [
        _summary(metrics("task_base"), base_epochs),
        _summary(metrics("task_more"), base_epochs + args.more_general),
    ]
    for point in points:
        point["share_of_teacher"] = point["dev_accuracy"] / teacher
    result = {
        "benchmark": "distill_budget",
        "settings": vars(args)
        | {key: recorded_path(getattr(args, key)) for key in ("base", "data", "out")},
        "teacher_dev_accuracy": teacher,
        "general": {
            "base_epochs": base_epochs,
            "base_heldout_loss": base_general["best"]["heldout_loss"],
            "more_epochs": args.more_general,
            "more_seconds": more["seconds"],
            "more_heldout_loss": [h["heldout_loss"] for h in more["history"]],
        },
        "points": points,
        "baseline_no_distillation": {
            "epochs": args.baseline_epochs,
            "dev_accuracy": metrics("baseline")["best"]["accuracy"],
            "seconds": metrics("baseline")["seconds"],
            "curve": _curve(metrics("baseline")),
        },
    }
    (out / "budget.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
