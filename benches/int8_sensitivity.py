"""Where int8 moves an early-exit model's accuracy: the bundle's int8 scheme simulated in PyTorch
(every encoder linear's weights and per-token activations rounded by the rules of
``tinyfast.bundle.quantize``, all else float32), applied to chosen parts of the encoder, against
the float32 model at each speed. JSON out.

Variants: ``int8`` (every linear, as the bundle), ``weights`` / ``activations`` (one rounding
alone), ``int8_except_layers_K`` (the encoder layers K, 1-based, left in float32). For each: per
speed, accuracy minus float32's (points), the share of rows leaving at the same layer, and at
speed 0 the rows whose label changes.

    python benches/int8_sensitivity.py --model RUN/selfdistill/model --eval DEV \\
        --out benches/results/int8_sensitivity_sst2_teacher.json
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
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _paths import recorded_path  # noqa: E402

SPEEDS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
DEFAULT_VARIANTS = "int8,weights,activations,int8_except_layers_1,int8_except_layers_1_2," \
                   "int8_except_layers_6"


def rounded_weight(weight: torch.Tensor) -> torch.Tensor:
    from tinyfast.bundle.quantize import quantize_weights

    codes, scales = quantize_weights(weight.detach().float().numpy())
    return torch.from_numpy(codes.astype(np.float32) * scales[:, None])


def rounded_activations(x: torch.Tensor) -> torch.Tensor:
    from tinyfast.bundle.quantize import quantize_activations

    flat = x.detach().float().reshape(-1, x.shape[-1]).numpy()
    codes, scales, zero = quantize_activations(flat)
    back = (codes.astype(np.float32) - zero[:, None].astype(np.float32)) * scales[:, None]
    return torch.from_numpy(back).reshape(x.shape)


class RoundedLinear(torch.nn.Module):
    """``linear`` with its weight and/or its input rounded as the int8 bundle rounds them."""

    def __init__(self, linear: torch.nn.Linear, weights: bool, activations: bool) -> None:
        super().__init__()
        self.linear = linear
        self.weight = rounded_weight(linear.weight) if weights else linear.weight.detach()
        self.activations = activations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = rounded_activations(x) if self.activations else x
        return torch.nn.functional.linear(x, self.weight, self.linear.bias)


def encoder_linears(model: Any) -> list[tuple[int, Any, str, torch.nn.Linear]]:
    """(1-based layer, owner module, attribute, linear) of every encoder linear."""
    out = []
    for i, layer in enumerate(model.model.bert.encoder.layer):
        for owner, name in [(layer.attention.self, "query"), (layer.attention.self, "key"),
                            (layer.attention.self, "value"), (layer.attention.output, "dense"),
                            (layer.intermediate, "dense"), (layer.output, "dense")]:
            out.append((i + 1, owner, name, getattr(owner, name)))
    return out


def apply(variant: str, linears: list[tuple[int, Any, str, torch.nn.Linear]]) -> None:
    """Puts the variant's modules in place (``float32`` restores the originals)."""
    keep: set[int] = set()
    if variant.startswith("int8_except_layers_"):
        keep = {int(x) for x in variant.removeprefix("int8_except_layers_").split("_")}
    for layer, owner, name, linear in linears:
        if variant == "float32" or layer in keep:
            setattr(owner, name, linear)
            continue
        weights = variant != "activations"
        activations = variant != "weights"
        setattr(owner, name, RoundedLinear(linear, weights, activations))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="checkpoint with branches (selfdistill OUT)")
    ap.add_argument("--eval", required=True, help="labelled evaluation file")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from tinyfast.data import TaskMeta, read_examples
    from tinyfast.data.splits import encode_split
    from tinyfast.models import load_tokenizer
    from tinyfast.models.early_exit import EarlyExitClassifier

    model_dir = Path(args.model)
    meta = TaskMeta.load(model_dir)
    examples = read_examples(args.eval, meta.columns, meta.task)
    model = EarlyExitClassifier.load(model_dir).eval()
    split = encode_split(load_tokenizer(model_dir), examples, meta, with_labels=True)
    labels = np.asarray(split.labels)
    linears = encoder_linears(model)
    started = time.perf_counter()

    def run(variant: str) -> dict[float, tuple[np.ndarray, np.ndarray]]:
        apply(variant, linears)
        return {s: model.predict(split, s) for s in SPEEDS}

    reference = run("float32")
    result: dict[str, Any] = {
        "benchmark": "int8_sensitivity", "created": datetime.datetime.now(
            datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python " + " ".join(sys.argv), "model": recorded_path(args.model),
        "eval": recorded_path(args.eval), "rows": len(labels),
        "float32_accuracy": {str(s): round(float((lg.argmax(1) == labels).mean()), 4)
                             for s, (lg, _) in reference.items()},
        "variants": {},
    }
    for variant in args.variants.split(","):
        print(f"{variant} ...", file=sys.stderr, flush=True)
        found = run(variant)
        points = []
        for s in SPEEDS:
            (lg, exits), (ref_lg, ref_exits) = found[s], reference[s]
            points.append({
                "speed": s,
                "accuracy_minus_float32_points": round(
                    100 * float((lg.argmax(1) == labels).mean() - (ref_lg.argmax(1) == labels)
                                .mean()), 3),
                "same_exit_layer": round(float((exits == ref_exits).mean()), 4),
            })
        lg0, ref0 = found[0.0][0], reference[0.0][0]
        result["variants"][variant] = {
            "labels_changed_at_speed_0": int((lg0.argmax(1) != ref0.argmax(1)).sum()),
            "max_abs_accuracy_gap_points": max(abs(p["accuracy_minus_float32_points"])
                                               for p in points),
            "points": points,
        }
    apply("float32", linears)
    result["seconds"] = round(time.perf_counter() - started, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    for name, v in result["variants"].items():
        print(f"{name:26s} max gap {v['max_abs_accuracy_gap_points']:.2f}  same exit "
              f"{min(p['same_exit_layer'] for p in v['points']):.3f}..")
    return 0


if __name__ == "__main__":
    sys.exit(main())
