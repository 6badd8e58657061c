"""Transcribe every speech window of a batch of files with Whisper: one model per actor, windows of many files per
forward pass, Whisper's safeguards per window, a hallucination guard per segment, segments stitched back in order.

Language: the one given, else the one the source declares, else each window's own, from the encoder pass that
decodes it (a file may switch language); a window unsure of any language (top probability under
``min_window_language_prob``) is decoded again in its file's language, and one whose second language is strong
(``mixed_window_second_prob``) is tried in two parts cut at its middle pause, kept when the parts' languages
differ. With ``rescore_languages`` = k > 1, each window is decoded under its top k languages and the hypothesis
with the highest log p(language | audio) + avg_logprob is kept (language-aware rescoring). Windows share forward
passes across files, grouped by language.

Segment times (``timings``): by default the text is decoded without timestamp tokens and segments are cut from
word timings aligned on the same encoder output; or from Whisper's timestamp tokens; or one segment per window.

No lost text: when a decode ends before its window does (Whisper's continuation signal, or its text's last
timestamp or aligned word well before the window's end), the rest of the window is decoded again from that point,
batched with the others that need it (``resume_point``), as the sequential loops continue from their last
timestamp.

Scores (avg_logprob, compression_ratio, no_speech_prob, temperature, language, language_prob) are per decode and
stored on each of its segments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline import text
from pipeline.audio import SAMPLE_RATE
from pipeline.whisper.engines import Engine, DecodingOptions, WindowTranscript, load_engine
from pipeline.schema import RejectReason, table_from_rows
from stages.score_windows import average_probabilities
from stages.languages import base_language


TIMINGS = {  # whisper.timings -> the decoding it needs
    "aligned": {"without_timestamps": True, "word_timestamps": True},
    "tokens": {"without_timestamps": False, "word_timestamps": False},
    "none": {"without_timestamps": True, "word_timestamps": False},
}


@dataclass(frozen=True)
class WhisperOptions:
    """Which model runs where, how work is batched, and what the stage decides around Whisper's decode: a language
    per window, resuming a window whose decode stopped early; how it decodes is ``DecodingOptions`` ([decoding])."""

    engine: str = "faster-whisper"  # or openai-whisper
    model: str = "base"  # name or path, resolved offline
    device: str | None = None  # default: cuda when present, else cpu
    threads: int = 0  # CPU threads per model; 0: all cores of the node
    compute_type: str | None = None  # faster-whisper only: None = int8 on CPU, float16 on GPU; float32 is slower, exact
    use_source_language: bool = True  # a language the source declares (manifest, .xx.srt) is used, not detected
    batch_windows: int = 8  # windows per forward pass (16 or more on a GPU)
    batch_files: int = 16  # files handed to a model actor at once (their windows are batched together)
    # A window whose own language ID is below this (it is not sure of any language) is decoded in its file's
    # language (the average over the file's windows) instead of its top guess.
    min_window_language_prob: float = 0.5
    # Language-aware rescoring: decode each window under its top k languages and keep the hypothesis with the
    # highest log p(language | audio) + avg_logprob (length-normalised log p(text | audio, language)). 1: off.
    rescore_languages: int = 1
    # A detected window whose second language has at least this probability may hold two (a switch inside it): it
    # is cut at the pause between its segments nearest its middle and each part decoded in its own language; the
    # parts are kept when their languages differ. 1: off.
    mixed_window_second_prob: float = 0.2
    # A decode that stops before its window ends is decoded again from where its text is complete, batched with the
    # other windows that need it: after Whisper's continuation signal when at least resume_after_signal_s of the
    # window is left, else when at least resume_after_last_timestamp_s is (the window ends at speech: VAD cut it).
    # Where segment times come from. "aligned": the text is decoded without timestamp tokens (as faster-whisper's
    # batched pipeline does: fewer word errors, BENCHMARKS.md) and segments are cut from word timings aligned on the
    # same encoder output; "tokens": Whisper's timestamp tokens, with decodes that stop early resumed (below);
    # "none": one segment per window.
    timings: str = "aligned"
    resume: bool = True
    resume_after_signal_s: float = 0.5
    resume_after_last_timestamp_s: float = 2.0
    max_resumes: int = 3  # passes per window

    def __post_init__(self) -> None:
        if self.timings not in TIMINGS:
            raise ValueError(f"timings must be one of {', '.join(TIMINGS)}, not {self.timings!r}")
        if self.batch_windows < 1 or self.batch_files < 1 or self.rescore_languages < 1 or self.max_resumes < 0:
            raise ValueError("batch_windows, batch_files and rescore_languages must be at least 1, max_resumes at least 0")
        if not 0.0 <= self.min_window_language_prob <= 1.0 or not 0.0 <= self.mixed_window_second_prob <= 1.0:
            raise ValueError("min_window_language_prob and mixed_window_second_prob must be between 0 and 1")
        if self.resume_after_signal_s < 0 or self.resume_after_last_timestamp_s < 0:
            raise ValueError("resume_after_signal_s and resume_after_last_timestamp_s must not be negative")


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


def _segments(window: dict[str, Any], parts: list[tuple[float, WindowTranscript]], options: HallucinationOptions) -> list[dict[str, Any]]:
    """A window's segments in absolute times from its decode and its resumed decodes: (offset in s, result); each
    part's segments end where the next part starts."""
    out = []
    for p, (offset, result) in enumerate(parts):
        until = parts[p + 1][0] if p + 1 < len(parts) else None
        for seg in result.segments:
            if until is not None and offset + seg.start >= until:
                break
            start = min(window["start_ms"] + round((offset + seg.start) * 1000), window["end_ms"])
            end = min(max(window["start_ms"] + round((offset + seg.end) * 1000), start), window["end_ms"])
            segment = {
                "window_index": window["window_index"],
                "channel": window.get("channel"),
                "start_ms": start,
                "end_ms": end,
                "text": seg.text,
                "language": result.language,
                "language_prob": result.language_prob,
                "avg_logprob": result.avg_logprob,
                "compression_ratio": result.compression_ratio,
                "no_speech_prob": result.no_speech_prob,
                "temperature": result.temperature,
            }
            segment["flag"] = hallucination_flag(segment, options) if options.enabled else None
            out.append(segment)
    return out


