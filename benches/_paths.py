"""How the bench scripts write a path into a result file: as something another checkout can read
(and which commit they ran).

A result file is committed and read on other machines, so it never holds an absolute path:

- a file the bench built itself (in its ``--out`` or ``--work-dir``) is written as a name under
  that directory, e.g. ``<OUT>/teacher/model`` or ``<WORK>/bundle-int8``;
- a path inside the repository or beside it (under the repository's parent, where the shared
  data sits at ``../shared/data``) is written relative to the repository root;
- anything else keeps only its last two parts, e.g. ``<elsewhere>/sst2/dev.tsv``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def head_commit() -> str | None:
    """The repository's HEAD commit (short), which a result file names as the code that ran; None
    outside a git checkout."""
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def recorded_path(
    path: str | os.PathLike[str],
    artifacts: str | os.PathLike[str] | None = None,
    label: str = "<OUT>",
) -> str:
    """``path`` as a result file records it (forward slashes, never absolute).

    ``artifacts`` is the directory where the bench writes what it builds and ``label`` the name
    a path inside it starts with. Relative paths are taken from the current directory.
    """
    full = Path(path).resolve()
    if artifacts is not None:
        base = Path(artifacts).resolve()
        if full.is_relative_to(base):
            return "/".join([label, *full.relative_to(base).parts])
    try:
        rel = Path(os.path.relpath(full, REPO))
    except ValueError:  # another drive on Windows
        rel = None
    if rel is not None and rel.parts[:2] != ("..", ".."):
        return rel.as_posix()
    return "/".join(["<elsewhere>", *full.parts[-2:]])
