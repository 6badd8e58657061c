"""Turn corpus windows into Whisper training inputs: a log-mel spectrogram and the multitask token sequence.

The decoder sees, as in the Whisper paper (figure 1):

    [<|startofprev|> previous text]  <|startoftranscript|> <|lang|> <|transcribe|>|<|translate|>
    <|notimestamps|> text <|endoftext|>        or, with timestamps:   <|0.00|> text <|1.84|> ... <|endoftext|>

and a window without speech is ``<|startoftranscript|> <|nospeech|> <|endoftext|>``. The previous text is used with
probability ``prompt_probability`` and capped at ``n_text_ctx // 2 - 1`` tokens (as Whisper caps its prompt); the
loss never covers it. Timestamps are used with probability ``timestamp_probability`` when the window has them.
Both choices hash the segment id with ``seed``, so an example is the same in every run and on every worker.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.audio import N_SAMPLES, SAMPLE_RATE, TIMESTAMP_RESOLUTION_MS
from pipeline.schema import RejectReason
from pipeline.stage import Reject
from pipeline.text import leading_space

STAGE = "build_training_examples"
TIMESTAMP = re.compile(r"<\|(\d+\.\d\d)\|>")


@dataclass(frozen=True)
class ExampleOptions:
    prompt_probability: float = 0.5  # share of examples conditioned on the previous text (when there is one)
    timestamp_probability: float = 0.5  # share of timed examples trained with timestamp tokens
    seed: int = 0  # of the two choices above
    n_mels: int = 80  # the model's (80; 128 for large-v3): set by the train job from the checkpoint
    n_vocab: int = 51865  # the model's vocabulary: chooses the tokenizer (multilingual, number of languages)
    n_text_ctx: int = 448  # the decoder's context: longer sequences are rejected

    def __post_init__(self) -> None:
        if not (0.0 <= self.prompt_probability <= 1.0 and 0.0 <= self.timestamp_probability <= 1.0):
            raise ValueError("prompt_probability and timestamp_probability must be between 0 and 1")


@lru_cache(maxsize=8)
def tokenizer_for(n_vocab: int):
    """openai-whisper's tokenizer for a model with this vocabulary (as ``Whisper.is_multilingual`` decides)."""
    from whisper.tokenizer import get_tokenizer

    multilingual = n_vocab >= 51865
    return get_tokenizer(multilingual, num_languages=n_vocab - 51765 - int(multilingual))


def _choose(segment_id: str, what: str, seed: int, probability: float) -> bool:
    digest = hashlib.sha256(f"{seed}:{what}:{segment_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < probability


def _spaced(text: str) -> str:
    """Whisper's text tokens start with a space, except in scripts written without spaces."""
    text = text.strip()
    return leading_space(text) + text if text else text


def _encode_timestamped(tokenizer, text: str) -> list[int]:
    """``<|0.00|> Hello.<|1.84|>`` -> timestamp and text tokens."""
    tokens: list[int] = []
    position = 0
    for match in TIMESTAMP.finditer(text):
        if match.start() > position:
            tokens += tokenizer.encode(text[position:match.start()])
        step = round(float(match.group(1)) * 1000) // TIMESTAMP_RESOLUTION_MS
        tokens.append(tokenizer.timestamp_begin + step)
        position = match.end()
    if position < len(text):
        tokens += tokenizer.encode(text[position:])
    return tokens


def example_tokens(row: dict[str, Any], options: ExampleOptions) -> tuple[list[int], int] | Reject:
    """The full token sequence of a corpus row and how many leading tokens are prompt (no loss on them)."""
    tokenizer = tokenizer_for(options.n_vocab)
    segment_id = row["segment_id"]
    if not row.get("has_speech", True):
        return [tokenizer.sot, tokenizer.no_speech, tokenizer.eot], 1
    language = row.get("language")
    if language not in tokenizer.all_language_codes:
        return Reject(RejectReason.LANGUAGE_UNKNOWN, f"language {language!r} has no Whisper token")
    task = tokenizer.translate if row.get("task") == "translate" else tokenizer.transcribe
    head = [tokenizer.sot, tokenizer.to_language_token(language), task]
    timed = row.get("text_timestamped") and _choose(segment_id, "timestamps", options.seed, options.timestamp_probability)
    if timed:
        body = _encode_timestamped(tokenizer, row["text_timestamped"])
    else:
        head.append(tokenizer.no_timestamps)
        body = tokenizer.encode(_spaced(row.get("text") or ""))
    target = head + body + [tokenizer.eot]
    if len(target) > options.n_text_ctx:
        return Reject(RejectReason.TOO_MANY_TOKENS, f"{len(target)} tokens, the decoder holds {options.n_text_ctx}")
    prompt: list[int] = []
    prev = (row.get("prev_text") or "").strip()
    if prev and _choose(segment_id, "prompt", options.seed, options.prompt_probability):
        room = min(options.n_text_ctx // 2 - 1, options.n_text_ctx - len(target) - 1)
        prev_tokens = tokenizer.encode(_spaced(prev))[-room:] if room > 0 else []
        if prev_tokens:
            prompt = [tokenizer.sot_prev, *prev_tokens]
    return prompt + target, len(prompt) + 1


def log_mel(flac: bytes, n_mels: int) -> np.ndarray:
    """Whisper's input for a window: its audio padded with silence to 30 s, as ``whisper.log_mel_spectrogram``."""
    import soundfile
    import torch
    import whisper

    audio, rate = soundfile.read(io.BytesIO(flac), dtype="float32")
    if rate != SAMPLE_RATE:
        raise ValueError(f"window audio is {rate} Hz, Whisper needs {SAMPLE_RATE}")
    audio = whisper.pad_or_trim(torch.from_numpy(audio.reshape(-1)), N_SAMPLES)
    return whisper.log_mel_spectrogram(audio, n_mels=n_mels).numpy()


EXAMPLE_SCHEMA = pa.schema(
    [
        ("segment_id", pa.string()),
        ("source_id", pa.string()),
        ("language", pa.string()),
        ("task", pa.string()),
        ("has_speech", pa.bool_()),
        ("code_switched", pa.bool_()),  # its source switches language (a window of the code-switched subset)
        ("text", pa.string()),
        ("mel", pa.large_binary()),  # float32, n_mels x 3000, row-major
        ("tokens", pa.list_(pa.int32())),
        ("loss_start", pa.int32()),
        ("reject_reason", pa.string()),  # a window no example could be built from (the trainer counts and skips it)
        ("reject_detail", pa.string()),
    ]
)


def build_training_examples(batch: pa.Table, options: ExampleOptions) -> pa.Table:
    """Corpus rows -> one example row each (``EXAMPLE_SCHEMA``), always with the same columns."""
    rows = []
    for row in batch.to_pylist():
        out = {k: row.get(k) for k in ("segment_id", "source_id", "language", "task", "has_speech", "code_switched", "text")}
        built = example_tokens(row, options)
        if not isinstance(built, Reject):
            try:
                out["mel"] = log_mel(row["audio"]["bytes"], options.n_mels).astype("<f4").tobytes()
                out["tokens"], out["loss_start"] = built
            except Exception as exc:  # a window we wrote ourselves should always decode: say which one did not
                built = Reject(RejectReason.BAD_AUDIO, f"window audio does not decode: {exc}")
        if isinstance(built, Reject):
            out.update(reject_reason=built.reason.value, reject_detail=built.detail)
        rows.append(out)
    return pa.Table.from_pylist(rows, schema=EXAMPLE_SCHEMA)
