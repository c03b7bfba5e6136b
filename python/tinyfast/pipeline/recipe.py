"""A pipeline recipe: every setting of every stage that changes a result, in one file.

A recipe is TOML or JSON with one table per stage (and ``[run]`` for what all stages share); any
key left out takes the default below, and an unknown stage or key, or a value of the wrong type,
is a one-line error naming the file and the key. ``enabled`` is ``true``, ``false`` or, where the
default says so, ``"auto"`` (decided by the inputs: fine-tune only a teacher that is not yet a
classifier, run general distillation only when a corpus is given).

The resolved recipe (defaults filled in) is what the stages fingerprint: changing any value reruns
the stage that reads it and every stage after it.
"""

from __future__ import annotations

import copy
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tinyfast._io import read_limited
from tinyfast.bench.plan import FAMILIES
from tinyfast.errors import ConfigError

__all__ = ["DEFAULTS", "STAGES", "Recipe", "load_recipe"]

# Stages in the order they run.
STAGES = ("finetune", "augment", "general", "task", "selfdistill", "export", "evaluate", "bench",
          "report")

# Stage -> key -> default. The type of each default is the type the key takes (an int where a
# float is expected is accepted); None marks "any of the listed choices" in _CHOICES.
DEFAULTS: dict[str, dict[str, Any]] = {
    "run": {"seed": 42, "max_length": 64, "threads": 0, "text_a": "sentence", "text_b": "",
            "label": "label"},
    "finetune": {"enabled": "auto", "epochs": 3.0, "lr": 5e-5, "batch_size": 32, "warmup": 0.1,
                 "eval_every": 0},
    # Off by default: the augmented train file is about n + 1 times the rows, and task
    # distillation's epochs run over all of them. "" for mlm: word vectors for every word; ""
    # for vectors: whole-word vectors built from the teacher's word-piece embeddings.
    # backend: what runs the masked LM (int8: the int8 runtime, CPU only; torch: float32 on the
    # CPU, bfloat16/float16 on CUDA); their candidates differ by rounding, so it is pinned.
    "augment": {"enabled": False, "n": 20, "p": 0.4, "k": 15, "mlm": "", "vectors": "",
                "mode": "multi", "min_gap": 3, "backend": "int8"},
    "general": {"enabled": "auto", "student": "tinybert4", "epochs": 1.3, "lr": 3e-4,
                "batch_size": 64, "warmup": 0.05, "eval_every": 250, "heldout": 0.01},
    "task": {"enabled": True, "student": "tinybert4", "init": "auto",
             "intermediate_epochs": 10.0, "intermediate_lr": 1e-4, "prediction_epochs": 3.0,
             "prediction_lr": 5e-5, "temperature": 1.0, "batch_size": 32, "eval_every": 0},
    "selfdistill": {"enabled": True, "branch": "fastbert", "epochs": 10.0, "lr": 2e-4,
                    "batch_size": 32, "warmup": 0.1, "temperature": 1.0, "heldout": 0.05},
    # calibration_rows: rows of the self-distillation text the int8 export calibrates on
    # (smoothing factors and GPTQ rounding); 0: plain rounding. They change the int8 codes.
    # residual_layers: leading layers whose int8 linears add residual passes (export's
    # --residual-layers).
    "export": {"enabled": True, "dtype": "int8", "calibration_rows": 1024, "residual_layers": 0},
    "evaluate": {"enabled": True, "speeds": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8],
                 "batch_size": 32},
    # tinyfast bench on the dev set: every contender in its own process, taking turns.
    # latency_rows and max_rows 0: every row (latency: at most the bench's default).
    "bench": {"enabled": True, "contenders": list(FAMILIES), "speeds": [0.0, 0.1, 0.3],
              "threads": 1, "batch_size": 32, "rounds": 3, "latency_rows": 0, "max_rows": 0,
              "calibration_rows": 300},
    "report": {"enabled": True, "plots": True},
}

