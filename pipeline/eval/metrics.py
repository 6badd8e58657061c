"""Word and character error rates, with Whisper's own text normalisers so scores mean what the paper's mean."""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Hashable, Sequence

import numpy as np


@lru_cache(maxsize=2)
def normalizer(english: bool = True) -> Callable[[str], str]:
    from whisper.normalizers import BasicTextNormalizer, EnglishTextNormalizer

    return EnglishTextNormalizer() if english else BasicTextNormalizer()


def edit_distance(reference: Sequence[Hashable], hypothesis: Sequence[Hashable]) -> int:
    """Levenshtein distance, one numpy pass per reference token (hour-long transcripts take well under a second).

    Within a row, insertions chain left to right: ``row[j] = min_k(base[k] + j - k)``, a running minimum.
    """
    if not reference or not hypothesis:
        return max(len(reference), len(hypothesis))
    vocabulary: dict[Hashable, int] = {}
    ref = np.array([vocabulary.setdefault(t, len(vocabulary)) for t in reference])
    hyp = np.array([vocabulary.setdefault(t, len(vocabulary)) for t in hypothesis])
    index = np.arange(len(hyp) + 1)
    previous = index.copy()
    for i, token in enumerate(ref, start=1):
        base = np.empty_like(previous)
        base[0] = i
        base[1:] = np.minimum(previous[1:] + 1, previous[:-1] + (hyp != token))
        previous = np.minimum.accumulate(base - index) + index
    return int(previous[-1])


def word_errors(reference: str, hypothesis: str, english: bool = True) -> tuple[int, int]:
    """(edits, reference words) after normalisation."""
    norm = normalizer(english)
    ref, hyp = norm(reference).split(), norm(hypothesis).split()
    return edit_distance(ref, hyp), len(ref)


def char_errors(reference: str, hypothesis: str, english: bool = False) -> tuple[int, int]:
    """(edits, reference characters) after normalisation, spaces ignored: the measure for Chinese, Japanese, Thai."""
    norm = normalizer(english)
    ref, hyp = norm(reference).replace(" ", ""), norm(hypothesis).replace(" ", "")
    return edit_distance(ref, hyp), len(ref)


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str], english: bool = True) -> float:
    """Corpus WER: total edits over total reference words, after normalisation."""
    errors = words = 0
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        e, n = word_errors(reference, hypothesis, english)
        errors, words = errors + e, words + n
    return errors / max(words, 1)
