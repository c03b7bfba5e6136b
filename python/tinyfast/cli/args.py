"""Argument types and the parser class every command shares: a bad value is one line on stderr
and exit status 2, never a traceback."""

from __future__ import annotations

import argparse
import math
import sys
from typing import NoReturn

EXIT_USAGE = 2
# torch.manual_seed takes 64-bit seeds; the training loop adds rank and step offsets to it.
SEED_MAX = 2**63 - 1


class Parser(argparse.ArgumentParser):
    """``argparse`` with one-line errors (the usage block is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def _number(text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        noun = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {noun}, got '{text}'") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got '{text}'")
    return value


def finite_float(text: str) -> float:
    return _number(text, float)


def _at_least(text: str, kind: type, low: float, strict: bool) -> float | int:
    value = _number(text, kind)
    if value < low or (strict and value == low):
        raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low:g} "
                                         f"(got {text})")
    return value


def positive_float(text: str) -> float:
    return _at_least(text, float, 0, strict=True)


def nonnegative_float(text: str) -> float:
    return _at_least(text, float, 0, strict=False)


def positive_int(text: str) -> int:
    return _at_least(text, int, 1, strict=False)


def nonnegative_int(text: str) -> int:
    return _at_least(text, int, 0, strict=False)


def seed(text: str) -> int:
    value = _number(text, int)
    if not 0 <= value <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be in 0..{SEED_MAX} (got {text})")
    return value
