"""The command's side of a worker process (``tinyfast.bench.worker``): start it with the
contender's thread count in its environment, ask it one JSON line at a time, and turn its
errors, or its death, into exceptions."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tinyfast.bench.contender import Skipped

__all__ = ["WorkerError", "WorkerProcess"]


class WorkerError(Exception):
    """A worker answered an error, or died."""


class WorkerProcess:
    """One contender's process; requests and answers are JSON lines."""

    def __init__(self, name: str, log: Path, threads: int) -> None:
        self.name = name
        self.log_path = log
        env = dict(os.environ)
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
            env[var] = str(threads)
        self._log = open(log, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tinyfast.bench.worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
            encoding="utf-8", env=env,
        )

    def ask(self, op: str, **fields: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except OSError:
            line = ""
        if not line:
            status = self.proc.wait()
            raise WorkerError(f"the worker process exited (status {status}) during {op!r}: "
                              f"{self._last_log_line()}")
        reply = json.loads(line)
        if "skipped" in reply:
            raise Skipped(reply["skipped"])
        if "error" in reply:
            raise WorkerError(reply["error"])
        return reply

    def _last_log_line(self) -> str:
        self._log.flush()
        lines = [x for x in self.log_path.read_text(encoding="utf-8").splitlines() if x.strip()]
        return lines[-1].strip() if lines else f"no message (see {self.log_path})"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
