"""Early exit measured: the speed rule, FLOPs per row, accuracy / exit layer / FLOPs / time over a
range of speeds for any predictor (the int8 runtime or the PyTorch early-exit model), and which
speed to run. Needs numpy alone."""

from tinyfast.exits.choice import ACCURACY_TOLERANCE_POINTS, chosen_point
from tinyfast.exits.curve import METRIC_COLUMNS, format_table, runtime_predictor, speed_curve
from tinyfast.exits.flops import (
    ModelShape,
    branch_flops,
    full_flops,
    head_flops,
    layer_flops,
    relative_flops,
    row_flops,
)
from tinyfast.exits.speeds import check_speed, parse_speeds

__all__ = [
    "ACCURACY_TOLERANCE_POINTS",
    "METRIC_COLUMNS",
    "ModelShape",
    "branch_flops",
    "check_speed",
    "chosen_point",
    "format_table",
    "full_flops",
    "head_flops",
    "layer_flops",
    "parse_speeds",
    "relative_flops",
    "row_flops",
    "runtime_predictor",
    "speed_curve",
]
