"""Per-file transcript formats, as openai-whisper's CLI writes them: SRT, WebVTT, JSON and plain text."""

from __future__ import annotations

import json
from typing import Any, Sequence

FORMATS = ("srt", "vtt", "json", "txt")


def _clock(ms: int, separator: str) -> str:
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    seconds, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{separator}{ms:03d}"


def _cue_text(text: str) -> str:
    # "-->" or a blank line inside a cue would end it early in every reader.
    return " ".join(text.replace("-->", "->").split())


def to_srt(segments: Sequence[dict[str, Any]]) -> str:
    return "".join(
        f"{i}\n{_clock(s['start_ms'], ',')} --> {_clock(s['end_ms'], ',')}\n{_cue_text(s['text'])}\n\n"
        for i, s in enumerate(segments, start=1)
    )


def to_vtt(segments: Sequence[dict[str, Any]]) -> str:
    return "WEBVTT\n\n" + "".join(
        f"{_clock(s['start_ms'], '.')} --> {_clock(s['end_ms'], '.')}\n{_cue_text(s['text'])}\n\n" for s in segments
    )


def to_txt(segments: Sequence[dict[str, Any]]) -> str:
    return "".join(f"{s['text'].strip()}\n" for s in segments)


def to_json(segments: Sequence[dict[str, Any]], language: str | None, source: str) -> str:
    """Whisper's JSON layout (``text``, ``segments`` with seconds, ``language``), which the corpus job reads back."""
    doc = {
        "source": source,
        "language": language,
        "text": " ".join(s["text"].strip() for s in segments),
        "segments": [
            {
                "id": i,
                "start": s["start_ms"] / 1000,
                "end": s["end_ms"] / 1000,
                "text": s["text"],
                "avg_logprob": s.get("avg_logprob"),
                "compression_ratio": s.get("compression_ratio"),
                "no_speech_prob": s.get("no_speech_prob"),
                "temperature": s.get("temperature"),
            }
            for i, s in enumerate(segments)
        ],
    }
    return json.dumps(doc, ensure_ascii=False, indent=1) + "\n"


def render(fmt: str, segments: Sequence[dict[str, Any]], language: str | None, source: str) -> str:
    if fmt == "srt":
        return to_srt(segments)
    if fmt == "vtt":
        return to_vtt(segments)
    if fmt == "txt":
        return to_txt(segments)
    if fmt == "json":
        return to_json(segments, language, source)
    raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
