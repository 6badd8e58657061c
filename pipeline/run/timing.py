"""Stage timings for benchmarks (``python -m bench corpus``): when ``WSPSR_STAGE_TIMES`` names a file, every stage
call in every worker and every driver-side phase of a plan appends one JSON line with its wall and CPU seconds.
Unset (the default), a stage call costs one environment lookup more; outputs never change."""

from __future__ import annotations

import json
import os
import resource
import time
from typing import Any, Callable

STAGE_TIMES_ENV = "WSPSR_STAGE_TIMES"


def cpu_seconds() -> float:
    """This process's CPU time plus that of its finished children (ffmpeg runs as a child of the decode stage)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def record_time(kind: str, name: str, rows: int, wall_s: float, cpu_s: float) -> None:
    entry = {"kind": kind, "name": name, "rows": rows, "wall_s": round(wall_s, 4), "cpu_s": round(cpu_s, 4), "pid": os.getpid()}
    with open(os.environ[STAGE_TIMES_ENV], "a", encoding="utf-8") as f:  # one short O_APPEND write: lines don't interleave
        f.write(json.dumps(entry) + "\n")


def timed(kind: str, name: str, rows: int, fn: Callable[..., Any], *args: Any) -> Any:
    if not os.environ.get(STAGE_TIMES_ENV):
        return fn(*args)
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = fn(*args)
    record_time(kind, name, rows, time.perf_counter() - wall, cpu_seconds() - cpu)
    return result


