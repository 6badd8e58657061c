"""Drop sources whose transcript disagrees too much with Whisper's (``wspsr transcribe --compare-with``).

distil-whisper keeps a pseudo-label only below 10 % normalised WER; the paper used such error rates to find
partial, misaligned and machine-generated transcripts. Languages without spaces are judged on CER.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.schema import RejectReason
from pipeline.stage import Reject, map_rows
from pipeline.text import SPACELESS_LANGUAGES

@dataclass(frozen=True)
class PseudoLabelOptions:
    comparison: str | None = None  # a `wspsr transcribe --compare-with` output folder; unset: no check
    max_wer: float = 0.3  # above this the source is dropped (high_wer)
    max_cer: float = 0.2  # the same for languages written without spaces


@dataclass(frozen=True)
class PseudoLabelVerdicts:
    """Per source: (source_id, language, wer, cer), read once on the driver from the comparison table."""

    figures: tuple[tuple[str, str, float, float], ...]
    max_wer: float
    max_cer: float

    @functools.cached_property
    def by_source(self) -> dict[str, tuple[str, float, float]]:
        return {source_id: (language, wer, cer) for source_id, language, wer, cer in self.figures}


def check_pseudo_labels(batch: pa.Table, verdicts: PseudoLabelVerdicts) -> pa.Table:
    def judge(row: dict[str, Any]) -> dict[str, Any] | Reject:
        found = verdicts.by_source.get(row["source_id"])
        if found is None:
            return row
        language, wer, cer = found
        if language in SPACELESS_LANGUAGES:
            if cer > verdicts.max_cer:
                return Reject(RejectReason.HIGH_ERROR_RATE, f"Whisper's transcript differs: CER {cer:.1%} (limit {verdicts.max_cer:.0%})")
        elif wer > verdicts.max_wer:
            return Reject(RejectReason.HIGH_ERROR_RATE, f"Whisper's transcript differs: WER {wer:.1%} (limit {verdicts.max_wer:.0%})")
        return row

    return map_rows(batch, judge)
