"""Transcribe every speech window of a batch of files with Whisper: one model per actor, windows of many files per
forward pass, Whisper's safeguards per window, a hallucination guard per segment, segments stitched back in order.

Each file's language is the one given, else the one the source declares, else detected once (averaged over up to
``language_windows`` speech windows spread over it); its windows are then decoded with that language, batched with
other files' windows of the same language. Scores (avg_logprob, compression_ratio, no_speech_prob, temperature) are Whisper's, per
decoded window, and are stored on each of the window's segments.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import text
from pipeline.whisper.engines import Engine, DecodingOptions, WindowTranscript, load_engine
from pipeline.schema import RejectReason, table_from_rows
from stages.score_windows import average_probabilities, spread
from stages.languages import base_language


@dataclass(frozen=True)
class WhisperOptions:
    """Which model runs where and how work is batched; how it decodes is ``DecodingOptions`` ([decoding])."""

    engine: str = "faster-whisper"  # or openai-whisper
    model: str = "base"  # name or path, resolved offline
    device: str | None = None  # default: cuda when present, else cpu
    threads: int = 0  # CPU threads per model; 0: all cores of the node
    compute_type: str | None = None  # faster-whisper only: None = int8 on CPU, float16 on GPU; float32 is slower, exact
    use_source_language: bool = True  # a language the source declares (manifest, .xx.srt) is used, not detected
    batch_windows: int = 8  # windows per forward pass (16 or more on a GPU)
    batch_files: int = 16  # files handed to a model actor at once (their windows are batched together)
    language_windows: int = 3  # speech windows per file for language detection

    def __post_init__(self) -> None:
        if self.batch_windows < 1 or self.language_windows < 1 or self.batch_files < 1:
            raise ValueError("batch_windows, batch_files and language_windows must be at least 1")


@dataclass(frozen=True)
class HallucinationOptions:
    enabled: bool = True
    ngram: int = 3  # words (characters x2 in scripts without spaces) per repeated n-gram
    max_ngram_repeats: int = 3  # an n-gram seen more often than this in one segment: a loop
    min_unique_word_share: float = 0.4  # segments of 10+ words with fewer distinct words (distil-whisper's rule)
    max_word_chars: int = 40  # a "word" longer than this is a loop of characters
    # Phrases Whisper invents over silence (subtitle credits, video outros), flagged when no_speech_prob is high.
    phrases: tuple[str, ...] = (
        "thank you for watching", "thanks for watching", "please subscribe", "subtitles by", "amara.org",
        "ご視聴ありがとうございました", "字幕", "продолжение следует",
    )
    phrase_no_speech_prob: float = 0.3


@dataclass(frozen=True)
class TranscribeStageOptions:
    whisper: WhisperOptions
    decoding: DecodingOptions  # language None: the source's declared language, else detected per file
    hallucination: HallucinationOptions


def load_transcriber(options: TranscribeStageOptions) -> Engine:
    return load_engine(options.whisper.engine, options.whisper.model, options.whisper.device, options.whisper.threads,
                       options.whisper.compute_type)


def hallucination_flag(segment: dict[str, Any], options: HallucinationOptions) -> str | None:
    """Why a segment looks invented by the model rather than heard, or None."""
    segment_text = segment["text"]
    spaceless = text.is_spaceless(segment_text)
    counts = text.ngram_counts(text.repetition_units(segment_text, spaceless), options.ngram * (2 if spaceless else 1))
    if counts and max(counts.values()) > options.max_ngram_repeats:
        return "repeated_ngram"
    words = text.repetition_units(segment_text, spaceless=False)
    if not spaceless and len(words) >= 10 and len(set(words)) / len(words) < options.min_unique_word_share:
        return "few_distinct_words"
    if not spaceless and any(len(w) > options.max_word_chars for w in words):
        return "overlong_word"
    lowered = segment_text.casefold()
    if segment["no_speech_prob"] >= options.phrase_no_speech_prob and any(p in lowered for p in options.phrases):
        return "known_phrase"
    return None


def _segments(window: dict[str, Any], result: WindowTranscript, options: HallucinationOptions) -> list[dict[str, Any]]:
    out = []
    for seg in result.segments:
        start = min(window["start_ms"] + round(seg.start * 1000), window["end_ms"])
        end = min(max(window["start_ms"] + round(seg.end * 1000), start), window["end_ms"])
        segment = {
            "window_index": window["window_index"],
            "start_ms": start,
            "end_ms": end,
            "text": seg.text,
            "avg_logprob": result.avg_logprob,
            "compression_ratio": result.compression_ratio,
            "no_speech_prob": result.no_speech_prob,
            "temperature": result.temperature,
        }
        segment["flag"] = hallucination_flag(segment, options) if options.enabled else None
        out.append(segment)
    return out


def transcribe_windows(batch: pa.Table, options: TranscribeStageOptions, engine: Engine) -> pa.Table:
    whisper, given = options.whisper, options.decoding.language
    rows = batch.to_pylist()
    audio = [[np.frombuffer(w["pcm"], dtype="<i2") for w in row["speech_windows"] or []] for row in rows]

    # 1. one language per file (unless given), averaged over a few speech windows spread over it; a file of one
    #    window is detected in the same encoder pass that transcribes it (its language is left open below).
    languages: list[tuple[str | None, float | None]] = [
        (given or (base_language(row.get("language")) if whisper.use_source_language else None), None) for row in rows
    ]
    if any(language is None for language, _ in languages):
        picks = [
            [{"i": k} for k in spread(list(range(len(row["speech_windows"] or []))), whisper.language_windows)]
            if len(row["speech_windows"] or []) > 1 and languages[r][0] is None else []
            for r, row in enumerate(rows)
        ]
        probe = [audio[r][p["i"]] for r, chosen in enumerate(picks) for p in chosen]
        probs: list[dict[str, float]] = []
        for start in range(0, len(probe), whisper.batch_windows):
            probs.extend(engine.detect_language(probe[start : start + whisper.batch_windows]))
        cursor = 0
        for r, chosen in enumerate(picks):
            own = probs[cursor : cursor + len(chosen)]
            cursor += len(chosen)
            if own:
                combined = average_probabilities(own)
                best = max(sorted(combined), key=combined.get)
                languages[r] = (best, combined[best])

    # 2. every window, batched across files that share a language
    results: dict[tuple[int, int], WindowTranscript] = {}
    by_language: dict[str | None, list[tuple[int, int]]] = {}
    for r, windows in enumerate(audio):
        for k in range(len(windows)):
            by_language.setdefault(languages[r][0], []).append((r, k))
    failed: dict[int, str] = {}
    for language, items in by_language.items():
        decoding = replace(options.decoding, language=language or given)
        for start in range(0, len(items), whisper.batch_windows):
            chunk = items[start : start + whisper.batch_windows]
            try:
                decoded = engine.transcribe([audio[r][k] for r, k in chunk], decoding)
            except (RuntimeError, ValueError):  # e.g. a model producing NaN on one window: find it, spare the rest
                decoded = []
                for r, k in chunk:
                    try:
                        decoded += engine.transcribe([audio[r][k]], decoding)
                    except (RuntimeError, ValueError) as exc:
                        failed.setdefault(r, f"window {k}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                        decoded.append(None)
            for item, result in zip(chunk, decoded):
                results[item] = result

    # 3. stitch each file's segments back in order
    out = []
    for r, row in enumerate(rows):
        if r in failed:
            out.append(dict(row, speech_windows=None, source_language=row.get("language"), reject_reason=RejectReason.TRANSCRIPTION_FAILED.value, reject_detail=failed[r]))
            continue
        windows = row["speech_windows"] or []
        segments = []
        for k, window in enumerate(windows):
            segments.extend(_segments(window, results[(r, k)], options.hallucination))
        language, prob = languages[r]
        if language is None and windows:  # one window, detected while transcribing it
            language, prob = results[(r, 0)].language, results[(r, 0)].language_prob
        out.append(
            dict(
                row,
                speech_windows=None,
                segments=segments,
                source_language=row.get("language"),  # what the source declared, if anything
                language=language,
                language_prob=prob,
                speech_ms=sum(w["end_ms"] - w["start_ms"] for w in windows),
            )
        )
    return table_from_rows(out).drop_columns(["speech_windows"])
