"""Reject transcripts whose length cannot match their audio: too many or too few characters per second.

Run after decoding (it needs the audio's duration). Speech carries roughly 10-20 characters per second in
alphabetic scripts and 3-8 in Chinese or Japanese; far more is a transcript of something else (or a
hallucination loop), far less a transcript that covers a small part of the recording.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.schema import RejectReason
from pipeline.stage import Reject, map_rows


@dataclass(frozen=True)
class SpeakingRateOptions:
    enabled: bool = True
    max_chars_per_second: float = 40.0  # NeMo Curator flags ASR output above 40 as hallucination
    min_chars_per_second: float = 0.5  # below: the transcript covers a sliver of the audio
    min_seconds: float = 2.0  # shorter recordings are not judged (their pauses dominate)

    def __post_init__(self) -> None:
        if not 0 <= self.min_chars_per_second < self.max_chars_per_second:
            raise ValueError("need 0 <= min_chars_per_second < max_chars_per_second")


def chars_per_second(text: str, duration_ms: int) -> float:
    return sum(not ch.isspace() for ch in text) / (duration_ms / 1000)


def check_speaking_rate(batch: pa.Table, options: SpeakingRateOptions) -> pa.Table:
    def judge(row: dict[str, Any]) -> dict[str, Any] | Reject:
        duration = row["duration_ms"]
        if duration < options.min_seconds * 1000:
            return row
        rate = chars_per_second(row.get("transcript_text") or "", duration)
        if rate > options.max_chars_per_second or rate < options.min_chars_per_second:
            return Reject(
                RejectReason.IMPLAUSIBLE_CHAR_RATE,
                f"{rate:.1f} characters per second over {duration / 1000:.1f} s of audio "
                f"(plausible: {options.min_chars_per_second:g} to {options.max_chars_per_second:g})",
            )
        return row

    return map_rows(batch, judge)
