"""Keep a source only when its speech and its transcript are in the same language, or it is an X->en pair.

Rule (Whisper paper §2.1, on the probability rather than only the top answer, because Whisper splits its
belief between close languages):
1. The audio model gives the transcript's language at least ``min_transcript_language_prob``: keep,
   ``task = transcribe``, ``language`` = the transcript's language.
2. Otherwise, an English transcript whose audio is another language with at least ``min_translate_prob``:
   keep as an X->en translation example, ``task = translate``, ``language`` = the audio's language.
3. Otherwise reject ``language_mismatch``; a transcript whose language nobody knows (no declaration, fastText
   unsure) takes the audio's language when the model is sure of it, else ``language_unknown``.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from pipeline.schema import RejectReason
from pipeline.stage import Reject, map_rows
from stages.languages import FALLBACK, LanguageOptions


def _describe(probs: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in sorted(probs.items(), key=lambda kv: -kv[1])[:3])


def decide_language(row: dict[str, Any], options: LanguageOptions) -> dict[str, Any] | Reject:
    probs: dict[str, float] = json.loads(row.get("audio_language_probs") or "{}")
    audio, audio_prob = row.get("audio_language"), row.get("audio_language_prob") or 0.0
    text = row.get("language")
    if text is None:
        if audio and audio_prob >= options.min_translate_prob:
            return dict(row, language=audio, task="transcribe")
        return Reject(RejectReason.LANGUAGE_UNKNOWN, f"no declared language, text language unsure; audio: {_describe(probs)}")
    p_text = probs.get(text, probs.get(FALLBACK.get(text, text), 0.0))
    if p_text >= options.min_transcript_language_prob:
        return dict(row, task="transcribe")
    if text == "en" and audio and audio != "en" and audio_prob >= options.min_translate_prob:
        return dict(row, language=audio, task="translate")
    return Reject(
        RejectReason.LANGUAGE_MISMATCH,
        f"transcript {text} (text ID {row.get('transcript_language')} {row.get('transcript_language_prob') or 0:.2f}); "
        f"audio gives {text} {p_text:.3f} (need {options.min_transcript_language_prob:g}); audio: {_describe(probs)}",
    )


def agree_language(batch: pa.Table, options: LanguageOptions) -> pa.Table:
    return map_rows(batch, lambda row: decide_language(row, options))
