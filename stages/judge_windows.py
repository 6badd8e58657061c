"""Decide each scored window's language and task, and whether its transcript is the speech, from ``score_windows``.

Per window (docs/corpus.md, "Language and agreement, per window"):

1. Language (Whisper paper §2.1, on the probability rather than only the top answer, because Whisper splits its
   belief between close languages): the audio gives the window text's language at least
   ``min_transcript_language_prob``: ``task = transcribe`` in that language. Otherwise an English text over audio
   this sure (``min_translate_prob``) of another language is an X->en example: ``task = translate``,
   ``language`` = the audio's. Otherwise, when the audio is sure of no language in this window (its top language
   below ``min_translate_prob``) and the source as a whole passed in this window's text language, the source's
   decision stands: weak evidence does not split a source. Otherwise the window fails ``language_mismatch``
   (``language_unknown`` when its text's language is unknown and the audio is unsure).
2. Agreement: a transcribe window of at least ``min_agreement_tokens`` text tokens whose mean log-probability is
   below ``min_agreement_logprob``, or with more than ``max_unlikely_share`` of its tokens very unlikely, fails
   ``transcript_mismatch`` (translations are not judged: their text is not the speech's words).

A failing window is dropped as a stretch (a reject row with the scores in its detail); when more than
``max_failed_speech_share`` of a source's scored speech fails, the source is rejected whole: ``language_mismatch``
or ``misaligned_transcript``, whichever failed more of it. Windows not scored (the ``max_windows`` cap; no-speech
windows) take the source's decision, made as before from the scored windows' averaged probabilities. The source's
``language`` is the one most of its kept speech is in; ``source_languages`` lists every language of its kept
windows (a window's ``languages`` included) and ``code_switched`` says there is more than one.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from pipeline.schema import RejectReason
from pipeline.stage import Reject, map_rows
from stages.languages import LanguageOptions
from stages.score_windows import language_prob

STAGE = "judge_windows"


def _describe(probs: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in sorted(probs.items(), key=lambda kv: -kv[1])[:3])


def decide_language(text: str | None, probs: dict[str, float], options: LanguageOptions) -> tuple[str, str] | Reject:
    """``(language, task)`` for speech with these audio probabilities under a transcript in ``text``'s language."""
    audio = max(probs, key=probs.get) if probs else None
    audio_prob = probs.get(audio, 0.0) if audio else 0.0
    if text is None:
        if audio and audio_prob >= options.min_translate_prob:
            return audio, "transcribe"
        return Reject(RejectReason.LANGUAGE_UNKNOWN, f"text language unknown; audio: {_describe(probs)}")
    p_text = language_prob(probs, text)
    if p_text >= options.min_transcript_language_prob:
        return text, "transcribe"
    if text == "en" and audio and audio != "en" and audio_prob >= options.min_translate_prob:
        return audio, "translate"
    return Reject(
        RejectReason.LANGUAGE_MISMATCH,
        f"transcript {text}; audio gives {text} {p_text:.3f} (need {options.min_transcript_language_prob:g}); audio: {_describe(probs)}",
    )


def agreement_failure(window: dict[str, Any], options: LanguageOptions) -> Reject | None:
    logprob, unlikely, tokens = window.get("agreement_logprob"), window.get("agreement_unlikely_share"), window.get("agreement_tokens") or 0
    if not options.agreement or logprob is None or tokens < options.min_agreement_tokens:
        return None
    if logprob < options.min_agreement_logprob or (unlikely or 0.0) > options.max_unlikely_share:
        return Reject(
            RejectReason.TRANSCRIPT_MISMATCH,
            f"transcript agreement {logprob:.2f} per token (need {options.min_agreement_logprob:g}), "
            f"{unlikely:.0%} of {tokens} tokens unlikely (limit {options.max_unlikely_share:.0%}): its words are not the ones spoken",
        )
    return None


