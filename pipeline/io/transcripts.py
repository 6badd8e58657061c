"""Transcript formats, both ways: SRT, WebVTT, Whisper-style JSON and plain text.

Reading (corpus and compare inputs) gives cues in integer milliseconds. Parsing is lenient about layout (missing
hours, cue settings, tags, missing final blank line, CRLF) and strict about meaning: text we cannot decode with
certainty is refused rather than guessed. A transcript is untrusted input, so reading does bounded work: only
regular files are opened and at most the size limit read, every pattern runs in linear time, times beyond
``MAX_CUE_MS`` make an invalid cue, and JSON deeper than ``MAX_JSON_DEPTH`` or with numbers longer than
``MAX_JSON_NUMBER_CHARS`` is refused before it is parsed; whatever is wrong ends as a ``TranscriptError``.
Writing (``render``: per-file outputs of ``wspsr transcribe``) follows openai-whisper's command-line writers, and
the JSON it writes reads back here.
"""

from __future__ import annotations

import codecs
import errno
import html
import json
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow.fs as pafs

from pipeline.io import storage
from pipeline.retry import retry_transient
from pipeline.schema import RejectReason

TIMED_FORMATS = ("srt", "vtt", "json")
FORMAT_BY_SUFFIX = {".srt": "srt", ".vtt": "vtt", ".json": "json", ".txt": "txt"}

MAX_CUE_MS = 1000 * 3600 * 1000  # 1,000 hours: beyond any recording, far inside the int64 the cue rows store
MAX_JSON_DEPTH = 100  # Whisper JSON nests 5 deep (word timings); json.loads recurses once per level
MAX_JSON_NUMBER_CHARS = 100  # a time is a short decimal; Python's int() refuses over 4,300 digits with ValueError


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
    """A transcript that cannot be used; ``reason`` becomes the reject code, ``transient`` says a retry may pass."""

    def __init__(self, reason: RejectReason, detail: str, transient: bool = False):
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.transient = transient


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


# HTML/VTT tags, ASS overrides like {\an8}. A tag cannot contain its own opening character, so a scan from an
# unclosed one stops at the next opener: linear, where "up to the closer" rescans the rest of the line per opener.
_TAG = re.compile(r"<[^<>\n]*>|\{\\[^{}\n]*\}")
_SPACE = re.compile(r"\s+")


def clean_cue_text(text: str) -> str:
    """Cue markup off, entities decoded, line breaks and runs of spaces to one space."""
    return _SPACE.sub(" ", html.unescape(_TAG.sub("", text))).strip()


_TIME = r"(?:(\d+):)?(\d{1,2}):(\d{1,2})(?:[,.](\d{1,3}))?"
_TIMING_LINE = re.compile(rf"^\s*{_TIME}\s*-->\s*{_TIME}")


