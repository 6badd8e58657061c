"""Test data made in code (tones and silence through numpy and ``wave``, SRT/VTT strings, files through the
pipeline's own ffmpeg) plus the one real recording, JFK."""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np

from pipeline.io.media import ffmpeg_binary

DATA = Path(__file__).resolve().parent.parent / "data"
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


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_binary(), "-nostdin", "-y", "-loglevel", "error", *args], check=True, timeout=60)


def _stamp(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def srt(cues: list[tuple[float, float, str]]) -> str:
    return "".join(f"{i}\n{_stamp(a, ',')} --> {_stamp(b, ',')}\n{text}\n\n" for i, (a, b, text) in enumerate(cues, start=1))


def vtt(cues: list[tuple[float, float, str]]) -> str:
    return "WEBVTT\n\n" + "".join(f"{_stamp(a, '.')} --> {_stamp(b, '.')}\n{text}\n\n" for a, b, text in cues)
