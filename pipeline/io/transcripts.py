"""Transcript formats, both ways: SRT, WebVTT, Whisper-style JSON and plain text.

Reading (corpus and compare inputs) gives cues in integer milliseconds. Parsing is lenient about layout (missing
hours, cue settings, tags, missing final blank line, CRLF) and strict about meaning: text we cannot decode with
certainty is refused rather than guessed. Writing (``render``: per-file outputs of ``wspsr transcribe``) follows
openai-whisper's command-line writers, and the JSON it writes reads back here.
"""

from __future__ import annotations

import codecs
import html
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pipeline.io import storage
from pipeline.schema import RejectReason

TIMED_FORMATS = ("srt", "vtt", "json")
FORMAT_BY_SUFFIX = {".srt": "srt", ".vtt": "vtt", ".json": "json", ".txt": "txt"}


@dataclass(frozen=True)
class Cue:
    start_ms: int
    end_ms: int
    text: str


@dataclass(frozen=True)
class Transcript:
    format: str
    text: str  # the whole transcript as written (cue texts joined for timed formats)
    cues: tuple[Cue, ...] | None  # None: untimed
    invalid_cues: int = 0  # cues whose times could not be read at all (NaN, garbage)
    language: str | None = None  # when the file itself declares one (Whisper JSON)


class TranscriptError(ValueError):
    """A transcript that cannot be used; ``reason`` becomes the reject code."""

    def __init__(self, reason: RejectReason, detail: str):
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def decode_text(data: bytes, encoding: str | None = None) -> str:
    """Bytes to text when the encoding is certain: a BOM, valid UTF-8, or an encoding the source declares."""
    if encoding:
        try:
            text = data.decode(encoding)
        except (LookupError, UnicodeDecodeError) as exc:
            raise TranscriptError(RejectReason.BAD_ENCODING, f"declared encoding {encoding!r} failed: {exc}") from None
    else:
        for bom, name in _BOMS:
            if data.startswith(bom):
                try:
                    text = data[len(bom) :].decode(name)
                except UnicodeDecodeError as exc:
                    raise TranscriptError(RejectReason.BAD_ENCODING, f"{name} BOM but invalid data: {exc}") from None
                break
        else:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TranscriptError(
                    RejectReason.BAD_ENCODING,
                    f"not UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start}) and no BOM; "
                    "re-encode as UTF-8 or declare \"encoding\" in the manifest",
                ) from None
    if "\x00" in text:
        raise TranscriptError(RejectReason.BAD_ENCODING, "NUL characters in text (UTF-16 without a BOM?)")
    return text.replace("\r\n", "\n").replace("\r", "\n")


_TAG = re.compile(r"<[^>\n]*>|\{\\[^}\n]*\}")  # HTML/VTT tags, ASS overrides like {\an8}
_SPACE = re.compile(r"\s+")


def clean_cue_text(text: str) -> str:
    """Cue markup off, entities decoded, line breaks and runs of spaces to one space."""
    return _SPACE.sub(" ", html.unescape(_TAG.sub("", text))).strip()


_TIME = r"(?:(\d+):)?(\d{1,2}):(\d{1,2})(?:[,.](\d{1,3}))?"
_TIMING_LINE = re.compile(rf"^\s*{_TIME}\s*-->\s*{_TIME}")


def _to_ms(hours: str | None, minutes: str, seconds: str, fraction: str | None) -> int:
    frac = int((fraction or "0").ljust(3, "0"))
    return ((int(hours or 0) * 60 + int(minutes)) * 60 + int(seconds)) * 1000 + frac


def _parse_timing(line: str) -> tuple[int, int] | None:
    match = _TIMING_LINE.match(line)
    if not match:
        return None
    g = match.groups()
    return _to_ms(*g[:4]), _to_ms(*g[4:])


def _blocks(text: str) -> list[list[str]]:
    blocks, current = [], []
    for line in text.split("\n"):
        if line.strip():
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    return blocks


def _cues_from_blocks(blocks: list[list[str]]) -> tuple[list[Cue], int]:
    """Shared by SRT and VTT: a block's first ``-->`` line times it, the lines after are its text."""
    cues: list[Cue] = []
    invalid = 0
    for block in blocks:
        timing_at = next((i for i, line in enumerate(block) if "-->" in line), None)
        if timing_at is None:
            # Text that continues the previous cue across a stray blank line; a lone number is an SRT index.
            if cues and not (len(block) == 1 and block[0].strip().isdigit()):
                last = cues[-1]
                cues[-1] = Cue(last.start_ms, last.end_ms, clean_cue_text(last.text + " " + " ".join(block)))
            continue
        times = _parse_timing(block[timing_at])
        if times is None:
            invalid += 1
            continue
        text = clean_cue_text(" ".join(block[timing_at + 1 :]))
        cues.append(Cue(times[0], times[1], text))
    return cues, invalid


def parse_srt(text: str) -> Transcript:
    cues, invalid = _cues_from_blocks(_blocks(text))
    return _timed("srt", cues, invalid)


def parse_vtt(text: str) -> Transcript:
    text = text.lstrip("\ufeff")
    if not text.startswith("WEBVTT"):
        raise TranscriptError(RejectReason.BAD_TRANSCRIPT_FORMAT, "WebVTT file does not start with 'WEBVTT'")
    blocks = _blocks(text)[1:]  # the header block (WEBVTT line and header metadata)
    blocks = [b for b in blocks if not re.match(r"^(NOTE|STYLE|REGION)(\s|$)", b[0])]
    cues, invalid = _cues_from_blocks(blocks)
    return _timed("vtt", cues, invalid)


