"""``tinyfast report OUT``: argument parsing only; the report lives in ``tinyfast.report``,
imported when the command runs."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_command"]


def add_command(sub: Any) -> None:
    p = sub.add_parser(
        "report", help="report.md and plots from a finished pipeline's output directory",
        description="Reads what tinyfast pipeline wrote into OUT (the pipeline summary, the "
                    "stages' records and training logs, the int8 speed curve, the bench report) "
                    "and writes OUT/report/report.md: the stage table, the headline accuracy "
                    "and chosen early-exit speed, the speed curve and the contenders, with PNG "
                    "plots beside it (they need matplotlib: pip install 'tinyfast[report]'). "
                    "A section whose input is missing says why.")
    p.add_argument("out", metavar="OUT", help="the pipeline's output directory (its --out)")
    p.add_argument("--no-plots", action="store_true", help="write report.md without plots")
    p.set_defaults(run=_report)


def _report(args: argparse.Namespace) -> int:
    from tinyfast.report import build_report

    path = build_report(args.out, plots=not args.no_plots)
    figures = sorted(p.name for p in path.parent.glob("*.png"))
    print(f"report: {path}")
    print(f"plots: {', '.join(figures) if figures else 'none'}")
    return 0
