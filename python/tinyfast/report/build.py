"""``build_report``: read a pipeline's output directory, draw the figures, write ``report.md``,
and swap the new ``OUT/report/`` in whole (no reader sees half a report, and no figure of an
earlier report outlives it)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from tinyfast._io import replace_dir
from tinyfast.errors import ConfigError
from tinyfast.report.contenders import contenders_section
from tinyfast.report.curve import curve_section
from tinyfast.report.header import header_section
from tinyfast.report.headline import headline_section
from tinyfast.report.inputs import Outputs, read_outputs
from tinyfast.report.logs import stage_logs
from tinyfast.report.plots import INSTALL_HINT, draw_plots, matplotlib_available
from tinyfast.report.stages import stage_section

__all__ = ["REPORT_DIR", "REPORT_FILE", "build_report"]

REPORT_DIR = "report"
REPORT_FILE = "report.md"


def build_report(out_dir: str | os.PathLike[str], *, plots: bool = True) -> Path:
    """Write ``out_dir/report/report.md`` (and its PNG figures when ``plots`` and matplotlib is
    installed) from what ``tinyfast pipeline --out out_dir`` left there; returns the path of
    ``report.md``. Problems with the inputs are one-line ``TinyfastError``s naming the file."""
    out = Path(out_dir)
    outputs = read_outputs(out)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{REPORT_DIR}-", dir=out))
    except OSError as exc:
        raise ConfigError(f"{out}: cannot write the report here ({exc.strerror})") from None
    try:
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the report from other users
        plots_text = _plots_section(outputs, staging, plots)
        sections = [header_section(outputs), stage_section(outputs), headline_section(outputs),
                    curve_section(outputs), contenders_section(outputs), plots_text]
        (staging / REPORT_FILE).write_text("\n\n".join(sections) + "\n", encoding="utf-8")
        replace_dir(staging, out / REPORT_DIR)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out / REPORT_DIR / REPORT_FILE


def _plots_section(outputs: Outputs, target: Path, wanted: bool) -> str:
    title = "## Plots"
    if not wanted:
        return f"{title}\n\nNot drawn (plots turned off); drawing them needs matplotlib: " \
               f"`{INSTALL_HINT}`."
    if not matplotlib_available():
        return f"{title}\n\nNot drawn: plots need matplotlib (`{INSTALL_HINT}`)."
    logs = {stage: stage_logs(outputs.out / stage) for stage in outputs.stages
            if outputs.finished(stage)}
    drawn = draw_plots(outputs, logs, target)
    parts = [title]
    parts += [f"![{plot.title}]({plot.file})" for plot in drawn.drawn]
    if drawn.missing:
        parts.append("\n".join(f"- {why}" for why in drawn.missing))
    return "\n\n".join(parts)
