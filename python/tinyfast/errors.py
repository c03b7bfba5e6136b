"""Errors a user can cause. The CLI prints their message alone, never a traceback."""

from __future__ import annotations


class TinyfastError(Exception):
    """Base class of every error caused by user input (files, flags, configs)."""


class DataError(TinyfastError, ValueError):
    """A data file is missing, malformed or inconsistent.

    ``where`` names the place, as ``path`` or ``path:line``; the message always starts with it.
    """

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}")


class ConfigError(TinyfastError, ValueError):
    """A flag, config file or model combination that cannot work."""
