"""Early exit on real data: FastBERT self-distillation of a classifier's branches, then accuracy,
exit layers, FLOPs and throughput over speeds, in PyTorch and in the int8 runtime, next to ONNX
Runtime int8 running the full model, in one process run.

For one fine-tuned classifier (``--model``), its unlabeled text (``--unlabeled``, e.g. the task's
training file, labels ignored) and labeled evaluation data (``--eval``):

1. ``tinyfast.selfdistill.selfdistill``: FastBERT branches after every layer but the last
   (``<WORK>/selfdistill``; reused when its metrics.json exists, so a rerun continues);
2. ``tinyfast.export.export``: the int8 bundle (``<WORK>/bundle-int8``, written anew each run),
   calibrated on ``--calibration`` (by default the unlabeled text; ``none`` for plain rounding),
   with ``--residual-layers`` leading layers carrying residual passes (default none);
3. the curve over ``--speeds`` of the PyTorch early-exit model and of the int8 bundle (accuracy,
   macro F1, mean exit layer, share of rows per exit layer, FLOPs relative to the full model,
   rows/s; both at batch 32), and how often the two pick the same exit layer;
4. the chosen speed: the largest one whose int8 accuracy is within ``--tolerance`` (0.5) points
   of the int8 accuracy at speed 0;
5. throughput over the whole evaluation set, tokenization included, at batch 1 and batch 32, the
   contenders taking turns pass by pass (so machine noise hits all alike): the int8 bundle at
   speed 0 and at the chosen speed, and ONNX Runtime int8 on the full model (the export and
   quantization recipes of ``runtime_speed.py``, plain and graph-fused; the faster is the peer);
6. the goals: mean exit layer at the chosen speed <= half the depth; int8 throughput at the chosen
   speed >= 1.8x the same bundle at speed 0 and >= 3x the faster ORT int8, at both batch sizes;
   int8 accuracy within 0.3 points of PyTorch at every speed.

    python benches/early_exit.py --model ../bench-runs/sst2-teacher/model \
        --unlabeled ../shared/data/sst2/train.tsv --eval ../shared/data/sst2/dev.tsv \
        --work ../bench-runs/early-exit/sst2-teacher \
        --out benches/results/early_exit_sst2_teacher.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benches/*.py when loaded by path
from _paths import head_commit, recorded_path  # noqa: E402
from tinyfast.exits.choice import ACCURACY_TOLERANCE_POINTS, chosen_point  # noqa: E402

SCHEMA_VERSION = 1
DEFAULT_SPEEDS = "0,0.05,0.1,0.15,0.2,0.25,0.3,0.4,0.5,0.6,0.7,0.8"
GOALS = {"accuracy_tolerance_points": ACCURACY_TOLERANCE_POINTS,
         "max_mean_exit_share_of_depth": 0.5, "speedup_vs_speed_0": 1.8,
         "speedup_vs_ort_int8": 3.0, "int8_vs_torch_points": 0.3}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="fine-tuned classifier checkpoint")
    p.add_argument("--unlabeled", required=True, help="text for self-distillation")
    p.add_argument("--eval", required=True, help="labeled evaluation data (the model's columns)")
    p.add_argument("--work", required=True, help="where the branches and bundle go")
    p.add_argument("--out", required=True, help="result JSON")
    p.add_argument("--speeds", default=DEFAULT_SPEEDS)
    p.add_argument("--tolerance", type=float, default=GOALS["accuracy_tolerance_points"],
                   help="accuracy points below speed 0 the chosen speed may lose")
    p.add_argument("--calibration", default=None,
                   help="text the int8 export calibrates on (default: --unlabeled; 'none': "
                        "plain rounding, no smoothing)")
    p.add_argument("--residual-layers", type=int, default=0,
                   help="leading layers whose int8 linears add residual passes (export's "
                        "--residual-layers)")
    p.add_argument("--branch", default="fastbert", choices=["fastbert", "linear"])
    p.add_argument("--epochs", type=float, default=10.0, help="self-distillation epochs")
    p.add_argument("--lr", type=float, default=2e-4, help="self-distillation learning rate")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=1, help="threads of every contender")
    p.add_argument("--rounds", type=int, default=3, help="timed passes per contender and batch")
    return p.parse_args(argv)



def self_distilled(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The self-distillation run's summary; trains it unless an earlier run finished."""
    from tinyfast.selfdistill import selfdistill
    from tinyfast.train import TrainConfig

    out = work / "selfdistill"
    done = out / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text(encoding="utf-8"))
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=32, warmup=0.1,
                         seed=args.seed, progress=False, log_every=50, device="cpu")
    return selfdistill(args.model, args.unlabeled, out, branch=args.branch, config=config)


