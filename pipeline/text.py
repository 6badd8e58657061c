"""Text and script rules, defined once: which scripts are written without spaces, which have case, how casing and
punctuation are measured, how texts are normalised for comparison, and the repetition signals (word n-grams and
Whisper's gzip compression ratio). Every stage that asks one of these questions asks it here, so one threshold
means one thing everywhere.

Scripts are told apart by Unicode character names, as a person reading a code chart would: a character of the
CJK, Hiragana, Katakana, Thai, Lao, Khmer or Myanmar blocks (and the ideographic and full-width forms) belongs to a
script written without spaces between words; Latin, Greek, Cyrillic and Armenian letters are the cased ones.
Korean (Hangul) separates words with spaces and has no case.
"""

from __future__ import annotations

import functools
import re
import unicodedata
import zlib
from collections import Counter
from dataclasses import dataclass

SPACELESS_SCRIPTS = ("CJK", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR", "IDEOGRAPHIC", "FULLWIDTH")
CASED_SCRIPTS = ("LATIN", "GREEK", "CYRILLIC", "ARMENIAN")
UNPUNCTUATED_SCRIPTS = ("THAI", "LAO")  # written without sentence punctuation
# Languages scored by characters (CER), not words: those whose scripts are written without spaces.
SPACELESS_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "km", "my", "yue", "bo"})
CLAUSE_MARKS = frozenset(",，、،;；?？!！؟¿¡")  # what simple rule-based ITN never produces
SENTENCE_MARKS = frozenset(".。．!！?？؟।॥։።…")
# Marks whose presence says a transcript was punctuated by a person.
PUNCTUATION_MARKS = frozenset(",，、،;；?？!！؟¿¡.。．।॥։።…:：")
APOSTROPHES = frozenset("'\u2019\u2018\u02bc\u0060\u00b4\uff07")
_WORD = re.compile(r"\w+")


# --- scripts ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def is_spaceless_char(ch: str) -> bool:
    """A character of a script written without spaces between words (CJK, kana, Thai, Lao, Khmer, Myanmar)."""
    return bool(ch) and unicodedata.name(ch, "").startswith(SPACELESS_SCRIPTS)


@functools.lru_cache(maxsize=None)
def _is_cased_script(ch: str) -> bool:
    return unicodedata.name(ch, "").startswith(CASED_SCRIPTS)


@functools.lru_cache(maxsize=None)
def _is_unpunctuated_script(ch: str) -> bool:
    return unicodedata.name(ch, "").startswith(UNPUNCTUATED_SCRIPTS)


def _pattern_of(predicate) -> re.Pattern[str]:
    """A predicate over characters as one regex of code-point ranges: matching it over long texts with ``findall``
    or ``sub`` is far faster than a name lookup per character."""
    ranges, start = [], None
    for code in range(0x0E00, 0x31351):  # no spaceless character lies outside these (Thai to CJK extension G)
        inside = predicate(chr(code))
        if inside and start is None:
            start = code
        elif not inside and start is not None:
            ranges.append((start, code - 1))
            start = None
    return re.compile("[" + "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges) + "]")


@functools.lru_cache(maxsize=1)
def _spaceless_chars() -> re.Pattern[str]:
    return _pattern_of(is_spaceless_char.__wrapped__)


@functools.lru_cache(maxsize=1)
def _spaceless_letters() -> re.Pattern[str]:
    return _pattern_of(lambda ch: is_spaceless_char.__wrapped__(ch) and unicodedata.category(ch)[0] in "LM")


def word_count_outside_spaceless(text: str) -> int:
    """Words (``\\w+`` runs) of the scripts written with spaces: spaceless characters count as separators."""
    return len(_WORD.findall(_spaceless_chars().sub(" ", text)))


def is_spaceless(text: str) -> bool:
    """Mostly a script without spaces: more letters of such scripts than words of the others."""
    return len(_spaceless_letters().findall(text)) > word_count_outside_spaceless(text)


def join_texts(parts: list[str]) -> str:
    """Join pieces of text with a space, except between two characters of a script written without spaces."""
    out = ""
    for part in parts:
        part = part.strip()
        if not part:
            continue
        if out and not (is_spaceless_char(out[-1]) and is_spaceless_char(part[0])):
            out += " "
        out += part
    return out


def leading_space(text: str) -> str:
    """``" "`` when Whisper writes this text with a space before it (every script but the spaceless ones)."""
    return "" if is_spaceless_char(text[:1]) else " "


@functools.lru_cache(maxsize=None)
def script_of(ch: str) -> str | None:
    """The script a letter is written in, as its Unicode name begins (``LATIN``, ``CJK``, ``HIRAGANA``, ...;
    kana and CJK count as one, ``CJK``, since Japanese mixes them); None for what is not a letter."""
    if not unicodedata.category(ch).startswith("L"):
        return None
    name = unicodedata.name(ch, "")
    if name.startswith(("CJK", "HIRAGANA", "KATAKANA", "IDEOGRAPHIC")):
        return "CJK"
    if name.startswith("FULLWIDTH LATIN"):
        return "LATIN"
    return name.split(" ", 1)[0] or None


