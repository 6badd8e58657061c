"""Jobs as the user runs them, in their own process: for what only a process boundary shows (kills, exit codes)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def kill_after_commits(cmd: list[str], out: Path, commits: int, cwd: Path | None = None) -> int:
    """Start a job, SIGKILL it (driver and its local Ray) once ``commits`` shard markers exist; return how many
    there were: a crash partway through a real run."""
    proc = subprocess.Popen(cmd, cwd=cwd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(list((out / "_commits").glob("*.json"))) < commits:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return len(list((out / "_commits").glob("*.json")))