_CHOICES: dict[tuple[str, str], tuple[Any, ...]] = {
    ("finetune", "enabled"): (True, False, "auto"),
    ("general", "enabled"): (True, False, "auto"),
    ("task", "init"): ("auto", "random", "teacher-layers"),
    ("selfdistill", "branch"): ("fastbert", "linear"),
    ("export", "dtype"): ("int8", "f32"),
    ("augment", "mode"): ("multi", "word"),  # tinyfast.augment.masked_lm.MODES (needs torch)
    ("augment", "backend"): ("int8", "torch"),
}
# Integer settings with a lower bound.
_MINIMUM: dict[tuple[str, str], int] = {("export", "calibration_rows"): 0,
                                        ("export", "residual_layers"): 0}
# List settings whose items are names from a fixed set (other lists hold numbers).
_NAME_LISTS: dict[tuple[str, str], tuple[str, ...]] = {("bench", "contenders"): FAMILIES}


class Recipe:
    """Resolved settings: ``recipe["task"]["prediction_lr"]``; ``source`` names the file."""

    def __init__(self, settings: dict[str, dict[str, Any]], source: str) -> None:
        self.settings = settings
        self.source = source

    def __getitem__(self, stage: str) -> dict[str, Any]:
        return self.settings[stage]

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return copy.deepcopy(self.settings)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "recipe",
                     base: Recipe | None = None) -> Recipe:
        """``data``'s settings over ``base``'s (by default over DEFAULTS)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: a recipe is a table of stages, got {type(data).__name__}")
        settings = base.to_dict() if base is not None else copy.deepcopy(DEFAULTS)
        for stage, values in data.items():
            if stage not in DEFAULTS:
                raise ConfigError(f"{source}: unknown stage [{stage}] (stages: "
                                  f"{', '.join(DEFAULTS)})")
            if not isinstance(values, Mapping):
                raise ConfigError(f"{source}: [{stage}] must be a table of settings, got "
                                  f"{type(values).__name__}")
            for key, value in values.items():
                settings[stage][key] = _checked(source, stage, key, value)
        return cls(settings, source)


def _checked(source: str, stage: str, key: str, value: Any) -> Any:
    where = f"{source}: [{stage}] {key}"
    if key not in DEFAULTS[stage]:
        raise ConfigError(f"{where}: unknown setting (known: {', '.join(DEFAULTS[stage])})")
    default = DEFAULTS[stage][key]
    choices = _CHOICES.get((stage, key))
    if choices is not None:
        if any(type(c) is type(value) and c == value for c in choices):
            return value
        raise ConfigError(f"{where}: expected one of {', '.join(json.dumps(c) for c in choices)}"
                          f", got {json.dumps(value)}")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {json.dumps(value)}")
        return value
    names = _NAME_LISTS.get((stage, key))
    if names is not None:
        if not isinstance(value, list) or not value or \
                not all(isinstance(v, str) and v in names for v in value):
            raise ConfigError(f"{where}: expected a non-empty list of names from "
                              f"{', '.join(names)}, got {json.dumps(value)}")
        return list(dict.fromkeys(value))
    if isinstance(default, list):
        if not isinstance(value, list) or not all(_is_number(v) for v in value) or not value:
            raise ConfigError(f"{where}: expected a non-empty list of numbers, got "
                              f"{json.dumps(value)}")
        return [float(v) for v in value]
    if isinstance(default, float):
        if not _is_number(value) or not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {json.dumps(value)}")
        return float(value)
    if isinstance(default, int):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {json.dumps(value)}")
        least = _MINIMUM.get((stage, key))
        if least is not None and value < least:
            raise ConfigError(f"{where}: expected an integer >= {least}, got {value}")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {json.dumps(value)}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_recipe(path: str | Path | None, base: Recipe | None = None) -> Recipe:
    """The recipe in ``path`` (``.toml`` or ``.json``) over ``base`` (default: the defaults);
    ``base`` itself (or the defaults) when ``path`` is None."""
    if path is None:
        return base if base is not None else Recipe.from_mapping({}, "the default recipe")
    path = Path(path)
    raw = read_limited(path, 1 << 20)
    text = raw.decode("utf-8", errors="replace")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    elif path.suffix.lower() == ".toml":
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    else:
        raise ConfigError(f"{path}: a recipe is a .toml or .json file")
    return Recipe.from_mapping(data, str(path), base)
