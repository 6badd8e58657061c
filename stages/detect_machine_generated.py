"""Drop transcripts that look machine-generated or too poor to train on (Whisper paper §2.1, "transcript-ese").

ASR output tends to lack what is hard to predict from audio alone: capitals, commas and question marks,
paragraphs. The paper published no thresholds; ours are named rules with configurable limits, each judged
only with enough evidence (casing needs cased letters, punctuation rules need length), and script-aware:
casing looks only at letters of scripts that have case (Latin, Greek, Cyrillic, Armenian), so Chinese,
Japanese, Korean, Thai, Arabic, Hebrew, Hindi or Georgian text is never judged on casing; punctuation counts
every script's marks (``，。？！`` too) and skips Thai and Lao, which are written without sentence punctuation. A source that says where its transcript came from is judged on that first.
Rules run in this order and the first that fires names the reject: provenance, non-speech markers,
all upper case, all lower case, repetition, missing punctuation, rule-based ITN.
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from dataclasses import dataclass
from typing import Any, Callable

import pyarrow as pa

from pipeline.schema import RejectReason
from pipeline.stage import Reject, map_rows

CASED_SCRIPTS = ("LATIN", "GREEK", "CYRILLIC", "ARMENIAN")
UNPUNCTUATED_SCRIPTS = ("THAI", "LAO")  # written without sentence punctuation: never judged on it
SPACELESS_SCRIPTS = ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR", "IDEOGRAPHIC", "FULLWIDTH")
CLAUSE_MARKS = frozenset(",，、،;；?？!！؟¿¡")  # what simple rule-based ITN never produces
_MARKER = re.compile(r"\[[^\]\n]{0,40}\]|\([^)\n]{0,40}\)|[♪♫♬♩]+|\*[^*\n]{0,40}\*")


@dataclass(frozen=True)
class MachineGeneratedOptions:
    enabled: bool = True
    # Provenance: sources whose transcript_origin is one of these are machine-generated whatever their text.
    automatic_origins: tuple[str, ...] = ("automatic_captions", "automatic", "auto", "asr", "machine_generated")
    max_marker_share: float = 0.5  # share of the text inside [Music], (applause), ♪ ... markers
    min_cased_letters: int = 20  # fewer letters of a cased script: casing is not judged
    all_uppercase_share: float = 0.9  # capitals among cased letters at or above this: all upper case
    all_lowercase_share: float = 0.0  # capitals among cased letters at or below this: all lower case
    min_tokens_for_punctuation: int = 20  # words (characters in scripts without spaces) before punctuation is judged
    min_punctuation_per_token: float = 0.02  # fewer marks per word than this: missing punctuation
    min_tokens_for_itn: int = 100  # this long with sentence marks but no comma, ? or ! at all: rule-based ITN
    min_tokens_for_repetition: int = 20
    max_compression_ratio: float = 2.4  # gzip ratio of any 500-character stretch (Whisper's own loop signal)
    max_repeated_ngram_share: float = 0.5  # share of word 4-grams (character 8-grams) seen before in the text

    def __post_init__(self) -> None:
        for name in ("max_marker_share", "all_uppercase_share", "all_lowercase_share", "max_repeated_ngram_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")


@dataclass(frozen=True)
class TextProfile:
    """What the rules measure, computed once per transcript."""

    upper: int
    lower: int
    tokens: int
    punctuation: int
    clause_marks: int
    sentence_marks: int
    marker_chars: int
    visible_chars: int
    spaceless: bool
    unpunctuated_script: bool


def _script(ch: str) -> str:
    return unicodedata.name(ch, "")


def profile(text: str) -> TextProfile:
    upper = lower = punctuation = clause = sentence = visible = spaceless_chars = unpunctuated = 0
    for ch in text:
        if ch.isspace():
            continue
        visible += 1
        category = unicodedata.category(ch)
        if category in ("Lu", "Ll"):
            if _script(ch).startswith(CASED_SCRIPTS):
                upper += category == "Lu"
                lower += category == "Ll"
            elif _script(ch).startswith(SPACELESS_SCRIPTS):
                spaceless_chars += 1
        elif category.startswith(("L", "M")) and _script(ch).startswith(SPACELESS_SCRIPTS):
            spaceless_chars += 1
            unpunctuated += _script(ch).startswith(UNPUNCTUATED_SCRIPTS)
        elif category.startswith("P"):
            punctuation += 1
            clause += ch in CLAUSE_MARKS
            sentence += ch in ".。．!！?？؟।॥։።…"
    words = len(re.findall(r"\w+", "".join(" " if _script(c).startswith(SPACELESS_SCRIPTS) else c for c in text)))
    spaceless = spaceless_chars > words
    marker_chars = sum(len(m.group().replace(" ", "")) for m in _MARKER.finditer(text))
    return TextProfile(
        upper=upper, lower=lower, tokens=spaceless_chars + words, punctuation=punctuation, clause_marks=clause,
        sentence_marks=sentence, marker_chars=marker_chars, visible_chars=visible, spaceless=spaceless,
        unpunctuated_script=unpunctuated * 2 > visible,
    )


def max_chunk_compression_ratio(text: str, chunk_chars: int = 500) -> float:
    """The worst gzip ratio over consecutive stretches (a whole long text compresses well even when human)."""
    text = " ".join(text.split())
    if not text:
        return 0.0
    step = chunk_chars // 2
    ratios = []
    for start in range(0, max(len(text) - chunk_chars, 0) + 1, step):
        data = text[start : start + chunk_chars].encode("utf-8")
        ratios.append(len(data) / len(zlib.compress(data, 9)))
    return max(ratios)


def repeated_ngram_share(text: str, spaceless: bool) -> float:
    if spaceless:
        units = [c for c in text if not c.isspace()]
        n = 8
    else:
        units = re.findall(r"\w+", text.casefold())
        n = 4
    grams = [tuple(units[i : i + n]) for i in range(len(units) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


Rule = Callable[[dict[str, Any], str, TextProfile, MachineGeneratedOptions], Reject | None]


def _provenance(row, text, p, o):
    origin = (row.get("transcript_origin") or "").strip().lower()
    if origin and origin in o.automatic_origins:
        return Reject(RejectReason.MACHINE_GENERATED_CAPTIONS, f"transcript_origin is {origin!r} (machine-generated by its source)")
    return None


def _markers(row, text, p, o):
    if p.visible_chars and p.marker_chars / p.visible_chars > o.max_marker_share:
        return Reject(
            RejectReason.MOSTLY_NON_SPEECH_MARKERS,
            f"{p.marker_chars / p.visible_chars:.0%} of the text is non-speech markers like [Music] (limit {o.max_marker_share:.0%})",
        )
    return None


def _uppercase(row, text, p, o):
    cased = p.upper + p.lower
    if cased >= o.min_cased_letters and p.upper / cased >= o.all_uppercase_share:
        return Reject(RejectReason.ALL_UPPERCASE, f"{p.upper / cased:.0%} of {cased} cased letters are capitals (limit {o.all_uppercase_share:.0%})")
    return None


def _lowercase(row, text, p, o):
    cased = p.upper + p.lower
    if cased >= o.min_cased_letters and p.upper / cased <= o.all_lowercase_share:
        return Reject(RejectReason.ALL_LOWERCASE, f"{p.upper} capitals among {cased} cased letters (limit {o.all_lowercase_share:.1%})")
    return None


def _punctuation(row, text, p, o):
    if p.unpunctuated_script:
        return None
    if p.tokens >= o.min_tokens_for_punctuation and p.punctuation / p.tokens < o.min_punctuation_per_token:
        unit = "characters" if p.spaceless else "words"
        return Reject(
            RejectReason.MISSING_PUNCTUATION,
            f"{p.punctuation} punctuation marks in {p.tokens} {unit} (at least {o.min_punctuation_per_token:g} per {unit[:-1]})",
        )
    return None


def _itn(row, text, p, o):
    if p.unpunctuated_script:
        return None
    if p.tokens >= o.min_tokens_for_itn and p.sentence_marks and not p.clause_marks:
        return Reject(
            RejectReason.RULE_BASED_ITN,
            f"{p.tokens} tokens with {p.sentence_marks} sentence marks but no comma, question or exclamation mark",
        )
    return None


def _repetition(row, text, p, o):
    if p.tokens < o.min_tokens_for_repetition:
        return None
    ratio = max_chunk_compression_ratio(text)
    if ratio > o.max_compression_ratio:
        return Reject(RejectReason.REPETITIVE_TEXT, f"gzip compression ratio {ratio:.2f} (limit {o.max_compression_ratio:g})")
    share = repeated_ngram_share(text, p.spaceless)
    if share > o.max_repeated_ngram_share:
        return Reject(RejectReason.REPETITIVE_TEXT, f"{share:.0%} of n-grams repeat earlier ones (limit {o.max_repeated_ngram_share:.0%})")
    return None


RULES: tuple[Rule, ...] = (_provenance, _markers, _uppercase, _lowercase, _repetition, _punctuation, _itn)


def judge_transcript(row: dict[str, Any], options: MachineGeneratedOptions) -> Reject | None:
    """The first rule that fires, or None for a transcript that looks human."""
    text = row.get("transcript_text") or ""
    p = profile(text)
    for rule in RULES:
        verdict = rule(row, text, p, options)
        if verdict is not None:
            return verdict
    return None


def detect_machine_generated(batch: pa.Table, options: MachineGeneratedOptions) -> pa.Table:
    return map_rows(batch, lambda row: judge_transcript(row, options) or row)
