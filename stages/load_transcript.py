"""Read each source's transcript (file or inline text) into cues, or reject it with the reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.io.transcripts import TranscriptError, parse_transcript, read_transcript
from pipeline.limits import TimeLimitExceeded, time_limit
from pipeline.schema import RejectReason
from pipeline.stage import Reject, map_rows


@dataclass(frozen=True)
class TranscriptOptions:
    max_mb: float = 20.0  # larger transcript files are refused unread (a subtitle file is kilobytes)
    # Wall clock per source for reading and parsing its transcript (megabytes parse in well under a second); a
    # source over it is rejected (stage_timeout), not retried: a transcript that is slow to parse is slow every time.
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_mb <= 0:
            raise ValueError("max_mb must be positive")
        if not self.timeout_s > 0:
            raise ValueError("timeout_s must be positive")


def load_transcript(batch: pa.Table, options: TranscriptOptions) -> pa.Table:
    return map_rows(batch, lambda row: _load_in_time(row, options))


def _load_in_time(row: dict[str, Any], options: TranscriptOptions) -> dict[str, Any] | Reject:
    try:
        with time_limit(options.timeout_s):
            return _load(row, options)
    except TimeLimitExceeded:
        limit = f"transcript.timeout_s={options.timeout_s:g} s"
        return Reject(RejectReason.STAGE_TIMEOUT, f"load_transcript took longer than {limit}")


def _load(row: dict[str, Any], options: TranscriptOptions) -> dict[str, Any] | Reject:
    max_bytes = int(options.max_mb * 1024 * 1024)
    try:
        if row.get("inline_text") is not None:
            if len(row["inline_text"].encode("utf-8")) > max_bytes:
                return Reject(RejectReason.TRANSCRIPT_TOO_LARGE, f"inline text over {options.max_mb:g} MB")
            transcript = parse_transcript(row["inline_text"], "inline")
        else:
            transcript = read_transcript(row["transcript_path"], max_bytes, row.get("transcript_encoding"))
    except TranscriptError as err:
        return Reject(err.reason, err.detail, transient=err.transient)
    cues = None
    if transcript.cues is not None:
        cues = [{"start_ms": c.start_ms, "end_ms": c.end_ms, "text": c.text} for c in transcript.cues]
    return dict(
        row,
        transcript_format=transcript.format,
        transcript_text=transcript.text,
        cues=cues,
        invalid_cues=transcript.invalid_cues,
        language=row.get("language") or transcript.language,
    )
