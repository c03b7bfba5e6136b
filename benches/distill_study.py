"""TinyBERT on SST-2 with the MiniLM teacher: accuracy against distillation budget, one
``tinyfast pipeline`` run per recipe of ``benches/recipes/``.

For each recipe named by ``--recipes`` (file names without ``.toml``, comma-separated, or
``all``) it runs, printed first so that it can be rerun by hand:

    python -m tinyfast pipeline --teacher minilm --train DATA/sst2/train.tsv \\
        --dev DATA/sst2/dev.tsv --corpus DATA/corpus/movie_reviews.txt \\
        --recipe benches/recipes/NAME.toml --out OUT/NAME

then gathers every ``OUT/NAME/pipeline/summary.json`` into one JSON (``--json``, default
``OUT/study.json``: per recipe the resolved recipe, teacher and student dev accuracy, the share
of the teacher, each stage's status and wall seconds; the commit and the machine) and prints a
table. The pipeline skips the stages that are done, so a rerun continues where it stopped.

    python benches/distill_study.py --data ../shared/data --out ../bench-runs/study \\
        --recipes all --parallel 2

Threads: ``--threads N`` goes into each run's environment (OMP_NUM_THREADS, MKL_NUM_THREADS,
RAYON_NUM_THREADS), not into the recipe: ``[run] threads`` is part of every stage's
fingerprint, and the thread count changes how fast a stage runs, not what it is set to compute:
a rerun with other threads still skips the finished stages. With ``--parallel N`` and no
``--threads`` each run gets the cores divided by N; the bench stage keeps its own
``[bench] threads``.

What a run repeats: with ``--teacher minilm`` every run fine-tunes its own teacher (the same
settings and seed each time). A fine-tuned classifier as ``--teacher`` skips that, but the
pipeline's general distillation then distills from that classifier rather than from the
pretrained MiniLM as the recorded runs did. Every run also does its own general distillation:
the pipeline cannot start task distillation from another run's checkpoint.

The labels-only baselines of the recorded study are not pipeline stages (a student trained
without a teacher is ``tinyfast finetune --student``); their commands, with the data above:

    # tinybert4 from random weights on the labels alone, 3 epochs (and 10: --epochs 10)
    tinyfast finetune --teacher minilm --student tinybert4 --init random \\
        --train DATA/sst2/train.tsv --dev DATA/sst2/dev.tsv --out OUT/labels_only_3 \\
        --max-length 64 --epochs 3 --lr 1e-4 --batch-size 32
    # tinybert4 from the 0.3-epoch general checkpoint on the labels alone, 2 epochs
    tinyfast finetune --teacher minilm --student tinybert4 \\
        --student-init OUT/general_0.3_task_2_2/general/model \\
        --train DATA/sst2/train.tsv --dev DATA/sst2/dev.tsv --out OUT/general_then_labels \\
        --max-length 64 --epochs 2 --lr 1e-4 --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benches/_paths.py when loaded by path
from _paths import REPO, recorded_path  # noqa: E402

PROG = "distill_study"
RECIPES = Path(__file__).resolve().parent / "recipes"
# Read by torch (OpenMP, MKL) and by the tokenizers' and runtime's Rust thread pools.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS")


class StudyError(Exception):
    """A user error: printed as one line, exit status 2."""


@dataclass
class StudyInputs:
    teacher: str  # "minilm" or a checkpoint directory
    train: Path
    dev: Path
    corpus: Path
    out: Path  # each recipe runs in out/<name>
    threads: int  # per run; 0: the libraries' defaults


def _budget_order(path: Path) -> list[Any]:
    # Numbers compared as numbers: task_2_2 before task_10_3.
    return [(0, float(part), "") if part.replace(".", "", 1).isdigit() else (1, 0.0, part)
            for part in path.stem.split("_")]


def available_recipes() -> dict[str, Path]:
    return {path.stem: path for path in sorted(RECIPES.glob("*.toml"), key=_budget_order)}


def select_recipes(spec: str) -> dict[str, Path]:
    """``all``, or comma-separated recipe names (``.toml`` optional) or paths to recipe files."""
    known = available_recipes()
    if spec.strip() == "all":
        return known
    chosen: dict[str, Path] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        path = Path(item)
        if path.suffix == ".toml" and path.is_file():
            chosen[path.stem] = path
            continue
        name = item.removesuffix(".toml")
        if name not in known:
            raise StudyError(f"--recipes: no recipe {name!r} in {recorded_path(RECIPES)} "
                             f"(recipes: {', '.join(known)}; or all)")
        chosen[name] = known[name]
    if not chosen:
        raise StudyError("--recipes: no recipe named (recipe names, comma-separated, or all)")
    return chosen


def check_recipes(recipes: dict[str, Path]) -> None:
    """Loads each recipe as the pipeline will, so a bad key fails before hours of training."""
    from tinyfast.errors import TinyfastError
    from tinyfast.pipeline.recipe import load_recipe

    for path in recipes.values():
        try:
            load_recipe(path)
        except TinyfastError as exc:
            raise StudyError(str(exc)) from None


def _shown_path(path: Path) -> str:
    """Relative to the current directory when that is shorter: printed commands stay readable."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)
    return relative if len(relative) < len(str(path)) else str(path)


