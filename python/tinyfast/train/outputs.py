"""A trainer's output directory: claimed before anything is written, so a run never replaces
files it did not write, and its summary written by rank 0 alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tinyfast._io import read_json_object
from tinyfast.errors import ConfigError
from tinyfast.train import distributed

# Marks a directory as a tinyfast run and says which command made it.
RUN_FILE = "tinyfast_run.json"


def claim_out_dir(ctx: distributed.DistContext, out: Path, kind: str, overwrite: bool) -> None:
    """Make ``out`` the home of a ``kind`` run ("finetune", "distill task", ...).

    Allowed: a missing or empty directory, or one holding a run of the same kind (a rerun or
    ``--resume``). Anything else (a user's files, another command's run, such as the teacher's
    directory given to ``distill task``) is refused unless ``overwrite``; even then only the
    run's own entries (model/, work/, metrics.json) are replaced, never other files."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        marker = out / RUN_FILE
        if not marker.exists():
            raise ConfigError(f"{out}: is not empty and holds no tinyfast run; refusing to write "
                              "into it (choose a new directory, or pass --overwrite)")
        found = read_json_object(marker, "a run marker").get("kind")
        if found != kind:
            raise ConfigError(f"{out}: holds a '{found}' run, not a '{kind}' run; refusing to "
                              "replace it (choose a new directory, or pass --overwrite)")
    ctx.barrier()  # every rank has checked before rank 0 writes anything
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / RUN_FILE).write_text(json.dumps({"kind": kind}) + "\n", encoding="utf-8")
    ctx.barrier()


def write_summary(ctx: distributed.DistContext, out: Path, summary: dict[str, Any]) -> None:
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
