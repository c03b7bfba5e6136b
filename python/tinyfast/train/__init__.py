"""The one training loop (``run``) every trainer hands its Step to, with evaluation helpers and
the distributed setup."""

from tinyfast.train.loop import Metrics, TrainConfig, TrainResult, run

__all__ = ["Metrics", "TrainConfig", "TrainResult", "run"]
