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


class BundleError(TinyfastError, ValueError):
    """A bundle file is malformed, truncated or inconsistent with ``tinyfast.json``.

    Raised by the Rust loader; the message starts with the offending file's path (also in
    ``path``) and names the field or tensor at fault.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path
