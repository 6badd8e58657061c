"""Identify the spoken language with Whisper's language detection, over several speech windows per source.

Whisper looks at 30 s; silence, music or an intro at the start fool it. So each source contributes up to
``max_windows`` of its speech windows, spread over the recording, and their probabilities are averaged. All
windows of a batch of sources go through the model together (``batch_windows`` per forward pass). A model
stage: the runner loads the engine once per actor (``setup``) and gives it a GPU when there is one.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from pipeline.whisper.engines import Engine, load_engine
from pipeline.io.media import decode_flac
from pipeline.schema import table_from_rows
from stages.languages import LanguageOptions

TOP_LANGUAGES = 5  # kept per source for the record and the agreement rule


def load_language_model(options: LanguageOptions) -> Engine:
    return load_engine(options.engine, options.model, options.device, options.threads)


def pick_windows(windows: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """Up to ``k`` speech windows evenly spread over the recording (first and last included)."""
    speech = [w for w in windows if w["has_speech"]]
    if len(speech) <= k:
        return speech
    positions = sorted({round(i * (len(speech) - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]
    return [speech[p] for p in positions]


def average_probabilities(per_window: list[dict[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for probs in per_window:
        for language, p in probs.items():
            total[language] = total.get(language, 0.0) + p / len(per_window)
    return total


def detect_audio_language(batch: pa.Table, options: LanguageOptions, engine: Engine) -> pa.Table:
    rows = batch.to_pylist()
    chosen = [pick_windows(row.get("windows") or [], options.max_windows) for row in rows]
    audios = [decode_flac(w["flac"]) for windows in chosen for w in windows]
    probs: list[dict[str, float]] = []
    for start in range(0, len(audios), options.batch_windows):
        probs.extend(engine.detect_language(audios[start : start + options.batch_windows]))
    cursor = 0
    results = []
    for windows in chosen:
        own = probs[cursor : cursor + len(windows)]
        cursor += len(windows)
        results.append(average_probabilities(own) if own else {})

    out = []
    for row, combined in zip(rows, results):
        if not combined:
            out.append(dict(row, audio_language=None, audio_language_prob=None, audio_language_probs=None))
            continue
        ranked = sorted(combined.items(), key=lambda kv: (-kv[1], kv[0]))
        record = dict(ranked[:TOP_LANGUAGES])
        wanted = row.get("language")
        if wanted and wanted in combined:
            record[wanted] = combined[wanted]
        language, prob = ranked[0]
        out.append(
            dict(
                row,
                audio_language=language,
                audio_language_prob=float(prob),
                audio_language_probs=json.dumps({k: round(float(v), 4) for k, v in record.items()}, sort_keys=True),
            )
        )
    return table_from_rows(out)
