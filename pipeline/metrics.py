"""Word error rate, with Whisper's own text normalisers so scores mean what the paper's mean."""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Sequence


@lru_cache(maxsize=2)
def normalizer(english: bool = True) -> Callable[[str], str]:
    from whisper.normalizers import BasicTextNormalizer, EnglishTextNormalizer

    return EnglishTextNormalizer() if english else BasicTextNormalizer()


def edit_distance(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    previous = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, start=1):
        current = [i] + [0] * len(hypothesis)
        for j, hyp in enumerate(hypothesis, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref != hyp))
        previous = current
    return previous[-1]


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str], english: bool = True) -> float:
    """Corpus WER: total edits over total reference words, after normalisation."""
    norm = normalizer(english)
    errors = words = 0
    for reference, hypothesis in zip(references, hypotheses, strict=True):
        ref, hyp = norm(reference).split(), norm(hypothesis).split()
        errors += edit_distance(ref, hyp)
        words += len(ref)
    return errors / max(words, 1)