def script_runs(text: str) -> dict[str, str]:
    """The text's letters grouped by script, each script's runs joined by spaces, in order of first appearance:
    ``"我们开了meeting，然后OK"`` -> ``{"CJK": "我们开了", "LATIN": "meeting OK"}`` (the marks between runs are
    dropped). How a window that mixes scripts, Mandarin with English words, is told apart."""
    runs: dict[str, list[str]] = {}
    current, piece = None, []
    for ch in text + " ":
        script = script_of(ch)
        if script is not None and script == current:
            piece.append(ch)
            continue
        if current is not None and piece:
            runs.setdefault(current, []).append("".join(piece))
        current, piece = (script, [ch]) if script is not None else (None, [])
    return {script: " ".join(parts) for script, parts in runs.items()}


# --- what the quality rules measure ----------------------------------------------------------------------

@dataclass(frozen=True)
class TextProfile:
    """What the transcript rules measure, computed in one pass over a text."""

    upper: int  # capitals of cased scripts
    lower: int  # small letters of cased scripts
    letters: int  # letters of any script
    tokens: int  # words, plus characters of scripts written without spaces
    punctuation: int
    clause_marks: int
    sentence_marks: int
    visible_chars: int
    spaceless: bool  # mostly a script written without spaces
    unpunctuated_script: bool  # mostly Thai or Lao, written without sentence punctuation

    @property
    def cased(self) -> int:
        return self.upper + self.lower

    def cased_share(self) -> float:
        """Letters of cased scripts among all letters: 1.0 for English, near 0 for Mandarin with a few loanwords."""
        return self.cased / self.letters if self.letters else 0.0


def profile(text: str) -> TextProfile:
    upper = lower = letters = punctuation = clause = sentence = visible = spaceless_chars = unpunctuated = 0
    for ch in text:
        if ch.isspace():
            continue
        visible += 1
        category = unicodedata.category(ch)
        letters += category[0] == "L"
        if category in ("Lu", "Ll"):
            if _is_cased_script(ch):
                upper += category == "Lu"
                lower += category == "Ll"
            elif is_spaceless_char(ch):
                spaceless_chars += 1
        elif category[0] in "LM" and is_spaceless_char(ch):
            spaceless_chars += 1
            unpunctuated += _is_unpunctuated_script(ch)
        elif category[0] == "P":
            punctuation += 1
            clause += ch in CLAUSE_MARKS
            sentence += ch in SENTENCE_MARKS
    words = word_count_outside_spaceless(text)
    return TextProfile(
        upper=upper, lower=lower, letters=letters, tokens=spaceless_chars + words, punctuation=punctuation,
        clause_marks=clause, sentence_marks=sentence, visible_chars=visible, spaceless=spaceless_chars > words,
        unpunctuated_script=unpunctuated * 2 > visible,
    )


MIN_CASED_SHARE = 0.9  # below: a mixed-script text, whose casing says nothing (Chinese writes loanwords lower case)


def casing_class(text: str, min_cased_share: float = MIN_CASED_SHARE) -> str:
    """``mixed``, ``upper``, ``lower``, or ``uncased`` (no cased letters, or too few among the text's letters to
    judge: Mandarin with English loanwords, Arabic with a brand name)."""
    p = profile(text)
    if not p.cased or p.cased_share() < min_cased_share:
        return "uncased"
    if p.upper and p.lower:
        return "mixed"
    return "upper" if p.upper else "lower"


def has_punctuation(text: str) -> bool:
    return not PUNCTUATION_MARKS.isdisjoint(text)


# --- normalisation ---------------------------------------------------------------------------------------

class _StripTable(dict):
    """``str.translate`` table filled on first sight of each character: P*/S* -> space, apostrophes deleted."""

    def __missing__(self, code: int) -> int | str | None:
        ch = chr(code)
        if ch in APOSTROPHES:
            value: int | str | None = None
        elif unicodedata.category(ch)[0] in "PS":
            value = " "
        else:
            value = code
        self[code] = value
        return value


_STRIP = _StripTable()


def normalize_for_comparison(text: str) -> str:
    """NFKC, case folded, punctuation and symbols removed (apostrophes joined: "don't" == "dont"; other marks
    become spaces: "well-known" == "well known"), whitespace collapsed. Copies that differ only in punctuation or
    case normalise to the same text."""
    text = unicodedata.normalize("NFKC", text).casefold().translate(_STRIP)
    return " ".join(text.split())


# --- repetition ------------------------------------------------------------------------------------------

def compression_ratio(text: str) -> float:
    """Whisper's repetition signal: UTF-8 bytes over their zlib-compressed size (zlib's default level, as in
    openai-whisper), so the one threshold 2.4 means the same for decoding and for transcript filters."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def max_chunk_compression_ratio(text: str, chunk_chars: int = 500) -> float:
    """The worst compression ratio over consecutive stretches (a whole long text compresses well even when human)."""
    text = " ".join(text.split())
    if not text:
        return 0.0
    step = chunk_chars // 2
    return max(compression_ratio(text[start : start + chunk_chars]) for start in range(0, max(len(text) - chunk_chars, 0) + 1, step))


def repetition_units(text: str, spaceless: bool) -> list[str]:
    """Words (case folded), or non-space characters for scripts written without spaces."""
    return [c for c in text if not c.isspace()] if spaceless else _WORD.findall(text.casefold())


def ngram_counts(units: list[str], n: int) -> Counter:
    return Counter(tuple(units[i : i + n]) for i in range(len(units) - n + 1))


def repeated_ngram_share(text: str, spaceless: bool, words: int = 4) -> float:
    """Share of n-grams (``words`` words, twice as many characters in spaceless scripts) seen before in the text."""
    counts = ngram_counts(repetition_units(text, spaceless), words * (2 if spaceless else 1))
    total = sum(counts.values())
    return 1.0 - len(counts) / total if total else 0.0
