"""Fault injection for the reliability tests: make a real run fail once at a named point, the way production fails.

Set ``WSPSR_FAULTS`` to a comma-separated list of ``ACTION@POINT`` and ``WSPSR_FAULTS_DIR`` to an existing folder
before starting a job (Ray's local workers inherit the environment). Points are ``stage:NAME`` (before a stage
runs on a batch, in whichever worker or actor runs it) and ``commit`` (after a shard's data files are written,
before its marker). Actions:

- ``kill``: the process dies at once (SIGKILL), like an OOM-killed worker or a lost node;
- ``raise``: a ``RuntimeError``, like a bug in a stage;
- ``enospc``: ``OSError(ENOSPC)``, like a full disk.

Each fault fires once per ``WSPSR_FAULTS_DIR``, across all processes (an exclusive-create file records it), so a
retried task or restarted actor then succeeds; ``ACTION*N@POINT`` fires N times (``raise*1000@stage:NAME``: a bug
that every row meets). Unset, this costs one dictionary lookup per call.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

ACTIONS = ("kill", "raise", "enospc")


def inject(point: str) -> None:
    spec = os.environ.get("WSPSR_FAULTS")
    if not spec:
        return
    for item in spec.split(","):
        action, _, where = item.strip().partition("@")
        if where != point:
            continue
        action, _, times = action.partition("*")
        if action not in ACTIONS:
            raise ValueError(f"WSPSR_FAULTS: unknown action {action!r} (one of {', '.join(ACTIONS)})")
        if not any(_first_time(f"{action}@{point}" + (f".{n}" if n else "")) for n in range(int(times or 1))):
            continue
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "raise":
            raise RuntimeError(f"injected fault at {point}")
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (injected at {point})")


def _first_time(name: str) -> bool:
    folder = os.environ.get("WSPSR_FAULTS_DIR")
    if not folder:
        raise ValueError("WSPSR_FAULTS needs WSPSR_FAULTS_DIR (an existing folder that records faults already fired)")
    try:
        fd = os.open(Path(folder) / name.replace("/", "_").replace(":", "_"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True