def resume_point(result: WindowTranscript, duration_s: float, options: WhisperOptions) -> float | None:
    """Seconds into the window from which it must be decoded again, or None when its text covers it.

    Whisper writes a timestamp pair at the end when the speech goes on past what it wrote; openai-whisper's loop
    then seeks there, while a VAD window has no next 30 s, so that speech would be lost. A decode whose text ends
    (its last timestamp, or its last aligned word) well before the window's end has stopped early too: VAD cut the
    window where speech ends."""
    if not options.resume or result.complete_until is None or result.is_silence:
        return None
    left = duration_s - result.complete_until
    needed = options.resume_after_signal_s if result.continues else options.resume_after_last_timestamp_s
    return result.complete_until if left >= needed and result.complete_until > 0 else None


def split_point(result: WindowTranscript, options: WhisperOptions) -> float | None:
    """Where to cut a window that seems to hold two languages (its second language at least
    ``mixed_window_second_prob``): the middle of the pause between segments nearest the window's middle; None for a
    window of one language or of one segment."""
    probs = result.language_probs
    if not probs or options.mixed_window_second_prob >= 1.0 or len(result.segments) < 2:
        return None
    second = sorted(probs.values(), reverse=True)[1] if len(probs) > 1 else 0.0
    if second < options.mixed_window_second_prob:
        return None
    middle = (result.segments[0].start + result.segments[-1].end) / 2
    gaps = [((a.end + b.start) / 2, a, b) for a, b in zip(result.segments, result.segments[1:])]
    at, before, after = min(gaps, key=lambda gap: abs(gap[0] - middle))
    return at if before.end - result.segments[0].start >= 1.0 and result.segments[-1].end - after.start >= 1.0 else None


Item = tuple[int, int]  # (file, window)


