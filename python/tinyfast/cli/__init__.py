"""The ``tinyfast`` command line: argument parsing only, one module per command group."""

from tinyfast.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
