"""Shared fixtures: real audio written in code (numpy + ffmpeg), the JFK recording, and a local Ray."""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from pipeline.io.media import ffmpeg_binary

DATA = Path(__file__).parent / "data"
JFK = DATA / "jfk.flac"
JFK_TEXT = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."


def write_wav(path: Path, seconds: float, rate: int = 16000, channels: int = 1, freq: float = 440.0) -> Path:
    """A tone (or silence with freq=0) as 16-bit PCM WAV."""
    t = np.arange(int(seconds * rate)) / rate
    signal = (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2") if freq else np.zeros(len(t), "<i2")
    frames = np.repeat(signal[:, None], channels, axis=1)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames.tobytes())
    return path


def kill_after_commits(cmd: list[str], out: Path, commits: int, cwd: Path | None = None) -> int:
    """Start a job, SIGKILL it (driver and its local Ray) once ``commits`` shard markers exist; return how many
    there were: a crash partway through a real run."""
    import os
    import signal
    import time

    proc = subprocess.Popen(cmd, cwd=cwd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(list((out / "_commits").glob("*.json"))) < commits:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return len(list((out / "_commits").glob("*.json")))


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_binary(), "-nostdin", "-y", "-loglevel", "error", *args], check=True, timeout=60)


def _stamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def srt(cues: list[tuple[float, float, str]]) -> str:
    return "".join(f"{i}\n{_stamp(a, ',')} --> {_stamp(b, ',')}\n{text}\n\n" for i, (a, b, text) in enumerate(cues, start=1))


def vtt(cues: list[tuple[float, float, str]]) -> str:
    return "WEBVTT\n\n" + "".join(f"{_stamp(a, '.')} --> {_stamp(b, '.')}\n{text}\n\n" for a, b, text in cues)


@pytest.fixture(scope="session")
def local_ray():
    """One in-process Ray for the whole test session (starting it costs seconds)."""
    from pipeline.run.runner import RayOptions, init_ray

    init_ray(RayOptions(num_cpus=2, progress=False))
    yield
    import ray

    ray.shutdown()


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory, local_ray):
    """The corpus job on the bundled sample with every stage and the real Whisper base: once per test session."""
    from jobs.corpus import run

    out = tmp_path_factory.mktemp("sample") / "out"
    summary = run(["--out", str(out), "--quiet"])
    return out, summary