def _decode(engine: Engine, jobs: list[tuple[tuple[int, ...], np.ndarray, str | None]], decoding: DecodingOptions, batch: int,
            failed: dict[int, str]) -> dict[tuple[int, ...], WindowTranscript]:
    """Decode (key, audio, language) jobs (a key starts with the file and the window) in batches of ``batch`` windows sharing a language (None: each window's
    own, detected in the same encoder pass); a window the model fails on marks its file failed, sparing the rest."""
    by_language: dict[str | None, list[tuple[tuple[int, ...], np.ndarray]]] = {}
    for item, audio, language in jobs:
        if item[0] not in failed:
            by_language.setdefault(language, []).append((item, audio))
    results: dict[tuple[int, ...], WindowTranscript] = {}
    for language in sorted(by_language, key=lambda x: x or ""):
        items, options = by_language[language], replace(decoding, language=language)
        for start in range(0, len(items), batch):
            chunk = items[start : start + batch]
            try:
                decoded: list[WindowTranscript | None] = list(engine.transcribe([a for _, a in chunk], options))
            except (RuntimeError, ValueError):  # e.g. a model producing NaN on one window: find it, spare the rest
                decoded = []
                for key, audio in chunk:
                    try:
                        decoded += engine.transcribe([audio], options)
                    except (RuntimeError, ValueError) as exc:
                        failed.setdefault(key[0], f"window {key[1]}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                        decoded.append(None)
            for (item, _), result in zip(chunk, decoded):
                if result is not None:
                    results[item] = result
    return results


def _top_languages(probs: dict[str, float], k: int) -> list[str]:
    return sorted(probs, key=lambda lang: (-probs[lang], lang))[:k]


def _with_language_prob(result: WindowTranscript, probs: dict[str, float] | None) -> WindowTranscript:
    """A window decoded under a language it did not pick itself still reports its audio's probability of it."""
    if not probs:
        return result
    return replace(result, language_prob=probs.get(result.language, 0.0), language_probs=probs)


def rescoring_score(result: WindowTranscript) -> float:
    """log p(language | audio) + length-normalised log p(text | audio, language): what language-aware rescoring
    maximises over a window's candidate languages."""
    return math.log(max(result.language_prob or 0.0, 1e-12)) + result.avg_logprob


def transcribe_windows(batch: pa.Table, options: TranscribeStageOptions, engine: Engine) -> pa.Table:
    """Stage: every speech window of every file decoded; one row per file with its timed segments, each carrying its
    window's language. A file whose language is given (--language) or declared is decoded in it throughout;
    otherwise each window gets its own language from its own encoder pass (the one that decodes it)."""
    whisper, given = options.whisper, options.decoding.language
    decoding = replace(options.decoding, **TIMINGS[whisper.timings])
    rows = batch.to_pylist()
    audio = [[np.frombuffer(w["pcm"], dtype="<i2") for w in row["speech_windows"] or []] for row in rows]
    forced = [given or (base_language(row.get("language")) if whisper.use_source_language else None) for row in rows]
    failed: dict[int, str] = {}

    # 1. every window once: under its file's forced language, or its own (detected in the same pass)
    jobs = [((r, k), a, forced[r]) for r, windows in enumerate(audio) for k, a in enumerate(windows)]
    results = _decode(engine, jobs, decoding, whisper.batch_windows, failed)

    # 2. windows that detected their language: rescored over their top languages, or, when unsure, decoded in their
    #    file's (track's) language: the average of its windows' probabilities
    track_of = {(r, k): (r, w.get("channel")) for r, row in enumerate(rows) for k, w in enumerate(row["speech_windows"] or [])}
    track_probs: dict[tuple[int, int | None], list[dict[str, float]]] = {}
    for item, result in results.items():
        if forced[item[0]] is None and result.language_probs:
            track_probs.setdefault(track_of[item], []).append(result.language_probs)
    track_language = {}  # each channel of a split file is a track of its own, with its own language
    for track, own in track_probs.items():
        combined = average_probabilities(own)
        track_language[track] = max(sorted(combined), key=combined.get)
    files_detected = {r for r, _ in track_probs}  # files whose windows detected their own language
    detected = [item for item in results if forced[item[0]] is None and results[item].language_probs]
    again: list[tuple[Item, np.ndarray, str | None]] = []
    if whisper.rescore_languages > 1:
        again = [(item, audio[item[0]][item[1]], language) for item in detected
                 for language in _top_languages(results[item].language_probs, whisper.rescore_languages)
                 if language != results[item].language]
    else:
        for item in detected:
            result = results[item]
            fallback = track_language[track_of[item]]
            if (result.language_prob or 0.0) < whisper.min_window_language_prob and result.language != fallback:
                again.append((item, audio[item[0]][item[1]], fallback))
    if again:
        alternatives: dict[Item, list[WindowTranscript]] = {}
        for language in sorted({language for _, _, language in again}):
            subset = [job for job in again if job[2] == language]  # a window may be tried under several languages
            for item, result in _decode(engine, subset, decoding, whisper.batch_windows, failed).items():
                alternatives.setdefault(item, []).append(_with_language_prob(result, results[item].language_probs))
        for item, candidates in alternatives.items():
            if whisper.rescore_languages > 1:
                results[item] = max([results[item], *candidates], key=rescoring_score)
            else:
                results[item] = candidates[0]

    parts: dict[Item, list[tuple[float, WindowTranscript]]] = {item: [(0.0, result)] for item, result in results.items()}

    # 3. windows that hold two languages (a file switching language inside one window): cut at the pause between
    #    segments nearest the middle, each part decoded in its own language; kept when the parts' languages differ
    mixed = {item: at for item in detected if (at := split_point(results[item], whisper)) is not None}
    if mixed:
        halves = [((*item, 0), audio[item[0]][item[1]][: round(at * SAMPLE_RATE)]) for item, at in mixed.items()]
        halves += [((*item, 1), audio[item[0]][item[1]][round(at * SAMPLE_RATE) :]) for item, at in mixed.items()]
        decoded = _decode(engine, [(key, a, None) for key, a in halves], decoding, whisper.batch_windows, failed)
        for item, at in mixed.items():
            first, second = decoded.get((*item, 0)), decoded.get((*item, 1))
            if first is not None and second is not None and first.language != second.language:
                parts[item] = [(0.0, first), (at, second)]

    # 4. windows whose decode stopped early: the rest decoded from where their text is complete, in the file's forced
    #    language, else in its own
    open_items = list(results)
    for _ in range(whisper.max_resumes):
        tails = []
        for item in open_items:
            offset, last = parts[item][-1]
            window = audio[item[0]][item[1]]
            at = resume_point(last, len(window) / SAMPLE_RATE - offset, whisper)
            if at is not None:
                # the rest is decoded in the file's language when one is forced, else in its own (it may differ)
                tails.append((item, window[round((offset + at) * SAMPLE_RATE) :], forced[item[0]], offset + at))
        if not tails:
            break
        resumed = _decode(engine, [(item, a, language) for item, a, language, _ in tails], decoding, whisper.batch_windows, failed)
        open_items = []
        for item, _, _, offset in tails:
            if item in resumed:
                tail = resumed[item]  # detected on its own (no forced language), or scored by the window's detection
                parts[item].append((offset, tail if tail.language_probs else _with_language_prob(tail, parts[item][0][1].language_probs)))
                open_items.append(item)

    # 5. each file's segments back in order
    out = []
    for r, row in enumerate(rows):
        if r in failed:
            out.append(dict(row, speech_windows=None, source_language=row.get("language"), reject_reason=RejectReason.TRANSCRIPTION_FAILED.value, reject_detail=failed[r]))
            continue
        windows = row["speech_windows"] or []
        segments = []
        speech_by_language: dict[str, int] = {}
        for k, window in enumerate(windows):
            segments.extend(_segments(window, parts[(r, k)], options.hallucination))
            bounds = [round(offset * 1000) for offset, _ in parts[(r, k)]] + [window["end_ms"] - window["start_ms"]]
            for (_, part), start, end in zip(parts[(r, k)], bounds, bounds[1:]):
                speech_by_language[part.language] = speech_by_language.get(part.language, 0) + max(end - start, 0)
        segments.sort(key=lambda s: (s["start_ms"], s["channel"] or 0, s["window_index"]))
        languages = sorted(speech_by_language, key=lambda lang: (-speech_by_language[lang], lang))
        if forced[r] is not None:
            language, prob = forced[r], None
        elif r in files_detected:
            language, prob = languages[0], average_probabilities(
                [parts[(r, k)][0][1].language_probs or {} for k in range(len(windows))]).get(languages[0])
        else:
            language, prob = (languages[0] if languages else None), None
        out.append(
            dict(
                row,
                speech_windows=None,
                segments=segments,
                source_language=row.get("language"),  # what the source declared, if anything
                language=language,
                language_prob=prob,
                languages=languages,
                speech_ms=sum(w["end_ms"] - w["start_ms"] for w in windows),
            )
        )
    return table_from_rows(out).drop_columns(["speech_windows"])
