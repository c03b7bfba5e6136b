"""Does TinyBERT's augmentation pay downstream? Task distillation of one TinyBERT-4 student on
SST-2 train without augmentation and with the train set augmented by ``tinyfast augment`` in
several settings (masked-LM engine x masking), every augmented run at the optimizer steps of the
run without (so more data, not more training, is what differs). JSON out: dev accuracy at every
evaluation, best and last.

Each run is a directory under ``--work``; a finished one (its ``model/``) is read, not run
again, so an interrupted study continues where it stopped.

    python benches/augment_downstream.py --teacher RUN/sst2-teacher/model \\
        --student-init RUN/general/model --mlm RUN/mlm-head/model --work RUN/downstream \\
        --out benches/results/augment_downstream_sst2.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _paths import recorded_path  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# name -> (masked-LM engine, masking) of an augmented run; "none" is the run without.
VARIANTS = {"none": None, "bf16_word": ("bfloat16", "word"), "bf16_multi": ("bfloat16", "multi"),
            "int8_word": ("int8", "word"), "int8_multi": ("int8", "multi")}


def run(cmd: list[str], log: Path) -> None:
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    with log.open("w", encoding="utf-8") as f:
        subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=True)


def augment_cmd(args, engine: str, mode: str, out: Path) -> list[str]:
    cmd = ["tinyfast", "augment", "--input", args.train, "--out", str(out), "--mlm", args.mlm,
           "--mask-mode", mode, "--threads", str(args.threads), "--no-progress", "--overwrite"]
    if engine == "int8":
        return cmd + ["--mlm-backend", "int8"]
    return cmd + ["--mlm-backend", "torch", "--dtype", engine]


def distill_cmd(args, out: Path, augmented: Path | None, rows: int) -> list[str]:
    """At ``args.intermediate_steps`` + ``args.prediction_steps`` optimizer steps, whatever the
    rows (batch 32)."""
    batches = math.ceil(rows / 32)
    cmd = ["tinyfast", "distill", "task", "--teacher", args.teacher, "--student-init",
           args.student_init, "--train", args.train, "--dev", args.dev, "--out", str(out),
           "--intermediate-epochs", str(round(args.intermediate_steps / batches, 5)),
           "--intermediate-lr", "1e-4",
           "--prediction-epochs", str(round(args.prediction_steps / batches, 5)),
           "--prediction-lr", "5e-5", "--eval-every", "108", "--seed", str(args.seed),
           "--threads", "1", "--no-progress"]
    if augmented is not None:
        cmd += ["--augmented", str(augmented)]
    return cmd


def shown(cmd: list[str]) -> str:
    """A command as the result file records it (paths never absolute)."""
    return " ".join(recorded_path(c) if Path(c).is_absolute() else c for c in cmd)


def data_rows(path: Path) -> int:
    with path.open(encoding="utf-8") as f:
        return sum(1 for _ in f) - 1


def curve(run_dir: Path) -> list[dict[str, Any]]:
    """Dev accuracy at each evaluation of the prediction stage."""
    log = run_dir / "work" / "prediction" / "train_log.jsonl"
    points = []
    for line in log.read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        if "accuracy" in event and "step" in event:
            points.append({"step": event["step"], "accuracy": round(event["accuracy"], 4)})
    return points


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--student-init", required=True, help="general-distillation checkpoint")
    ap.add_argument("--mlm", required=True, help="masked-LM checkpoint for tinyfast augment")
    ap.add_argument("--train", default=str(SHARED / "sst2" / "train.tsv"))
    ap.add_argument("--dev", default=str(SHARED / "sst2" / "dev.tsv"))
    ap.add_argument("--work", required=True)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--intermediate-steps", type=int, default=2163,
                    help="default: about 10 epochs of SST-2 train's 6,920 rows")
    ap.add_argument("--prediction-steps", type=int, default=649)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=2, help="tinyfast augment's threads")
    ap.add_argument("--note", default="", help="recorded as is (how runs made earlier differ)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "benchmark": "augment_downstream",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv),
        "teacher": recorded_path(args.teacher), "student_init": recorded_path(args.student_init),
        "masked_lm": recorded_path(args.mlm), "train": recorded_path(args.train),
        "dev": recorded_path(args.dev), "steps": [args.intermediate_steps, args.prediction_steps],
        "seed": args.seed, "note": args.note, "runs": {},
    }
    for name in args.variants.split(","):
        setting = VARIANTS[name]
        run_dir = work / name
        augmented = None
        entry: dict[str, Any] = {}
        if setting is not None:
            engine, mode = setting
            augmented = work / f"train_{name}.tsv"
            if not augmented.exists():
                run(augment_cmd(args, engine, mode, augmented), work / f"augment_{name}.log")
            entry["augment"] = {"engine": engine, "mask_mode": mode,
                                "command": shown(augment_cmd(args, engine, mode, augmented))}
        rows = data_rows(augmented if augmented is not None else Path(args.train))
        cmd = distill_cmd(args, run_dir, augmented, rows)
        if not (run_dir / "model").is_dir():
            run(cmd, work / f"distill_{name}.log")
        points = curve(run_dir)
        entry.update({"rows": rows, "command": shown(cmd), "curve": points,
                      "best": max(p["accuracy"] for p in points),
                      "last": points[-1]["accuracy"]})
        result["runs"][name] = entry
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    for name, entry in result["runs"].items():
        print(f"{name:12s} best {100 * entry['best']:.2f}  last {100 * entry['last']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
