"""Word and character error rates, with Whisper's own text normalisers so scores mean what the paper's mean."""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Hashable, Sequence

import numpy as np

from pipeline.text import SPACELESS_LANGUAGES, is_spaceless_char

# The error rate each kind of speech is judged by: words where words are written with spaces, characters where they
# are not (Chinese, Japanese, Thai, ...), and for code-switched speech the mixed error rate (MER: each Chinese
# character and each English word one unit), what code-switching research reports.
WER, CER, MER = "wer", "cer", "mer"


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


def mixed_units(text: str) -> list[str]:
    """A normalised text as MER's units: each character of a script written without spaces on its own, each word of
    the other scripts whole ("我们用 Python 写" -> ["我", "们", "用", "python", "写"])."""
    units: list[str] = []
    for word in normalizer(False)(text).split():
        run = ""
        for ch in word:
            if is_spaceless_char(ch):
                if run:
                    units.append(run)
                    run = ""
                units.append(ch)
            else:
                run += ch
        if run:
            units.append(run)
    return units


def mixed_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edits, reference units) of the mixed error rate (``mixed_units``)."""
    ref, hyp = mixed_units(reference), mixed_units(hypothesis)
    return edit_distance(ref, hyp), len(ref)


def error_measure(language: str | None, code_switched: bool = False, task: str = "transcribe") -> str:
    """Which error rate a window is judged by: MER for code-switched speech, CER for languages written without
    spaces, WER for the rest (and for X->en translations, whose text is English)."""
    if code_switched and task != "translate":
        return MER
    if task != "translate" and language in SPACELESS_LANGUAGES:
        return CER
    return WER


def errors_of(reference: str, hypothesis: str, measure: str, english: bool) -> tuple[int, int]:
    """(edits, reference units) by ``measure`` (``error_measure``), after Whisper's normalisers."""
    if measure == MER:
        return mixed_errors(reference, hypothesis)
    if measure == CER:
        return char_errors(reference, hypothesis, english=False)
    return word_errors(reference, hypothesis, english)