def _to_ms(hours: str | None, minutes: str, seconds: str, fraction: str | None) -> int | None:
    """None beyond ``MAX_CUE_MS`` (an hour field of any length matches the pattern)."""
    if hours is not None and len(hours.lstrip("0")) > len(str(MAX_CUE_MS // 3_600_000)):
        return None
    frac = int((fraction or "0").ljust(3, "0"))
    ms = ((int(hours or 0) * 60 + int(minutes)) * 60 + int(seconds)) * 1000 + frac
    return ms if ms <= MAX_CUE_MS else None


def _parse_timing(line: str) -> tuple[int, int] | None:
    match = _TIMING_LINE.match(line)
    if not match:
        return None
    g = match.groups()
    start, end = _to_ms(*g[:4]), _to_ms(*g[4:8])
    return None if start is None or end is None else (start, end)


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
    """Shared by SRT and VTT: a block's first ``-->`` line times it, the lines after are its text. A cue's text
    lines are gathered first and cleaned once, so any number of continuation blocks costs linear time."""
    timed: list[tuple[int, int, list[str]]] = []
    invalid = 0
    for block in blocks:
        timing_at = next((i for i, line in enumerate(block) if "-->" in line), None)
        if timing_at is None:
            # Text that continues the previous cue across a stray blank line; a lone number is an SRT index.
            if timed and not (len(block) == 1 and block[0].strip().isdigit()):
                timed[-1][2].extend(block)
            continue
        times = _parse_timing(block[timing_at])
        if times is None:
            invalid += 1
            continue
        timed.append((times[0], times[1], block[timing_at + 1 :]))
    return [Cue(start, end, clean_cue_text(" ".join(lines))) for start, end, lines in timed], invalid


def parse_srt(text: str) -> Transcript:
    cues, invalid = _cues_from_blocks(_blocks(text))
    return _timed("srt", cues, invalid)


_VTT_NON_CUE = re.compile(r"(?:NOTE|STYLE|REGION)(?:\s|$)")


def parse_vtt(text: str) -> Transcript:
    text = text.lstrip("\ufeff")
    if not text.startswith("WEBVTT"):
        raise TranscriptError(RejectReason.BAD_TRANSCRIPT_FORMAT, "WebVTT file does not start with 'WEBVTT'")
    blocks = _blocks(text)[1:]  # the header block (WEBVTT line and header metadata)
    blocks = [b for b in blocks if not _VTT_NON_CUE.match(b[0])]
    cues, invalid = _cues_from_blocks(blocks)
    return _timed("vtt", cues, invalid)


# What is left of JSON text once strings (closed or not: the closing quote is optional, so a match never fails and
# rescans) and everything but brackets are taken out: the brackets, whose running count is the nesting depth.
_JSON_NOT_BRACKETS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[^\[\]{}"]+', re.DOTALL)


def _json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects, outside strings; linear time, no recursion."""
    brackets = np.frombuffer(_JSON_NOT_BRACKETS.sub("", text).encode("ascii"), np.uint8)
    if not len(brackets):
        return 0
    steps = np.where((brackets == ord("[")) | (brackets == ord("{")), np.int8(1), np.int8(-1))
    return int(np.cumsum(steps, dtype=np.int32).max())


class _JsonNumberTooLong(ValueError):
    pass


def _bounded_number(parse):
    """``json.loads`` hands each number literal to its hook: refusing long ones keeps ``int()`` from raising on (or
    spending time over) thousands of digits."""

    def parse_bounded(literal: str):
        if len(literal) > MAX_JSON_NUMBER_CHARS:
            raise _JsonNumberTooLong(f"a number of {len(literal)} characters (limit {MAX_JSON_NUMBER_CHARS})")
        return parse(literal)

    return parse_bounded


_parse_int, _parse_float = _bounded_number(int), _bounded_number(float)


def _load_json(text: str) -> Any:
    """``json.loads`` with bounded depth and number size; anything it cannot read is a format reject. NaN and
    Infinity still parse: they are one segment's unreadable time (an invalid cue), not a broken file."""
    depth = _json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise TranscriptError(RejectReason.BAD_TRANSCRIPT_FORMAT, f"JSON nested {depth} deep (limit {MAX_JSON_DEPTH})")
    try:
        return json.loads(text, parse_int=_parse_int, parse_float=_parse_float)
    except _JsonNumberTooLong as exc:
        raise TranscriptError(RejectReason.BAD_TRANSCRIPT_FORMAT, f"JSON with {exc}") from None
    except (ValueError, RecursionError, OverflowError) as exc:  # ValueError includes JSONDecodeError
        detail = f"invalid JSON: {type(exc).__name__}: {exc}"
        raise TranscriptError(RejectReason.BAD_TRANSCRIPT_FORMAT, detail) from None


def _seconds_to_ms(value: Any) -> int | None:
    """A JSON time in seconds as milliseconds; None when it is not a finite number within ``MAX_CUE_MS``."""
    if isinstance(value, str) and len(value) > MAX_JSON_NUMBER_CHARS:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(seconds) or abs(seconds) * 1000 > MAX_CUE_MS:
        return None
    return round(seconds * 1000)


def parse_whisper_json(text: str) -> Transcript:
    doc = _load_json(text)
    segments = doc.get("segments") if isinstance(doc, dict) else doc
    language = doc.get("language") if isinstance(doc, dict) and isinstance(doc.get("language"), str) else None
    if segments is None and isinstance(doc, dict) and isinstance(doc.get("text"), str):
        return Transcript("json", doc["text"].strip(), None, language=language)
    if not isinstance(segments, list):
        raise TranscriptError(RejectReason.BAD_TRANSCRIPT_FORMAT, "JSON has no 'segments' list (Whisper format)")
    cues: list[Cue] = []
    invalid = 0
    for seg in segments:
        if not isinstance(seg, dict):
            invalid += 1
            continue
        start, end, seg_text = _seconds_to_ms(seg.get("start")), _seconds_to_ms(seg.get("end")), seg.get("text")
        if start is None or end is None or not isinstance(seg_text, str):
            invalid += 1
            continue
        cues.append(Cue(start, end, clean_cue_text(seg_text)))
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
    invalid = 0
    for line in lines:
        match = _WHISPER_CLI_LINE.match(line)
        if match is None:
            return None
        g = match.groups()
        start, end = _to_ms(*g[:4]), _to_ms(*g[4:8])
        if start is None or end is None:
            invalid += 1
            continue
        cues.append(Cue(start, end, clean_cue_text(g[8])))
    return _timed("whisper_cli", cues, invalid)


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
    """``path`` is a local path or a URI (``s3://...``). A read error that may pass is tried again first."""
    fmt = transcript_format(path)
    if fmt is None:
        raise TranscriptError(RejectReason.BAD_TRANSCRIPT_FORMAT, f"unknown transcript extension {Path(path).suffix!r}")
    try:
        data = retry_transient(lambda: _read_bounded(path, max_bytes), _is_transient_read_error)
    except OSError as exc:
        raise TranscriptError(RejectReason.TRANSCRIPT_UNREADABLE, f"{type(exc).__name__}: {exc.strerror or exc}",
                              transient=_is_transient_read_error(exc)) from None
    if not data.strip():
        raise TranscriptError(RejectReason.EMPTY_TRANSCRIPT, "transcript file is empty or whitespace only")
    return parse_transcript(decode_text(data, encoding), fmt)


# Errors that say the file is not there or not ours to read: the same on every try. Any other OSError (EIO, a
# timeout, a reset connection, an object store's error without an errno) may pass.
_PERMANENT_ERRNOS = frozenset({
    errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.ELOOP, errno.ENAMETOOLONG,
    errno.EINVAL, errno.ENXIO, errno.ENODEV,
})


def _is_transient_read_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno not in _PERMANENT_ERRNOS


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
)


def _not_regular(mode: int) -> TranscriptError:
    kind = next((name for is_kind, name in _FILE_KINDS if is_kind(mode)), "not a file")
    return TranscriptError(RejectReason.TRANSCRIPT_UNREADABLE, f"not a regular file ({kind})")


def _too_large(size: int, max_bytes: int) -> TranscriptError:
    return TranscriptError(RejectReason.TRANSCRIPT_TOO_LARGE, f"{size} bytes > limit {max_bytes}")


def _read_bounded(path: str | Path, max_bytes: int) -> bytes:
    """At most ``max_bytes`` of a regular file or object; a named pipe, device or folder is never opened (reading
    one could block for ever), and the bytes read, not the size reported, decide what is too large."""
    if storage.is_uri(path):
        found = storage.info(str(path))
        if found.type == pafs.FileType.NotFound:
            raise FileNotFoundError(errno.ENOENT, "No such file or object", str(path))
        if found.type != pafs.FileType.File:
            raise TranscriptError(RejectReason.TRANSCRIPT_UNREADABLE, "not a regular file (a directory)")
        if found.size is not None and found.size > max_bytes:
            raise _too_large(found.size, max_bytes)
        filesystem, inner = storage.resolve(str(path))
        with filesystem.open_input_stream(inner) as stream:
            data = stream.read(max_bytes + 1)
    else:
        status = os.stat(path)
        if not stat.S_ISREG(status.st_mode):
            raise _not_regular(status.st_mode)
        if status.st_size > max_bytes:
            raise _too_large(status.st_size, max_bytes)
        # Should the name become a pipe or a terminal after the check, opening it neither waits for a writer
        # (O_NONBLOCK) nor takes the terminal (O_NOCTTY); fstat then refuses it.
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags)
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                raise _not_regular(status.st_mode)
            data = _read_up_to(fd, max_bytes + 1)
        finally:
            os.close(fd)
    if len(data) > max_bytes:
        raise TranscriptError(RejectReason.TRANSCRIPT_TOO_LARGE, f"over the limit of {max_bytes} bytes")
    return data


def _read_up_to(fd: int, limit: int) -> bytes:
    parts, left = [], limit
    while left > 0:
        part = os.read(fd, min(left, 1 << 20))
        if not part:
            break
        parts.append(part)
        left -= len(part)
    return b"".join(parts)

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
