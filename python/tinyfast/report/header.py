"""The report's opening: what the pipeline ran on, which recipe, and how long this run took."""

from __future__ import annotations

from typing import Any

from tinyfast.report.formatting import code, duration
from tinyfast.report.inputs import SUMMARY, Outputs

__all__ = ["TITLE", "header_section"]

TITLE = "# tinyfast pipeline report"
_INPUTS = (("teacher", "Teacher"), ("train", "Train"), ("dev", "Dev"), ("corpus", "Corpus"))


def _given(value: Any) -> str:
    return code(value) if value else "none"


def header_section(outputs: Outputs) -> str:
    lines = [TITLE, "", f"Output directory: {code(outputs.out)}", ""]
    summary = outputs.summary
    if summary is None:
        lines.append(f"_No pipeline summary ({SUMMARY} is missing): the inputs, recipe and "
                     "stages are unknown._")
        return "\n".join(lines)
    for key, title in _INPUTS:
        if key in summary:
            lines.append(f"- {title}: {_given(summary[key])}")
    if summary.get("unlabeled"):  # without it self-distillation reads the training file
        lines.append(f"- Unlabeled text: {_given(summary['unlabeled'])}")
    lines.append(f"- Recipe: {summary.get('recipe_source') or 'unknown'}")
    lines.append(f"- Wall time of this run: {duration(summary.get('seconds'))}")
    return "\n".join(lines)
