"""The report's figures, drawn with matplotlib's Agg canvas (no display, no pyplot state):

- ``accuracy_vs_throughput.png``: every bench contender with numbers as a point, the tinyfast
  speeds as one line, rows/s on a log axis;
- ``exit_layers.png``: the share of rows leaving after each layer, per speed;
- ``training_<stage>.png``: loss against step for each training log of a stage, its evaluations
  on a second axis.

matplotlib is optional (``pip install 'tinyfast[report]'``) and imported only here, when drawing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tinyfast.report.contenders import measured
from tinyfast.report.curve import exit_shares
from tinyfast.report.formatting import is_number, speed
from tinyfast.report.inputs import BENCH, CURVE, Outputs
from tinyfast.report.logs import TrainLog

__all__ = ["ACCURACY_PLOT", "EXITS_PLOT", "INSTALL_HINT", "Plot", "Plots", "draw_plots",
           "matplotlib_available"]

INSTALL_HINT = "pip install 'tinyfast[report]'"
ACCURACY_PLOT = "accuracy_vs_throughput.png"
EXITS_PLOT = "exit_layers.png"
_DPI = 110


@dataclass
class Plot:
    file: str  # in the report's directory
    title: str


@dataclass
class Plots:
    drawn: list[Plot] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # why a figure is not there


def matplotlib_available() -> bool:
    try:
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def draw_plots(outputs: Outputs, logs: dict[str, list[TrainLog]], target: Path) -> Plots:
    """Every figure there is data for, written into ``target``; why the others are not."""
    plots = Plots()
    for name, draw in ((ACCURACY_PLOT, _accuracy_vs_throughput), (EXITS_PLOT, _exit_layers)):
        plot = draw(outputs, target)
        if isinstance(plot, Plot):
            plots.drawn.append(plot)
        else:
            plots.missing.append(f"{name}: no data ({plot})")
    for stage, stage_logs in logs.items():
        plot = _training(stage, stage_logs, target)
        if plot is not None:
            plots.drawn.append(plot)
    return plots


def _accuracy_vs_throughput(outputs: Outputs, target: Path) -> Plot | str:
    if outputs.bench is None:
        return outputs.why_missing("bench", BENCH)
    points = {name: (rec["throughput_rows_per_s"], 100 * rec["accuracy"])
              for name, rec in measured(outputs.bench).items()
              if is_number(rec.get("throughput_rows_per_s")) and rec["throughput_rows_per_s"] > 0
              and is_number(rec.get("accuracy"))}
    if not points:
        return f"no contender in {BENCH} has an accuracy and a throughput"
    records = outputs.bench["contenders"]
    adaptive = sorted((name for name in points if is_number(records[name].get("speed"))),
                      key=lambda name: records[name]["speed"])
    figure = _figure(7.5, 5.0)
    ax = figure.add_subplot()
    # Peers go in the legend: on an easy task their points coincide and labels would overlap.
    markers = "sD^vP*Xph"
    for index, (name, (x, y)) in enumerate(n for n in points.items() if n[0] not in adaptive):
        ax.scatter([x], [y], zorder=3, marker=markers[index % len(markers)], label=name)
    if adaptive:
        ax.plot([points[n][0] for n in adaptive], [points[n][1] for n in adaptive], marker="o",
                color="black", zorder=4, label="tinyfast int8, by early-exit speed")
        for name in adaptive:
            ax.annotate(f"speed {speed(records[name]['speed'])}", points[name],
                        textcoords="offset points", xytext=(5, -11), fontsize=8)
    ax.legend(loc="best", fontsize=8)
    batch = (outputs.bench.get("settings") or {}).get("batch_size")
    ax.set_xscale("log")
    ax.set_xlabel(f"rows/s at batch {batch} (log scale)" if is_number(batch) else
                  "rows/s (log scale)")
    ax.set_ylabel("dev accuracy (%)")
    ax.set_title("Accuracy against throughput")
    ax.grid(True, which="both", alpha=0.3)
    figure.savefig(target / ACCURACY_PLOT, dpi=_DPI)
    return Plot(ACCURACY_PLOT, "Accuracy against throughput (tinyfast bench)")


def _exit_layers(outputs: Outputs, target: Path) -> Plot | str:
    # The curve covers the evaluate stage's speeds; without it the bench's tinyfast contenders
    # recorded the same shares for theirs.
    points = outputs.points() or sorted(
        (rec for rec in measured(outputs.bench or {}).values() if is_number(rec.get("speed"))),
        key=lambda rec: rec["speed"])
    shares = [(p["speed"], exit_shares(p)) for p in points]
    shares = [(s, by_layer) for s, by_layer in shares if by_layer]
    if not shares:
        if outputs.curve is None and outputs.bench is None:
            return outputs.why_missing("evaluate", CURVE)
        return f"no exit shares in {CURVE if outputs.curve is not None else BENCH}"
    layers = sorted({layer for _, by_layer in shares for layer in by_layer})
    width = 0.8 / len(shares)
    figure = _figure(7.5, 4.5)
    ax = figure.add_subplot()
    for i, (s, by_layer) in enumerate(shares):
        offset = (i - (len(shares) - 1) / 2) * width
        ax.bar([layer + offset for layer in layers],
               [100 * by_layer.get(layer, 0.0) for layer in layers], width,
               label=f"speed {speed(s)}")
    ax.set_xticks(layers)
    ax.set_xlabel("exit layer")
    ax.set_ylabel("rows (%)")
    ax.set_title("Where rows leave the model, per early-exit speed")
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    figure.savefig(target / EXITS_PLOT, dpi=_DPI)
    return Plot(EXITS_PLOT, "Exit layers per speed")


def _finite(records: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    pairs = [(r["step"], r[key]) for r in records if is_number(r.get(key))]
    return [s for s, _ in pairs], [v for _, v in pairs]


def _training(stage: str, logs: list[TrainLog], target: Path) -> Plot | None:
    panels = [log for log in logs if log.train or log.evals]
    if not panels:
        return None
    figure = _figure(7.5, 3.6 * len(panels))
    for index, log in enumerate(panels, 1):
        ax = figure.add_subplot(len(panels), 1, index)
        steps, losses = _finite(log.train, "loss")
        # A line needs two points: a short log shows its few as markers.
        handles = ax.plot(steps, losses, color="C0", marker="o" if len(steps) < 3 else None,
                          label="training loss")
        # Distillation losses fall by orders of magnitude early on: a log axis keeps the rest
        # of the run readable.
        if losses and min(losses) > 0 and max(losses) / min(losses) > 20:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        metrics = log.eval_metrics()
        if metrics:
            other = ax.twinx()
            for i, metric in enumerate(metrics, 1):
                eval_steps, values = _finite(log.evals, metric)
                handles += other.plot(eval_steps, values, marker="o", linestyle="--",
                                      color=f"C{i % 10}", label=f"eval {metric}")
            other.set_ylabel("evaluation")
        ax.legend(handles=handles, fontsize=8, loc="upper right")
        ax.set_title(f"{stage}: {log.name}" if log.name else stage)
        ax.grid(True, alpha=0.3)
    file = f"training_{stage}.png"
    figure.savefig(target / file, dpi=_DPI)
    return Plot(file, f"Training: {stage}")
