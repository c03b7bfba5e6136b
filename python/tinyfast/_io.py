"""File helpers every layer shares: read a JSON object with a located error, read a file with a
size limit, and swap a finished directory in atomically."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tinyfast.errors import ConfigError

# Metadata files (configs, task files, specs) are small; anything larger is not one of ours.
JSON_LIMIT = 64 << 20
_CHUNK = 16 << 20


# Builds the exception for a problem at a place: ``error(where, problem)``.
ErrorFactory = Callable[[str, str], Exception]


def _config_error(where: str, problem: str) -> Exception:
    return ConfigError(f"{where}: {problem}")


def read_limited(path: str | os.PathLike[str], limit: int,
                 error: ErrorFactory = _config_error) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them.

    A device, FIFO or directory in place of a file is refused before it is opened (reading
    /dev/zero would never end, opening a FIFO blocks), and the read stops at ``limit + 1`` bytes
    whatever size the file claims. Problems are raised as ``error(where, problem)``."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise error(str(path), "no such file") from None
    except OSError as exc:
        raise error(str(path), f"cannot be read: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise error(str(path), f"not a regular file ({_kind(mode)})")
    chunks: list[bytes] = []
    total = 0
    try:
        with open(path, "rb") as f:
            # In pieces: read(limit + 1) would reserve the whole limit up front.
            while total <= limit:
                chunk = f.read(min(_CHUNK, limit + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
    except OSError as exc:
        raise error(str(path), f"cannot be read: {exc.strerror}") from None
    data = b"".join(chunks)
    if len(data) > limit:
        raise error(str(path), f"larger than the {limit}-byte limit for this file")
    return data


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def read_json_object(path: str | os.PathLike[str], what: str = "a JSON object",
                     limit: int = JSON_LIMIT, error: ErrorFactory = _config_error
                     ) -> dict[str, Any]:
    """Parse ``path`` as a JSON object; every problem is one error naming the file (and line,
    for syntax errors), a ConfigError unless ``error`` builds another. ``what`` says what the
    object should have been."""
    path = Path(path)
    data = read_limited(path, limit, error)
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise error(str(path), f"not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise error(f"{path}:{exc.lineno}", f"invalid JSON: {exc.msg} (column {exc.colno})"
                    ) from None
    if not isinstance(value, dict):
        raise error(str(path), f"expected {what}, got {json_type(value)}")
    return value


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def replace_dir(new: Path, target: Path) -> None:
    """Put the complete directory ``new`` at ``target``: readers never see a half-written one.

    ``new`` must be on the same file system (a sibling made with ``tempfile.mkdtemp``)."""
    if not target.exists():
        os.replace(new, target)
        return
    # POSIX cannot rename over a non-empty directory: move the old one aside, then swap in.
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, aside / target.name)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(aside / target.name, target)
        raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)