def judge(row: dict[str, Any], options: LanguageOptions) -> dict[str, Any] | Reject:
    windows = [dict(w) for w in row.get("windows") or []]
    source_probs: dict[str, float] = json.loads(row.get("audio_language_probs") or "{}")
    source = decide_language(row.get("language"), source_probs, options) if source_probs else None
    failed: dict[RejectReason, int] = {}
    scored_ms, kept, dropped = 0, [], list(row.get("dropped") or [])
    after_mismatch = False  # a window after one whose transcript is not its speech must not be prompted with it
    for window in windows:
        length = window["end_ms"] - window["start_ms"]
        if after_mismatch:
            window["prev_text"] = ""
        if window["has_speech"]:
            after_mismatch = False
        if window.get("audio_language_probs") is None:  # not scored: the source's decision
            if isinstance(source, tuple):
                window["language"], window["task"] = source
                if window["has_speech"]:
                    window["languages"] = [source[0]]
            kept.append(window)
            continue
        scored_ms += length
        probs = json.loads(window["audio_language_probs"])
        decision = decide_language(window.get("language"), probs, options)
        if isinstance(decision, Reject) and isinstance(source, tuple) and source == (window.get("language"), "transcribe") \
                and max(probs.values(), default=0.0) < options.min_translate_prob:
            # the audio is sure of no language here (top < min_translate_prob), the source passed in this window's
            # text language: weak evidence, the source's decision stands (a switch needs the audio to be sure)
            decision = source
        if isinstance(decision, tuple):
            window["language"], window["task"] = decision
            # a translation's text is English by design: the window is in the language spoken
            window["languages"] = [decision[0]] if decision[1] == "translate" else sorted(set(window.get("languages") or []) | {decision[0]})
            if decision[1] == "transcribe":
                decision = agreement_failure(window, options) or decision
        if isinstance(decision, Reject):
            failed[decision.reason] = failed.get(decision.reason, 0) + length
            after_mismatch = decision.reason == RejectReason.TRANSCRIPT_MISMATCH
            dropped.append({"stage": STAGE, "reason": decision.reason.value, "detail": decision.detail,
                            "start_ms": window["start_ms"], "end_ms": window["end_ms"]})
            continue
        kept.append(window)

    if source is None and not scored_ms:  # nothing was scored: no speech to judge, the declared language stands
        return dict(row, task="transcribe")
    failed_ms = sum(failed.values())
    speech_kept = [w for w in kept if w["has_speech"]]
    if failed_ms > options.max_failed_speech_share * scored_ms or not speech_kept:
        reason = max(failed, key=lambda r: (failed[r], r.value)) if failed else RejectReason.LANGUAGE_MISMATCH
        if reason == RejectReason.TRANSCRIPT_MISMATCH:
            reason = RejectReason.MISALIGNED_TRANSCRIPT
        worst = [d for d in dropped if d.get("stage") == STAGE][:3]
        if len(worst) == 1 and failed_ms == scored_ms:  # one window, and it failed: its own words say why
            return Reject(reason, worst[0]["detail"])
        detail = f"{failed_ms / 1000:.1f} s of {scored_ms / 1000:.1f} s of scored speech failed (limit {options.max_failed_speech_share:.0%}); " + "; ".join(
            f"{d['start_ms'] / 1000:.1f}-{d['end_ms'] / 1000:.1f} s {d['reason']}: {d['detail'][:90]}" for d in worst
        )
        return Reject(reason, detail)

    speech_ms: dict[str, int] = {}
    for window in speech_kept:
        if window.get("language"):
            speech_ms[window["language"]] = speech_ms.get(window["language"], 0) + window["end_ms"] - window["start_ms"]
    main = max(speech_ms, key=lambda k: (speech_ms[k], k)) if speech_ms else row.get("language")
    languages = sorted({lang for w in speech_kept for lang in (w.get("languages") or [w.get("language")]) if lang})
    tasks = [w.get("task") for w in speech_kept if w.get("task")]
    task = max(set(tasks), key=lambda t: (tasks.count(t), t)) if tasks else "transcribe"
    return dict(row, windows=kept, dropped=dropped, language=main, task=task, source_languages=languages, code_switched=len(languages) > 1)


def judge_windows(batch: pa.Table, options: LanguageOptions) -> pa.Table:
    return map_rows(batch, lambda row: judge(row, options))
