"""Score every speech window against its own audio, with one Whisper encoder pass per window.

Whisper hears 30 s at a time, and a recording can change language, or stop matching its transcript, from one
window to the next; so each window is judged on its own (``judge_windows`` decides on these scores). One encoder
pass per window, batched across the sources of a block (``batch_windows`` per pass), gives three things
(``Engine.score``):

- the window's audio language probabilities (Whisper's language ID);
- transcript agreement: the mean log-probability per token of the window's own text under teacher forcing, in its
  text's language, and the share of its tokens the model finds very unlikely (below 0.01);
- the no-speech probability.

The window's text language is fastText's on the window's own text when it is sure (``min_text_prob``), else the
source's. A window whose text mixes scripts (Mandarin with English words) lists each script's language
(``languages``) under its main one. ``max_windows`` caps the windows scored per source (spread over the
recording) for tight CPU budgets; unscored windows then take their source's decision. Source-level columns keep
the scored windows' averaged probabilities. A model stage: the runner loads the engine once per actor (``setup``).
"""

from __future__ import annotations

import json
import pyarrow as pa

from pipeline.io.media import decoded_ahead
from pipeline.schema import table_from_rows
from pipeline.text import script_of, script_runs
from pipeline.whisper.engines import Engine, WindowScore, load_engine
from stages.detect_text_language import identify
from stages.languages import FALLBACK, LanguageOptions, base_language

TOP_LANGUAGES = 5  # audio languages kept per window (and source) for the record, plus the transcript's


def load_scoring_model(options: LanguageOptions) -> Engine:
    return load_engine(options.engine, options.model, options.device, options.threads)


def spread(indices: list[int], k: int) -> list[int]:
    """Up to ``k`` of ``indices`` evenly spread (first and last included); all of them when ``k`` is 0."""
    if not k or len(indices) <= k:
        return indices
    positions = sorted({round(i * (len(indices) - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]
    return [indices[p] for p in positions]


def average_probabilities(per_window: list[dict[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for probs in per_window:
        for language, p in probs.items():
            total[language] = total.get(language, 0.0) + p / len(per_window)
    return total


def language_prob(probs: dict[str, float], language: str | None) -> float:
    """The audio's probability of ``language`` (a language the model lacks counts as the one it folds into)."""
    if not language:
        return 0.0
    return probs.get(language, probs.get(FALLBACK.get(language, language), 0.0))


def _record(probs: dict[str, float], wanted: str | None) -> str:
    ranked = sorted(probs.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = dict(ranked[:TOP_LANGUAGES])
    if wanted and wanted in probs:
        kept[wanted] = probs[wanted]
    return json.dumps({k: round(float(v), 4) for k, v in kept.items()}, sort_keys=True)


def mixed_languages(text: str, main: str | None, options: LanguageOptions) -> list[str]:
    """``main`` plus the language of each script the text holds enough letters of (fastText on that script's runs,
    when it is sure enough): a Mandarin window with English words is ``["en", "zh"]`` under main language ``zh``.
    Languages mixed within one script (Spanish words in English) are not told apart."""
    runs = script_runs(text)
    if len(runs) < 2:
        return [main] if main else []
    found = {main} if main else set()
    pieces = [runs[s] for s in runs if sum(1 for ch in runs[s] if script_of(ch)) >= options.min_mixed_letters]
    for code, prob in identify(pieces, options.text_model) if pieces else []:
        if prob >= options.min_mixed_prob:
            found.add(code)
    return sorted(found)


def score_windows(batch: pa.Table, options: LanguageOptions, engine: Engine) -> pa.Table:
    rows = batch.to_pylist()
    jobs: list[tuple[int, int]] = []  # (row, window) of every window scored in this batch
    for r, row in enumerate(rows):
        if row.get("reject_reason"):
            continue
        windows = row.get("windows") or []
        jobs.extend((r, i) for i in spread([i for i, w in enumerate(windows) if w["has_speech"]], options.max_windows))
    texts = [rows[r]["windows"][i]["text"] or "" for r, i in jobs]
    detected = identify(texts, options.text_model) if texts else []
    text_languages = [
        code if prob >= options.min_text_prob else base_language(rows[r].get("language"))
        for (r, _), (code, prob) in zip(jobs, detected)
    ]
    scores: list[WindowScore] = []
    starts = range(0, len(jobs), options.batch_windows)
    flacs = [[rows[r]["windows"][i]["flac"] for r, i in jobs[start : start + options.batch_windows]] for start in starts]
    for start, audios in zip(starts, decoded_ahead(flacs)):
        scores.extend(engine.score(audios, texts[start : start + len(audios)], text_languages[start : start + len(audios)]))

    per_source: dict[int, list[dict[str, float]]] = {}
    for (r, i), text, (code, prob), language, score in zip(jobs, texts, detected, text_languages, scores):
        window = rows[r]["windows"][i]
        top = max(score.language_probs, key=score.language_probs.get)
        window.update(
            language=language,  # the language its text was scored in; judge_windows decides the final one
            languages=mixed_languages(text, language, options),
            transcript_language=code,
            transcript_language_prob=prob,
            audio_language=top,
            audio_language_prob=float(score.language_probs[top]),
            audio_language_probs=_record(score.language_probs, language),
            agreement_logprob=score.mean_logprob,
            agreement_unlikely_share=score.unlikely_share,
            agreement_tokens=score.tokens,
            no_speech_prob=score.no_speech_prob,
        )
        per_source.setdefault(r, []).append(score.language_probs)

    out = []
    for r, row in enumerate(rows):
        own = per_source.get(r)
        if not own:
            out.append(dict(row, audio_language=None, audio_language_prob=None, audio_language_probs=None))
            continue
        combined = average_probabilities(own)
        top = max(combined, key=combined.get)
        out.append(
            dict(row, audio_language=top, audio_language_prob=float(combined[top]), audio_language_probs=_record(combined, row.get("language")))
        )
    return table_from_rows(out)