def pipeline_command(name: str, recipe: Path, inputs: StudyInputs, *, python: str = sys.executable,
                     path_text: Callable[[Path], str] = str) -> list[str]:
    """The ``tinyfast pipeline`` command of one recipe; ``path_text`` writes each path."""
    teacher = inputs.teacher
    if Path(teacher).exists():  # a checkpoint directory, not a packaged name
        teacher = path_text(Path(teacher))
    return [
        python, "-m", "tinyfast", "pipeline", "--teacher", teacher,
        "--train", path_text(inputs.train), "--dev", path_text(inputs.dev),
        "--corpus", path_text(inputs.corpus), "--recipe", path_text(recipe),
        "--out", path_text(inputs.out / name),
    ]  # fmt: skip


def recorded_command(name: str, recipe: Path, inputs: StudyInputs) -> list[str]:
    """The command as the result file records it: no absolute paths (benches/_paths.py)."""
    return pipeline_command(name, recipe, inputs, python="python",
                            path_text=lambda p: recorded_path(p, inputs.out, "<OUT>"))


def thread_environment(threads: int) -> dict[str, str]:
    return {var: str(threads) for var in THREAD_VARIABLES} if threads > 0 else {}


def shown_command(command: list[str], environment: dict[str, str]) -> str:
    """One shell line, with the thread variables in front, to paste and run."""
    return " ".join([*(f"{k}={v}" for k, v in environment.items()), shlex.join(command)])


def run_recipes(commands: dict[str, list[str]], inputs: StudyInputs, parallel: int) -> list[str]:
    """Runs the commands, ``parallel`` at a time; returns the names of the runs that failed.

    One at a time a run writes to the terminal; side by side each writes to ``OUT/<name>.log``
    (interleaved output would be unreadable)."""
    environment = thread_environment(inputs.threads)
    env = os.environ | environment
    inputs.out.mkdir(parents=True, exist_ok=True)

    def run_one(name: str) -> int:
        started = time.perf_counter()
        if parallel == 1:
            print(f"== {name}: {shown_command(commands[name], environment)}", flush=True)
            code = subprocess.run(commands[name], env=env).returncode
        else:
            log = inputs.out / f"{name}.log"
            print(f"== {name}: {shown_command(commands[name], environment)} > {log}",
                  flush=True)
            with open(log, "w", encoding="utf-8") as stream:
                code = subprocess.run(commands[name], env=env, stdout=stream,
                                      stderr=subprocess.STDOUT).returncode
        outcome = "done" if code == 0 else f"failed (exit {code})"
        print(f"== {name}: {outcome} after {time.perf_counter() - started:.0f} s", flush=True)
        return code

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        codes = dict(zip(commands, pool.map(run_one, commands), strict=True))
    return [name for name, code in codes.items() if code != 0]


def _int8_at_speed0(curve: list[dict[str, Any]] | None) -> float | None:
    for point in curve or []:
        if point.get("speed") == 0.0:
            return point.get("accuracy")
    return None


def gather_run(out: Path) -> dict[str, Any]:
    """One run's figures from ``out/pipeline/summary.json`` (``missing`` when there is none)."""
    from tinyfast.pipeline.recipe import STAGES

    path = out / "pipeline" / "summary.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"missing": "no pipeline/summary.json: the run has not started"}
    except (OSError, ValueError) as exc:
        return {"missing": f"pipeline/summary.json unreadable: {exc}"}
    results = summary.get("results") or {}
    teacher = results.get("teacher_dev_accuracy")
    student = results.get("student_dev_accuracy")
    stages = {
        stage: {key: record[key] for key in ("status", "seconds", "reason") if key in record}
        for stage, record in (summary.get("stages") or {}).items()
    }
    return {
        # The runner rewrites the summary before each stage: a stopped run lacks the later ones.
        "complete": all(stage in stages for stage in STAGES),
        "recipe": summary.get("recipe"),
        "teacher_dev_accuracy": teacher,
        "student_dev_accuracy": student,
        "share_of_teacher": student / teacher if teacher and student is not None else None,
        "student_int8_dev_accuracy": _int8_at_speed0(results.get("int8_curve")),
        "stages": stages,
        # The stages' own times (a skipped stage keeps the time it took when it ran).
        "stage_seconds_total": sum(s.get("seconds") or 0.0 for s in stages.values()),
    }


def _git(*argv: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(REPO), *argv], capture_output=True, text=True,
                              timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def code_version() -> dict[str, Any]:
    """The commit checked out, and whether tracked files differ from it."""
    commit = _git("rev-parse", "HEAD")
    changes = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "uncommitted_changes": bool(changes) if changes is not None
            else None}


