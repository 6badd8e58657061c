"""The pseudo-label check (the paper's second pass, distil-whisper's WER gate): Whisper's transcript of each source
against the transcript it came with, as WER and CER after Whisper's text normalisation.

WER is the measure for languages written with spaces, CER for those without (Chinese, Japanese, Thai, ...); both
are stored, under the language the source declares (else the one Whisper detected). Segments the hallucination
guard flagged are left out of the hypothesis.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.eval.metrics import char_errors, word_errors
from pipeline.stage import map_rows
from stages.languages import base_language


@dataclass(frozen=True)
class CompareOptions:
    group_by: str = "dir"  # how sources are grouped for the ranking: "dir" (their folder) or a manifest field, e.g. "uploader"


def source_group(row: dict[str, Any], group_by: str) -> str:
    if group_by == "dir":
        return os.path.dirname(row["source"]) or "."
    value = json.loads(row.get("metadata") or "{}").get(group_by)
    return str(value) if value is not None else f"(no {group_by})"


def compare_with_reference(batch: pa.Table, options: CompareOptions) -> pa.Table:
    def compare(row: dict[str, Any]) -> dict[str, Any]:
        reference = row.get("transcript_text")
        if reference is None:
            return row
        hypothesis = " ".join(s["text"] for s in row.get("segments") or [] if not s["flag"])
        language = base_language(row.get("source_language")) or row.get("language")  # the reference's language
        english = language == "en"
        w_err, w_ref = word_errors(reference, hypothesis, english)
        c_err, c_ref = char_errors(reference, hypothesis, english)
        return dict(
            row,
            group=source_group(row, options.group_by),
            language=language,
            word_errors=w_err, reference_words=w_ref, wer=w_err / max(w_ref, 1),
            char_errors=c_err, reference_chars=c_ref, cer=c_err / max(c_ref, 1),
        )

    return map_rows(batch, compare)