def eval_data(model_dir: Path, path: str) -> tuple[list[Any], list[int], Any, Any]:
    """The evaluation file as the runtime takes it (texts or pairs) with gold label ids, its
    examples and the task."""
    from tinyfast.data import TaskMeta, read_examples

    meta = TaskMeta.load(model_dir)
    examples = read_examples(path, meta.columns, meta.task)
    inputs = [e.text_a if e.text_b is None else (e.text_a, e.text_b) for e in examples]
    labels = [meta.label_id(e.label, e.where) for e in examples]
    return inputs, labels, examples, meta


def curves(model_dir: Path, bundle: Path, inputs: list[Any], labels: list[int], examples: Any,
           meta: Any, speeds: list[float], threads: int) -> dict[str, Any]:
    import torch

    from tinyfast import Runtime
    from tinyfast.data.splits import encode_split
    from tinyfast.exits.curve import runtime_predictor, speed_curve
    from tinyfast.exits.flops import ModelShape
    from tinyfast.models import load_tokenizer
    from tinyfast.models.early_exit import EarlyExitClassifier

    torch.set_num_threads(threads)
    model = EarlyExitClassifier.load(model_dir).eval()
    tokenizer = load_tokenizer(model_dir)
    split = encode_split(tokenizer, examples, meta, with_labels=True)
    torch_shape = ModelShape.from_config(model.model.config, model.branches)
    torch_points = speed_curve(model.predictor(split), split.labels, split.lengths, speeds,
                               torch_shape)

    runtime = Runtime.load(bundle, threads=threads)
    lengths = runtime.tokenize(inputs)["lengths"].tolist()
    assert lengths == split.lengths, "the runtime and the checkpoint tokenize differently"
    int8_points = speed_curve(runtime_predictor(runtime, inputs, 32), labels, lengths, speeds,
                              ModelShape.from_bundle(bundle))
    # Whether the two pick the same exit layer, row by row.
    for t, q in zip(torch_points, int8_points, strict=True):
        torch_exits = model.predict(split, t["speed"])[1]
        int8_exits = runtime.predict(inputs, speed=t["speed"]).exit_layers
        q["same_exit_layer_as_torch"] = float(np.mean(torch_exits == int8_exits))
        q["accuracy_minus_torch_points"] = 100 * (q["accuracy"] - t["accuracy"])
    return {"torch": torch_points, "int8": int8_points, "num_layers": runtime.num_layers,
            "exits": [list(e) for e in runtime.exits], "max_length": runtime.max_length}


def throughput(model_dir: Path, bundle: Path, inputs: list[Any], speed: float, work: Path,
               threads: int, rounds: int) -> dict[str, Any]:
    """Rows/s over the whole evaluation set at batch 1 and 32, contenders taking turns."""
    from tinyfast import Runtime
    from tinyfast.bench.contenders_ort import ORT_INT8, ort_contenders
    from tinyfast.models import load_tokenizer

    runtime = Runtime.load(bundle, threads=threads)
    tokenizer = load_tokenizer(model_dir)
    seq_len = runtime.max_length
    if any(isinstance(x, tuple) for x in inputs):
        raise SystemExit("early_exit.py: ONNX Runtime's contender here takes single texts")

    def tinyfast_at(s: float) -> Any:
        return lambda texts: runtime.predict(texts, speed=s, batch_size=len(texts)).labels

    def ort(c: Any) -> Any:
        return lambda texts: c.predict(texts, seq_len).labels

    contenders = {"tinyfast_int8_speed0": tinyfast_at(0.0),
                  "tinyfast_int8_chosen": tinyfast_at(speed)}
    ort_dir = work / "ort"
    ort_dir.mkdir(parents=True, exist_ok=True)
    ort_settings = {}
    for c in ort_contenders(model_dir, tokenizer, ort_dir, threads, ORT_INT8):
        contenders[c.name] = ort(c)
        ort_settings[c.name] = c.settings

    result: dict[str, Any] = {"speed": speed, "rounds": rounds, "rows": len(inputs),
                              "ort_settings": ort_settings, "batches": {}}
    for batch in (1, 32):
        calls = [inputs[i:i + batch] for i in range(0, len(inputs), batch)]
        for predict in contenders.values():  # warm-up: one pass each
            for texts in calls[:8]:
                predict(texts)
        passes: dict[str, list[float]] = {name: [] for name in contenders}
        names = list(contenders)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                for texts in calls:
                    contenders[name](texts)
                passes[name].append(time.perf_counter() - start)
        rows_per_s = {name: len(inputs) / statistics.median(s) for name, s in passes.items()}
        best_ort = max(rows_per_s[n] for n in ORT_INT8)
        result["batches"][str(batch)] = {
            "pass_seconds": passes,
            "rows_per_second": rows_per_s,
            "chosen_vs_speed0": rows_per_s["tinyfast_int8_chosen"]
            / rows_per_s["tinyfast_int8_speed0"],
            "chosen_vs_best_ort_int8": rows_per_s["tinyfast_int8_chosen"] / best_ort,
            "speed0_vs_best_ort_int8": rows_per_s["tinyfast_int8_speed0"] / best_ort,
        }
    return result


