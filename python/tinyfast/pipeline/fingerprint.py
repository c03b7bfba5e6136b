"""Fingerprints of what a pipeline stage reads: the bytes of its input files and directories, its
settings and the fingerprints of the stages it builds on. Equal fingerprints mean the stage would
compute the same thing again, so a rerun skips it."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from tinyfast.errors import ConfigError

__all__ = ["digest_path", "fingerprint"]

_BLOCK = 1 << 20


def _digest_file(path: Path, h: Any) -> None:
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)


def digest_path(path: str | os.PathLike[str]) -> str:
    """sha256 of a regular file's bytes, or of a directory's files (names and bytes, sorted, at
    any depth; symbolic links are followed). Anything else is refused in one line."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read: {exc.strerror}") from None
    h = hashlib.sha256()
    if stat.S_ISREG(mode):
        _digest_file(path, h)
    elif stat.S_ISDIR(mode):
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(file.relative_to(path).as_posix().encode("utf-8") + b"\0")
            _digest_file(file, h)
            h.update(b"\0")
    else:
        raise ConfigError(f"{path}: not a regular file or directory")
    return h.hexdigest()


def fingerprint(stage: str, settings: dict[str, Any], inputs: dict[str, str]) -> str:
    """One stage's fingerprint from its settings and its inputs' digests or fingerprints."""
    payload = json.dumps({"stage": stage, "settings": settings, "inputs": inputs},
                         sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()
