"""The headline: how close the int8 student comes to the teacher, and the early-exit speed worth
running (``tinyfast.exits.chosen_point``) with what it costs and saves."""

from __future__ import annotations

from tinyfast.exits import ACCURACY_TOLERANCE_POINTS, chosen_point
from tinyfast.report.formatting import accuracy, flops, is_number, number, points, share, speed
from tinyfast.report.inputs import CURVE, Outputs

__all__ = ["headline_section"]

RULE = (f"the largest speed whose accuracy is within {ACCURACY_TOLERANCE_POINTS:g} points of "
        "speed 0")


def headline_section(outputs: Outputs) -> str:
    teacher = outputs.teacher_accuracy()
    lines = ["## Headline", "", f"- Teacher dev accuracy: {accuracy(teacher)}"]
    curve_points = outputs.points()
    if outputs.curve is None:
        lines.append(f"- Int8 student: no data ({outputs.why_missing('evaluate', CURVE)})")
        return "\n".join(lines)
    base = next((p for p in curve_points if p["speed"] == 0.0), None)
    if base is None or "accuracy" not in base:
        lines.append(f"- Int8 student: no accuracy at speed 0 in {CURVE}")
        return "\n".join(lines)
    of_teacher = f" ({share(base['accuracy'], teacher)} of the teacher)" \
        if is_number(teacher) else ""
    lines.append(f"- Int8 student at speed 0: {accuracy(base['accuracy'])}{of_teacher}")
    chosen = chosen_point(curve_points)
    assert chosen is not None  # a speed-0 point with an accuracy is there
    num_layers = outputs.curve.get("num_layers")
    of_layers = f" of {num_layers}" if is_number(num_layers) else ""
    lines.append(
        f"- Chosen speed {speed(chosen['speed'])} ({RULE}): accuracy "
        f"{accuracy(chosen['accuracy'])} ({points(chosen['accuracy'] - base['accuracy'])}), "
        f"mean exit layer {number(chosen.get('mean_exit_layer'), '.2f')}{of_layers}, "
        f"relative FLOPs {flops(chosen.get('relative_flops'))}")
    return "\n".join(lines)