def goals(curve: dict[str, Any], chosen: dict[str, Any], speed: dict[str, Any]) -> dict[str, Any]:
    depth = curve["num_layers"]
    checks = {
        "mean_exit_layer_at_most_half_depth": chosen["mean_exit_layer"]
        <= GOALS["max_mean_exit_share_of_depth"] * depth,
        "int8_within_0.3_points_of_torch_at_every_speed": all(
            abs(p["accuracy_minus_torch_points"]) <= GOALS["int8_vs_torch_points"] + 1e-9
            for p in curve["int8"]),
    }
    for batch, b in speed["batches"].items():
        checks[f"batch{batch}_speedup_vs_speed0"] = b["chosen_vs_speed0"] >= \
            GOALS["speedup_vs_speed_0"]
        checks[f"batch{batch}_speedup_vs_ort_int8"] = b["chosen_vs_best_ort_int8"] >= \
            GOALS["speedup_vs_ort_int8"]
    return {"targets": GOALS, "checks": checks, "all_met": all(checks.values())}


def main(argv: list[str] | None = None) -> int:
    from transformers.utils import logging as hf_logging

    import tinyfast
    from tinyfast.exits.curve import format_table
    from tinyfast.exits.speeds import parse_speeds
    from tinyfast.export import export

    hf_logging.disable_progress_bar()  # one bar per checkpoint load says nothing here
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)  # self-distillation too: no oversubscribed cores
    speeds = parse_speeds(args.speeds)
    if 0.0 not in speeds:
        speeds = [0.0, *speeds]
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    code_commit = head_commit()  # the code that runs, whatever is committed while it does
    summary = self_distilled(args, work)
    model_dir = work / "selfdistill" / "model"
    bundle = work / "bundle-int8"
    calibration = args.unlabeled if args.calibration is None else args.calibration
    export(model_dir, bundle, dtype="int8",
           calibration=None if calibration == "none" else calibration,
           residual_layers=args.residual_layers)
    inputs, labels, examples, meta = eval_data(model_dir, args.eval)
    curve = curves(model_dir, bundle, inputs, labels, examples, meta, speeds, args.threads)
    chosen = chosen_point(curve["int8"], args.tolerance)  # speed 0 is always among the speeds
    speed = throughput(model_dir, bundle, inputs, chosen["speed"], work, args.threads,
                       args.rounds)
    report = {
        "benchmark": "early_exit",
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": code_commit,
        "tinyfast": tinyfast.__version__,
        "command": "python benches/early_exit.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "model": recorded_path(args.model),
        "unlabeled": recorded_path(args.unlabeled),
        "eval": recorded_path(args.eval),
        "calibration": None if calibration == "none" else recorded_path(calibration),
        "residual_layers": args.residual_layers,
        "threads": args.threads,
        "selfdistill": {k: summary.get(k) for k in (
            "branch", "layers", "width", "heads", "temperature", "train_rows", "heldout_rows",
            "best", "steps", "seconds", "config", "branch_parameters", "model_parameters")},
        "curve": curve,
        "chosen": {"speed": chosen["speed"], "rule": f"largest speed whose int8 accuracy is "
                   f"within {args.tolerance} points of speed 0", "point": chosen},
        "throughput": speed,
        "goals": goals(curve, chosen, speed),
        "wall_seconds": time.perf_counter() - started,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print("torch:\n" + format_table(curve["torch"], curve["num_layers"]))
    print("int8:\n" + format_table(curve["int8"], curve["num_layers"]))
    for batch, b in speed["batches"].items():
        print(f"batch {batch}: " + ", ".join(f"{k} {v:.1f} rows/s"
                                            for k, v in b["rows_per_second"].items())
              + f"; chosen speed {chosen['speed']:g}: x{b['chosen_vs_speed0']:.2f} vs speed 0, "
              f"x{b['chosen_vs_best_ort_int8']:.2f} vs ORT int8")
    print(json.dumps(report["goals"]["checks"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
