"""Peak memory and CPU time of a process tree (the driver and its local Ray), sampled from /proc: no psutil."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

def _process_tree(root_pid: int) -> list[int]:
    """``root_pid`` and all its descendants (from /proc: no psutil needed)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree

def _cpu_ticks(pid: int) -> int:
    """utime + stime + cutime + cstime: the process's CPU and that of the children it waited for (ffmpeg)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(f) for f in fields[11:15])
    except (OSError, ValueError, IndexError):
        return 0

def _memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB; PSS shares each shared page (Ray's object store) among its users."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return rss, pss

class TreeMemory:
    """Samples the summed RSS and PSS of a process tree (driver + local Ray: GCS, raylet, workers, actors) every
    ``interval`` seconds in a thread, keeping the peaks, and each process's CPU time as last seen."""

    def __init__(self, pid: int, interval: float = 0.2):
        import threading

        self.pid, self.interval = pid, interval
        self.peak_rss_kib = self.peak_pss_kib = self.peak_processes = self.samples = self.root_peak_rss_kib = 0
        self.cpu_ticks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = _process_tree(self.pid)
            sizes = [_memory_kib(pid) for pid in pids]
            for pid in pids:
                self.cpu_ticks[pid] = max(self.cpu_ticks.get(pid, 0), _cpu_ticks(pid))
            self.peak_rss_kib = max(self.peak_rss_kib, sum(r for r, _ in sizes))
            self.root_peak_rss_kib = max(self.root_peak_rss_kib, sizes[0][0] if sizes else 0)  # the driver itself
            self.peak_pss_kib = max(self.peak_pss_kib, sum(p for _, p in sizes))
            self.peak_processes = max(self.peak_processes, len(pids))
            self.samples += 1
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        return {"peak_pss_mib": round(self.peak_pss_kib / 1024, 1), "peak_rss_sum_mib": round(self.peak_rss_kib / 1024, 1),
                "root_peak_rss_mib": round(self.root_peak_rss_kib / 1024, 1),
                "peak_processes": self.peak_processes, "samples": self.samples, "cpu_s": round(sum(self.cpu_ticks.values()) / CLOCK_TICKS, 1)}
