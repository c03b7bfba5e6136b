"""How closely int8 bundles follow the float model they came from, plainly rounded and
calibrated (``tinyfast export --calibration``: input smoothing and GPTQ rounding), with and without
residual layers (``--residual-layers``), on text none of them was calibrated on. No labels: the
measure is agreement with PyTorch, row by row.

For an early-exit checkpoint (``--model``, e.g. ``tinyfast selfdistill``'s output) and unlabeled
text (``--text``, e.g. the task's training file):

1. one int8 bundle per ``--rows`` value (0: plain rounding; N: calibrated on N rows spread over
   the text, the export's own choice of rows) and ``--residual-layers`` value, in
   ``<WORK>/bundle-rows<N>`` (``-r<R>`` appended with R residual layers);
2. held-out rows: up to ``--heldout`` rows of the text spread over those that none of the
   calibrations used;
3. per speed, the rows where the bundle's exit layer, or its label, differs from the PyTorch
   early-exit model's, and their totals over the speeds. JSON out.

    python benches/int8_calibration.py \\
        --model ../bench-runs/early-exit/sst2-teacher/selfdistill/model \\
        --text ../shared/data/sst2/train.tsv --work ../bench-runs/int8-calibration/sst2-teacher \\
        --out benches/results/int8_calibration_sst2_teacher.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benches/*.py when loaded by path
from _paths import head_commit, recorded_path  # noqa: E402

SPEEDS = "0,0.05,0.1,0.15,0.2,0.25,0.3,0.4,0.5,0.6,0.7,0.8"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="classifier checkpoint with early-exit branches")
    p.add_argument("--text", required=True, help="unlabeled text in the task's format, or .txt")
    p.add_argument("--work", required=True, help="where the bundles go")
    p.add_argument("--out", required=True, help="result JSON")
    p.add_argument("--rows", default="0,1024",
                   help="calibration rows per bundle, comma-separated (0: plain rounding)")
    p.add_argument("--residual-layers", default="0",
                   help="residual layers per bundle, comma-separated; every --rows value is "
                        "exported with each")
    p.add_argument("--heldout", type=int, default=1500, help="held-out rows compared")
    p.add_argument("--speeds", default=SPEEDS)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    for name in ("rows", "residual_layers"):
        text = getattr(args, name)
        try:
            setattr(args, name, [int(r) for r in text.split(",")])
        except ValueError:
            p.error(f"--{name.replace('_', '-')}: expected comma-separated integers, got "
                    f"{text!r}")
    if any(r < 0 for r in args.rows + args.residual_layers) or args.heldout < 1 \
            or args.threads < 1:
        p.error("--rows and --residual-layers must be >= 0, --heldout and --threads >= 1")
    return args



def heldout_rows(n: int, calibration_rows: list[int], limit: int) -> list[int]:
    """Up to ``limit`` indices of ``0..n`` spread over those no calibration uses."""
    from tinyfast.export.calibration import spread_rows

    used: set[int] = set()
    for rows in calibration_rows:
        if rows > 0:
            used.update(spread_rows(n, rows))
    free = [i for i in range(n) if i not in used]
    if not free:
        raise SystemExit("every row of --text is used for calibration; nothing is held out")
    return [free[int(j)] for j in sorted({int(x) for x in np.linspace(0, len(free) - 1,
                                                                      min(limit, len(free)))})]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    import tinyfast
    from tinyfast import Runtime
    from tinyfast.data import TaskMeta
    from tinyfast.data.splits import encode_split, read_unlabeled
    from tinyfast.exits.speeds import parse_speeds
    from tinyfast.export import export
    from tinyfast.models import load_tokenizer
    from tinyfast.models.early_exit import EarlyExitClassifier

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    code_commit = head_commit()
    speeds = parse_speeds(args.speeds)
    model_dir, work = Path(args.model), Path(args.work)
    meta = TaskMeta.load(model_dir)
    examples = read_unlabeled(args.text, meta)
    held = [examples[i] for i in heldout_rows(len(examples), args.rows, args.heldout)]
    split = encode_split(load_tokenizer(model_dir), held, meta, with_labels=False)
    model = EarlyExitClassifier.load(model_dir).eval()
    reference = {s: model.predict(split, s) for s in speeds}
    inputs = [e.text_a if e.text_b is None else (e.text_a, e.text_b) for e in held]
    variants: dict[str, Any] = {}
    for rows, residual in ((r, x) for r in args.rows for x in args.residual_layers):
        name = f"{rows}" if residual == 0 else f"{rows}-r{residual}"
        bundle = work / f"bundle-rows{name}"
        export(model_dir, bundle, calibration=args.text if rows else None,
               calibration_rows=rows or None, residual_layers=residual)
        runtime = Runtime.load(bundle, threads=args.threads)
        points = []
        for s in speeds:
            out = runtime.predict(inputs, speed=s, batch_size=32)
            logits, exits = reference[s]
            points.append({"speed": s,
                           "exit_layer_differs": int((out.exit_layers != exits).sum()),
                           "label_differs": int((out.labels != logits.argmax(axis=1)).sum())})
        variants[name] = {
            "bundle": recorded_path(bundle, work, "<WORK>"),
            "calibration": "none" if rows == 0 else f"{rows} rows of the text",
            "residual_layers": residual,
            "exit_layer_differs_total": sum(p["exit_layer_differs"] for p in points),
            "label_differs_total": sum(p["label_differs"] for p in points),
            "points": points,
        }
        print(f"rows {name}: exit layer differs {variants[name]['exit_layer_differs_total']}"
              f", label differs {variants[name]['label_differs_total']} (over "
              f"{len(speeds)} speeds x {len(held)} rows)", flush=True)
    report = {
        "benchmark": "int8_calibration",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": code_commit,
        "tinyfast": tinyfast.__version__,
        "command": "python benches/int8_calibration.py " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "model": recorded_path(args.model),
        "text": recorded_path(args.text),
        "heldout_rows": len(held),
        "speeds": speeds,
        "variants": variants,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
