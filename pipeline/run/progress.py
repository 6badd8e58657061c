"""What a person follows while a job runs in a log (CI, a file, ``ray job logs``): one compact line per stage group at
a steady interval, from what the driver already receives (each committed shard's counts), instead of Ray's
per-operator dumps. On a terminal Ray's own progress bars show instead; ``--verbose`` brings Ray's logs back."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger("wspsr")


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


class ProgressLine:
    """``what``: done of ``total`` inputs, audio hours, real-time factor (audio per wall second since the group
    started), rejects so far, time left; logged every ``interval_s`` by a timer (also while nothing has committed
    yet: models load, the first blocks decode) and once at the end. ``enabled`` false: silent."""

    def __init__(self, what: str, total: int | None, interval_s: float = 10.0, enabled: bool = True, counted: str | None = None):
        """``counted``: the marker's kind of id that counts the inputs (fetch: ``urls``); default kept + rejected."""
        self.what, self.total, self.interval_s, self.enabled, self.counted = what, total, interval_s, enabled, counted
        self.started = time.monotonic()
        self.done = self.rejected = 0
        self.audio_ms = 0.0
        self._stop = threading.Event()
        if enabled:
            threading.Thread(target=self._tick, name=f"progress-{what}", daemon=True).start()

    def _tick(self) -> None:
        while not self._stop.wait(self.interval_s):
            log.info("%s", self.line())

    def add(self, marker: dict[str, Any]) -> None:
        """One committed shard as the runner reports it (``counts`` per kind of id, ``stats``)."""
        counts, stats = marker.get("counts", {}), marker.get("stats", {})
        self.done += counts.get(self.counted, 0) if self.counted else sum(counts.values())
        self.rejected += counts.get("rejected", 0)
        self.audio_ms += stats.get("ms_in", stats.get("ms_audio", 0)) or 0

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        parts = [f"{self.what}: {self.done}" + (f"/{self.total} ({100 * self.done / self.total:.0f} %)" if self.total else "")]
        if self.audio_ms:
            parts.append(f"{self.audio_ms / 3_600_000:.2f} h of audio at {self.audio_ms / 1000 / elapsed:.1f}x real time")
        parts.append(f"{self.rejected} rejected")
        if self.total and self.done:
            parts.append(f"{_clock(elapsed)} elapsed, about {_clock(elapsed * max(self.total - self.done, 0) / self.done)} left")
        return ", ".join(parts)

    def stop(self) -> None:
        self._stop.set()

    def finish(self) -> None:
        self.stop()
        if self.enabled:
            log.info("%s (done)", self.line().split(", about")[0])