def _number(value: float | None, scale: float = 100.0, digits: int = 2) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def table(runs: dict[str, dict[str, Any]]) -> str:
    header = ("recipe", "general", "task", "teacher", "student", "% teacher", "int8 speed 0",
              "stage min", "state")
    rows = [header]
    for name, run in runs.items():
        if "missing" in run:
            rows.append((name, "-", "-", "-", "-", "-", "-", "-", "not run"))
            continue
        recipe = run["recipe"] or {}
        stages = run["stages"]
        general = recipe.get("general", {})
        task = recipe.get("task", {})
        ran_general = stages.get("general", {}).get("status") in ("ran", "skipped")
        rows.append((
            name,
            f"{general.get('epochs', 0):g} ep" if ran_general else "none",
            f"{task.get('intermediate_epochs', 0):g}+{task.get('prediction_epochs', 0):g}",
            _number(run["teacher_dev_accuracy"]), _number(run["student_dev_accuracy"]),
            _number(run["share_of_teacher"], digits=1),
            _number(run["student_int8_dev_accuracy"]),
            f"{run['stage_seconds_total'] / 60:.0f}",
            "done" if run["complete"] else "unfinished",
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def _default_data() -> Path:
    # benches/_paths.py: the shared data sits beside the checkout.
    return Path(_shown_path(REPO.parent / "shared" / "data"))


def _default_threads(parallel: int) -> int:
    if parallel == 1:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // parallel)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", required=True,
                   help=f"recipe names from benches/recipes, comma-separated, or all "
                        f"({', '.join(available_recipes())})")
    p.add_argument("--data", type=Path, default=None,
                   help="folder with sst2/ and corpus/ (default: ../shared/data beside the "
                        "repository)")
    p.add_argument("--out", type=Path, default=Path("bench-results/distill_study"),
                   help="each recipe runs in OUT/<recipe> (default: %(default)s)")
    p.add_argument("--teacher", default="minilm",
                   help="pretrained encoder to fine-tune in every run, or a fine-tuned "
                        "classifier: finetune is skipped, and general distillation distills "
                        "from it (default: %(default)s)")
    p.add_argument("--corpus", type=Path, default=None,
                   help="general distillation text (default: DATA/corpus/movie_reviews.txt)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per run, through the environment (default: the "
                        "libraries' own; with --parallel N: cores / N)")
    p.add_argument("--parallel", type=_positive_int, default=1,
                   help="runs side by side, each logging to OUT/<recipe>.log (default: 1)")
    p.add_argument("--json", type=Path, default=None,
                   help="where the gathered results go (default: OUT/study.json)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--gather-only", action="store_true",
                   help="run nothing; gather what OUT holds")
    return p


def study(args: argparse.Namespace) -> int:
    recipes = select_recipes(args.recipes)
    check_recipes(recipes)
    data = args.data if args.data is not None else _default_data()
    threads = args.threads if args.threads is not None else _default_threads(args.parallel)
    if threads < 0:
        raise StudyError(f"--threads must be 0 (the libraries' default) or more, got {threads}")
    inputs = StudyInputs(teacher=args.teacher, train=data / "sst2" / "train.tsv",
                         dev=data / "sst2" / "dev.tsv",
                         corpus=args.corpus or data / "corpus" / "movie_reviews.txt",
                         out=args.out, threads=threads)
    commands = {name: pipeline_command(name, Path(_shown_path(path.resolve())), inputs)
                for name, path in recipes.items()}
    if args.dry_run:
        for command in commands.values():
            print(shown_command(command, thread_environment(threads)))
        return 0

    from tinyfast.bench.machine import machine_info

    machine = machine_info(threads)  # before the runs: the load average they start under
    failed: list[str] = []
    if not args.gather_only:
        for path in (inputs.train, inputs.dev, inputs.corpus):
            if not path.is_file():
                raise StudyError(f"missing {path} (point --data at the shared data folder, "
                                 "with sst2/ and corpus/)")
        failed = run_recipes(commands, inputs, args.parallel)

    runs = {name: {"recipe_file": recorded_path(path),
                   "command": shlex.join(recorded_command(name, path, inputs)),
                   **gather_run(inputs.out / name)}
            for name, path in recipes.items()}
    result = {
        "benchmark": PROG,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **code_version(),
        "machine": machine,
        "settings": {
            "data": recorded_path(data), "out": recorded_path(inputs.out),
            "teacher": recorded_path(inputs.teacher) if Path(inputs.teacher).exists()
            else inputs.teacher,
            "corpus": recorded_path(inputs.corpus), "threads": threads,
            "parallel": args.parallel, "recipes": list(recipes),
        },
        "runs": runs,
    }
    target = args.json or inputs.out / "study.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(table(runs))
    print(f"results: {target}")
    for name in failed:
        print(f"{PROG}: run {name} failed, see its output"
              + (f" in {inputs.out / f'{name}.log'}" if args.parallel > 1 else ""),
              file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return study(args)
    except StudyError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