def parse_whisper_json(text: str) -> Transcript:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TranscriptError(RejectReason.BAD_TRANSCRIPT_FORMAT, f"invalid JSON: {exc}") from None
    segments = doc.get("segments") if isinstance(doc, dict) else doc
    language = doc.get("language") if isinstance(doc, dict) and isinstance(doc.get("language"), str) else None
    if segments is None and isinstance(doc, dict) and isinstance(doc.get("text"), str):
        return Transcript("json", doc["text"].strip(), None, language=language)
    if not isinstance(segments, list):
        raise TranscriptError(RejectReason.BAD_TRANSCRIPT_FORMAT, "JSON has no 'segments' list (Whisper format)")
    cues: list[Cue] = []
    invalid = 0
    for seg in segments:
        try:
            start, end, seg_text = float(seg["start"]), float(seg["end"]), seg["text"]
        except (KeyError, TypeError, ValueError):
            invalid += 1
            continue
        if not (math.isfinite(start) and math.isfinite(end)) or not isinstance(seg_text, str):
            invalid += 1
            continue
        cues.append(Cue(round(start * 1000), round(end * 1000), clean_cue_text(seg_text)))
    return _timed("json", cues, invalid, language)


def _timed(fmt: str, cues: list[Cue], invalid: int, language: str | None = None) -> Transcript:
    joined = " ".join(c.text for c in cues if c.text)
    if not joined.strip():
        if invalid and not cues:
            raise TranscriptError(RejectReason.BAD_TRANSCRIPT_FORMAT, f"no readable cue ({invalid} with unreadable times)")
        raise TranscriptError(RejectReason.EMPTY_TRANSCRIPT, f"{fmt} transcript has no cue with text")
    return Transcript(fmt, joined, tuple(cues), invalid, language)


_WHISPER_CLI_LINE = re.compile(rf"^\s*\[{_TIME}\s*-->\s*{_TIME}\]\s?(.*)$")


def parse_whisper_cli(text: str) -> Transcript | None:
    """The Whisper command line's own output (``[00:00:04.920 --> 00:00:07.480]   Thanks for ...`` per line) as
    timed cues, format ``whisper_cli``; None when not every non-blank line is such a line (plain text stays text)."""
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return None
    cues: list[Cue] = []
    for line in lines:
        match = _WHISPER_CLI_LINE.match(line)
        if match is None:
            return None
        g = match.groups()
        cues.append(Cue(_to_ms(*g[:4]), _to_ms(*g[4:8]), clean_cue_text(g[8])))
    return _timed("whisper_cli", cues, 0)


def parse_transcript(text: str, fmt: str) -> Transcript:
    if fmt == "srt":
        return parse_srt(text)
    if fmt == "vtt":
        return parse_vtt(text)
    if fmt == "json":
        return parse_whisper_json(text)
    if fmt in ("txt", "inline"):
        if not text.strip():
            raise TranscriptError(RejectReason.EMPTY_TRANSCRIPT, "transcript is empty or whitespace only")
        return parse_whisper_cli(text) or Transcript(fmt, text.strip(), None)
    raise TranscriptError(RejectReason.BAD_TRANSCRIPT_FORMAT, f"unknown transcript format {fmt!r}")


def transcript_format(path: str | Path) -> str | None:
    return FORMAT_BY_SUFFIX.get(Path(path).suffix.lower())


def read_transcript(path: str | Path, max_bytes: int, encoding: str | None = None) -> Transcript:
    """``path`` is a local path or a URI (``s3://...``)."""
    fmt = transcript_format(path)
    if fmt is None:
        raise TranscriptError(RejectReason.BAD_TRANSCRIPT_FORMAT, f"unknown transcript extension {Path(path).suffix!r}")
    try:
        if storage.is_uri(path):
            size = storage.info(str(path)).size
            data = storage.read_bytes(str(path)) if size is not None and size <= max_bytes else b""
        else:
            size = Path(path).stat().st_size
            data = Path(path).read_bytes() if size <= max_bytes else b""
        if size is None:
            raise FileNotFoundError(2, "No such file or object", str(path))
        if size > max_bytes:
            raise TranscriptError(RejectReason.TRANSCRIPT_TOO_LARGE, f"{size} bytes > limit {max_bytes}")
    except OSError as exc:
        raise TranscriptError(RejectReason.TRANSCRIPT_UNREADABLE, f"{type(exc).__name__}: {exc.strerror or exc}") from None
    if not data.strip():
        raise TranscriptError(RejectReason.EMPTY_TRANSCRIPT, "transcript file is empty or whitespace only")
    return parse_transcript(decode_text(data, encoding), fmt)

# --- writing ---------------------------------------------------------------------------------------------

OUTPUT_FORMATS = ("srt", "vtt", "json", "txt")  # what render() writes


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


def to_json(segments: Sequence[dict[str, Any]], language: str | None, source: str, languages: Sequence[str] | None = None) -> str:
    """Whisper's JSON layout (``text``, ``segments`` with seconds, ``language``), which the corpus job reads back;
    plus the file's ``languages`` (most speech first) and each segment's ``language`` and ``channel`` when known."""
    doc = {
        "source": source,
        "language": language,
        "languages": list(languages) if languages else ([language] if language else []),
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
                **{key: s[key] for key in ("language", "language_prob", "channel") if s.get(key) is not None},
            }
            for i, s in enumerate(segments)
        ],
    }
    return json.dumps(doc, ensure_ascii=False, indent=1) + "\n"


def render(fmt: str, segments: Sequence[dict[str, Any]], language: str | None, source: str, languages: Sequence[str] | None = None) -> str:
    if fmt == "srt":
        return to_srt(segments)
    if fmt == "vtt":
        return to_vtt(segments)
    if fmt == "txt":
        return to_txt(segments)
    if fmt == "json":
        return to_json(segments, language, source, languages)
    raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(OUTPUT_FORMATS)}")
