"""The pipeline report: ``OUT/report/report.md`` and its figures from what ``tinyfast pipeline``
left in OUT (``tinyfast report OUT``). No torch; the figures need matplotlib
(``pip install 'tinyfast[report]'``), imported only when they are drawn.

One idea a module: ``inputs`` (reading OUT's JSON files, why one is missing), ``logs`` (training
logs), ``formatting`` (how numbers, times and tables are written), one module per section
(``header``, ``stages``, ``headline``, ``curve``, ``contenders``), ``plots`` (the figures) and
``build`` (``build_report``).
"""

from tinyfast.report.build import build_report

__all__ = ["build_report"]
