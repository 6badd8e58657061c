"""One Whisper engine interface for language ID, transcription and evaluation, with two implementations.

``openai-whisper`` runs on torch (fp16 on GPU, fp32 on CPU) and ``faster-whisper`` on CTranslate2 (int8 on CPU,
fp16 on GPU). Both take batches of ≤30 s windows of 16 kHz audio and decode them in one forward pass, and both
keep Whisper's safeguards per item: temperature fallback when the compression ratio or the average log
probability fails its threshold (only the failed items are decoded again), and silence detection
(``no_speech_prob`` above its threshold with a low log probability: no fallback, no text). Load an engine once
per worker (``load_engine``), then call it on batches.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from pipeline.audio import N_SAMPLES, SAMPLE_RATE, TIMESTAMP_RESOLUTION_MS
from pipeline.text import compression_ratio
from pipeline.whisper.models import ModelRef, load_openai_whisper, prepare_model

ENGINES = ("openai-whisper", "faster-whisper")


@dataclass(frozen=True)
class DecodingOptions:
    language: str | None = None  # None: detected per window
    task: str = "transcribe"  # or "translate" (X -> English)
    beam_size: int | None = None  # beam search at temperature 0; None: greedy (openai-whisper's CLI uses 5)
    best_of: int | None = None  # candidates sampled at temperatures > 0 (the CLI uses 5)
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)  # tried in order while a window fails
    compression_ratio_threshold: float | None = 2.4  # gzip ratio above this: too repetitive, retry hotter
    logprob_threshold: float | None = -1.0  # average log probability below this: retry hotter
    no_speech_threshold: float | None = 0.6  # with a low log probability: silence, no text
    without_timestamps: bool = False  # True: <|notimestamps|>, one segment per window (unless word_timestamps)
    # Word timings from the cross-attention alignment of the decoded text (DTW over the alignment heads, what
    # openai-whisper's and faster-whisper's word_timestamps do, on the encoder output already computed); segments
    # are then cut from the words (``segments_from_words``) instead of from timestamp tokens.
    word_timestamps: bool = False

    def __post_init__(self) -> None:
        if self.task not in ("transcribe", "translate"):
            raise ValueError(f"task must be transcribe or translate, not {self.task!r}")
        if not self.temperatures or any(t < 0 for t in self.temperatures):
            raise ValueError("temperatures must be a non-empty list of values >= 0")
        if self.beam_size is not None and self.beam_size < 1 or self.best_of is not None and self.best_of < 1:
            raise ValueError("beam_size and best_of must be at least 1")


@dataclass(frozen=True)
class Segment:
    start: float  # seconds from the window start
    end: float
    text: str


@dataclass(frozen=True)
class Word:
    start: float  # seconds from the window start
    end: float
    text: str  # with its leading space, as Whisper writes it
    probability: float


@dataclass(frozen=True)
class WindowTranscript:
    text: str
    segments: tuple[Segment, ...]
    language: str
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    temperature: float
    tokens: tuple[int, ...] = field(default=(), repr=False)
    language_prob: float | None = None  # when the language was detected on this window
    language_probs: dict[str, float] | None = field(default=None, repr=False)  # every language's, when detected
    # Where the text is known complete (seconds: the end of the last closed segment, or of the last aligned word;
    # None without timestamps or words), and
    # whether Whisper signalled that the speech goes on past it (a timestamp pair ends the window: the sequential
    # loops continue from there, see ``resume_point``).
    complete_until: float | None = None
    continues: bool = False
    words: tuple[Word, ...] = field(default=(), repr=False)  # with word_timestamps

    @property
    def is_silence(self) -> bool:
        return not self.text


@dataclass(frozen=True)
class WindowScore:
    """What one encoder pass over a window says about it and its transcript (``Engine.score``): the audio's
    language probabilities, the no-speech probability, and how well the given transcript agrees with the speech:
    the mean log-probability of its text tokens under teacher forcing (in the transcript's language) and the share
    of those tokens the model finds very unlikely."""

    language_probs: dict[str, float]
    no_speech_prob: float
    mean_logprob: float | None  # None: no text tokens to score
    unlikely_share: float | None  # of text tokens with probability below UNLIKELY_TOKEN_PROB
    tokens: int


UNLIKELY_TOKEN_PROB = 0.01


def _agreement(token_logprobs: Sequence[float]) -> tuple[float | None, float | None]:
    if not len(token_logprobs):
        return None, None
    values = np.asarray(token_logprobs, dtype=np.float64)
    return float(values.mean()), float((values < np.log(UNLIKELY_TOKEN_PROB)).mean())


class Engine(Protocol):
    name: str

    def detect_language(self, audios: Sequence[np.ndarray]) -> list[dict[str, float]]: ...

    def score(self, audios: Sequence[np.ndarray], texts: Sequence[str], languages: Sequence[str | None]) -> list[WindowScore]: ...

    def transcribe(self, audios: Sequence[np.ndarray], options: DecodingOptions) -> list[WindowTranscript]: ...


def as_float_audio(audio: np.ndarray) -> np.ndarray:
    """16 kHz mono as float32 in [-1, 1] (int16 PCM is scaled), at most one window long."""
    audio = np.asarray(audio)
    if audio.dtype == np.int16:
        audio = audio.astype(np.float32) / 32768.0
    audio = audio.astype(np.float32, copy=False)
    if audio.ndim != 1:
        raise ValueError("audio must be 1-D (16 kHz mono)")
    if len(audio) > N_SAMPLES:
        raise ValueError(f"a window holds at most {N_SAMPLES} samples (30 s), got {len(audio)}")
    return audio


@dataclass
class _Raw:
    """One decoding attempt of one window, before segments are built."""

    tokens: list[int]
    text: str
    language: str
    avg_logprob: float
    no_speech_prob: float
    temperature: float
    compression_ratio: float = 0.0
    language_prob: float | None = None
    language_probs: dict[str, float] | None = None

    def __post_init__(self) -> None:
        self.compression_ratio = compression_ratio(self.text)


def _needs_fallback(raw: _Raw, options: DecodingOptions) -> bool:
    failed = (options.compression_ratio_threshold is not None and raw.compression_ratio > options.compression_ratio_threshold) or (
        options.logprob_threshold is not None and raw.avg_logprob < options.logprob_threshold
    )
    return failed and not _is_silence(raw, options)


def _is_silence(raw: _Raw, options: DecodingOptions) -> bool:
    return (
        options.no_speech_threshold is not None
        and raw.no_speech_prob > options.no_speech_threshold
        and options.logprob_threshold is not None
        and raw.avg_logprob < options.logprob_threshold
    )


def sampling_seed(audios: Sequence[np.ndarray], temperature: float) -> int:
    """A seed from the retried windows' own samples: a batch of retries samples the same way on every run (the
    windows that fail together on one run fail together on the next)."""
    digest = 0
    for audio in audios:
        digest = zlib.crc32(np.ascontiguousarray(audio).tobytes(), digest)
    return (digest + round(temperature * 1000)) % 2**31


def decode_with_fallback(
    n: int,
    decode: Callable[[list[int], float], list[_Raw]],
    options: DecodingOptions,
    reseed: Callable[[list[int], float], None] | None = None,
) -> list[_Raw]:
    """Whisper's temperature fallback, per item: only windows that failed are decoded again, hotter, all of them in
    one batched call per temperature (on a GPU a serial retry queue would leave it idle). With ``reseed``, the
    sampler is seeded from the retried windows before each sampled call (``reseed(indices, t)``)."""
    final: list[_Raw | None] = [None] * n
    attempts: list[list[_Raw]] = [[] for _ in range(n)]
    pending = list(range(n))
    for temperature in options.temperatures:
        if not pending:
            break
        if temperature > 0 and reseed is not None:
            reseed(pending, temperature)
        attempt = decode(pending, temperature)
        still = []
        for index, raw in zip(pending, attempt):
            attempts[index].append(raw)
            if _needs_fallback(raw, options):
                still.append(index)
            else:
                final[index] = raw
        pending = still
    for index in pending:  # every temperature failed: the most likely attempt that is not repetitive
        tried = attempts[index]
        good = [r for r in tried if options.compression_ratio_threshold is None or r.compression_ratio <= options.compression_ratio_threshold]
        best = max(good or tried, key=lambda r: r.avg_logprob)
        best.temperature = tried[-1].temperature
        final[index] = best
    return [r for r in final if r is not None]


def segments_from_tokens(tokens: Sequence[int], timestamp_begin: int, decode_text: Callable[[list[int]], str], duration: float) -> list[Segment]:
    """Split a window's tokens at timestamp tokens (``<|t0|> text <|t1|>``) into timed segments."""
    step = TIMESTAMP_RESOLUTION_MS / 1000
    segments: list[Segment] = []
    start: float | None = None
    text_tokens: list[int] = []
    for token in tokens:
        if token >= timestamp_begin:
            time = (token - timestamp_begin) * step
            if start is None:
                start = time
            elif text_tokens:
                segments.append(Segment(start, time, decode_text(text_tokens).strip()))
                start, text_tokens = None, []
            else:
                start = time
        else:
            if start is None:
                start = segments[-1].end if segments else 0.0
            text_tokens.append(token)
    if text_tokens:
        segments.append(Segment(start or 0.0, max(duration, start or 0.0), decode_text(text_tokens).strip()))
    return [s for s in segments if s.text]


def completion(tokens: Sequence[int], timestamp_begin: int) -> tuple[float | None, bool]:
    """(complete_until, continues) of a window's tokens: the time of its last closing timestamp, and whether the
    tokens end with two timestamps in a row (the end of one segment and the start of one Whisper did not write:
    openai-whisper's loop then seeks to the first of the two). Text after the last timestamp (a decode cut at its
    length limit) leaves the window complete to that timestamp, not continuing."""
    stamps = [i for i, t in enumerate(tokens) if t >= timestamp_begin]
    if not stamps:
        return None, False
    step = TIMESTAMP_RESOLUTION_MS / 1000
    last = stamps[-1]
    if last == len(tokens) - 1 and len(stamps) > 1 and stamps[-2] == last - 1:
        return (tokens[last - 1] - timestamp_begin) * step, True
    return (tokens[last] - timestamp_begin) * step, False


SENTENCE_END = tuple(".!?。！？…")
CLAUSE_END = tuple(",;:、，；：")
MAX_SEGMENT_S = 12.0  # a segment cut from words is closed at a clause end past this, and at any word past 1.5x it
MAX_WORD_GAP_S = 1.0  # a pause this long between words ends a segment


def segments_from_words(words: Sequence[Word], duration: float) -> list[Segment]:
    """Subtitle-sized segments from timed words: a segment ends after a sentence's last word, at a pause of
    ``MAX_WORD_GAP_S``, at a clause end once it is ``MAX_SEGMENT_S`` long, or at any word past 1.5 times that."""
    segments: list[Segment] = []
    current: list[Word] = []
    for i, word in enumerate(words):
        current.append(word)
        text = word.text.strip()
        following = words[i + 1] if i + 1 < len(words) else None
        length = word.end - current[0].start
        if (following is None or text.endswith(SENTENCE_END) or following.start - word.end >= MAX_WORD_GAP_S
                or (length >= MAX_SEGMENT_S and text.endswith(CLAUSE_END)) or length >= 1.5 * MAX_SEGMENT_S):
            joined = "".join(w.text for w in current).strip()
            if joined:
                start = min(max(current[0].start, 0.0), duration)
                segments.append(Segment(start, min(max(current[-1].end, start), duration), joined))
            current = []
    return segments


def word_timings(words: Sequence[Any], audio: np.ndarray | None = None, prepend: str = "\"'“¿([{-",
                 append: str = "\"'.。,，!！?？:：”)]}、") -> tuple[Word, ...]:
    """Words from an alignment (objects or dicts with word, tokens, start, end, probability), punctuation merged
    into its neighbours as openai-whisper does (``whisper.timing.merge_punctuations``); with the window's ``audio``,
    each word starts where its sound does (``starts_at_speech``)."""
    from whisper.timing import WordTiming, merge_punctuations

    timings = [w if isinstance(w, WordTiming) else WordTiming(w["word"], list(w["tokens"]), float(w["start"]), float(w["end"]), float(w["probability"]))
               for w in words]
    merge_punctuations(timings, prepend, append)
    found = tuple(Word(float(w.start), float(w.end), w.word, float(w.probability)) for w in timings if w.word)
    return starts_at_speech(found, audio) if audio is not None else found


FRAME_S = 0.02  # Whisper's time grid
MIN_PAUSE_S = 0.2  # silence this long at a word's aligned start is a pause the alignment gave to the word
MIN_QUIET_RANGE_DB = 12.0  # a window whose loud and quiet frames differ less has no pauses to find
MAX_LEAD_S = 0.2  # sound before the pause inside a word's aligned start: the previous word's tail, not this word


def starts_at_speech(words: Sequence[Word], audio: np.ndarray) -> tuple[Word, ...]:
    """Cross-attention alignment gives a word that follows a pause the pause too (its start lands where the word
    before it ends): a word whose aligned span opens with a silence of ``MIN_PAUSE_S`` or more (after at most
    ``MAX_LEAD_S`` of the previous word's tail) starts at the first 60 ms of sound after that silence. Silence is relative to the window (20 ms frames below its quiet level plus a quarter of its loud-to-quiet
    range), so the rule holds for quiet and loud recordings alike, and a window without clear pauses is left as is.
    Measured on JFK: "ask" after "fellow Americans," moves from 2.10 s to 3.26 s in the faster-whisper engine, where
    the speech starts (the openai-whisper engine's alignment put it at 3.18 s); the alignment alone varied with the
    BLAS kernels numpy ran on."""
    pcm = as_float_audio(audio)
    frame = int(FRAME_S * SAMPLE_RATE)
    n = len(pcm) // frame
    if n < 4 or not words:
        return tuple(words)
    level = 10 * np.log10(np.mean(pcm[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1) + 1e-10)
    quiet, loud = np.percentile(level, 10), np.percentile(level, 90)
    if loud - quiet < MIN_QUIET_RANGE_DB:
        return tuple(words)
    voiced = level > quiet + 0.25 * (loud - quiet)
    onset = voiced[:-2] & voiced[1:-1] & voiced[2:]  # 60 ms of sound
    pause, lead = round(MIN_PAUSE_S / FRAME_S), round(MAX_LEAD_S / FRAME_S)
    out = []
    for word in words:
        first, last = int(round(word.start / FRAME_S)), min(int(round(word.end / FRAME_S)), n - 2)
        # the pause: a silent run of MIN_PAUSE_S that begins within the word's first MAX_LEAD_S (what sounds before it
        # is the previous word's tail); the word starts at the first onset after it
        for begin in range(first, min(first + lead, last) + 1):
            if begin + pause <= last and not voiced[begin : begin + pause].any():
                after = np.flatnonzero(onset[begin + pause : last])
                if len(after):
                    at = begin + pause + int(after[0])
                    word = Word(at * FRAME_S, word.end, word.text, word.probability)
                break
        out.append(word)
    return tuple(out)


def _finish(raw: _Raw, timestamp_begin: int, decode_text: Callable[[list[int]], str], duration: float, options: DecodingOptions,
            words: Sequence[Word] = ()) -> WindowTranscript:
    silent = _is_silence(raw, options)
    complete_until, continues = (None, False) if silent or options.without_timestamps else completion(raw.tokens, timestamp_begin)
    if silent:
        segments: tuple[Segment, ...] = ()
    elif options.word_timestamps and raw.text:
        segments = tuple(segments_from_words(words, duration)) or (Segment(0.0, duration, raw.text.strip()),)
        complete_until = min(words[-1].end, duration) if words else None  # where the aligned text ends
    else:
        segments = tuple(segments_from_tokens(raw.tokens, timestamp_begin, decode_text, duration))
    return WindowTranscript(
        text="" if silent else raw.text,
        segments=segments,
        language=raw.language,
        avg_logprob=float(raw.avg_logprob),
        compression_ratio=float(raw.compression_ratio),
        no_speech_prob=float(raw.no_speech_prob),
        temperature=float(raw.temperature),
        tokens=tuple(raw.tokens),
        language_prob=raw.language_prob,
        language_probs=raw.language_probs,
        complete_until=complete_until,
        continues=continues,
        words=tuple(words),
    )


def half_precision(model: Any) -> Any:
    """The model in fp16 for its matrix work, its LayerNorms kept in fp32: openai-whisper's LayerNorm normalises a
    half input in fp32 and needs fp32 weights for it (a plain ``model.half()`` fails on the first encoder block).
    Half weights, not openai-whisper's own fp32 weights cast at every call, so no layer copies its weights per batch."""
    import torch

    model = model.half()
    for module in model.modules():
        if isinstance(module, torch.nn.LayerNorm):
            module.float()
    return model


class OpenAIWhisperEngine:
    """openai-whisper on torch: fp16 on GPU, fp32 on CPU; a batch is one forward pass."""

    name = "openai-whisper"

    def __init__(self, ref: ModelRef | None, device: str | None = None, threads: int = 0, model: Any = None):
        """The model ``ref`` names, loaded; or ``model``, an openai-whisper ``Whisper`` already in memory (the Ray-free
        GPU benchmark's random-weight models)."""
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = (model.to(self.device).eval() if model is not None else load_openai_whisper(ref, self.device))
        self.fp16 = self.device != "cpu"
        if self.fp16:
            self.model = half_precision(self.model)

    def _mel(self, audios: Sequence[np.ndarray]):
        import torch
        import whisper

        # On the model's device: on a GPU the STFT is a few kernels, not CPU time between batches.
        mels = [
            whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(as_float_audio(a)).to(self.device)), n_mels=self.model.dims.n_mels)
            for a in audios
        ]
        batch = torch.stack(mels)
        return batch.half() if self.fp16 else batch

    def _tokenizer(self, language: str | None = None, task: str = "transcribe"):
        import whisper

        return whisper.tokenizer.get_tokenizer(self.model.is_multilingual, num_languages=self.model.num_languages, language=language, task=task)

    def detect_language(self, audios: Sequence[np.ndarray]) -> list[dict[str, float]]:
        import torch

        if not audios:
            return []
        with torch.no_grad():
            _, probs = self.model.detect_language(self._mel(audios), self._tokenizer())
        return [dict(p) for p in probs]

    def score(self, audios: Sequence[np.ndarray], texts: Sequence[str], languages: Sequence[str | None]) -> list[WindowScore]:
        """One encoder pass per window and one decoder forward over the given tokens: its logits after
        <|startoftranscript|> give the language ID and the no-speech probability, the rest the text's agreement. A
        window's text is scored in its ``languages[i]`` (None: the detected one, which costs a language-ID step
        first), without timestamps."""
        import torch

        if not audios:
            return []
        multilingual = self.model.is_multilingual
        with torch.no_grad():
            features = self.model.embed_audio(self._mel(audios))
            tokenizer = self._tokenizer()
            unknown = [i for i, language in enumerate(languages) if not language]
            detected: dict[int, str] = {}
            if unknown and multilingual:  # a text in no known language is scored in the one the audio is in
                _, found = self.model.detect_language(features[unknown], tokenizer)
                detected = {i: max(p, key=p.get) for i, p in zip(unknown, found)}
            rows = []
            for i, text in enumerate(texts):
                language = languages[i] or detected.get(i, "en")
                prompt = list(self._tokenizer(language if multilingual else None).sot_sequence_including_notimestamps)
                rows.append((prompt, tokenizer.encode(" " + text.strip()) if text and text.strip() else []))
            width = max(len(p) + len(t) for p, t in rows)
            tokens = torch.full((len(rows), width), tokenizer.eot, dtype=torch.long)
            for i, (prompt, text_tokens) in enumerate(rows):
                tokens[i, : len(prompt) + len(text_tokens)] = torch.tensor(prompt + text_tokens)
            # One decoder forward: the logits after <|startoftranscript|> are Whisper's language ID (what
            # detect_language computes, over the language tokens) and its no-speech probability; the rest score the text.
            logits = self.model.logits(tokens.to(self.device), features).float()
            logprobs = torch.log_softmax(logits, dim=-1)
            if multilingual:
                language_ids = torch.tensor(list(tokenizer.all_language_tokens), device=logits.device)
                first = torch.softmax(logits[:, 0, language_ids], dim=-1).cpu().numpy()
                codes = list(tokenizer.all_language_codes)
                probs = [dict(zip(codes, map(float, row))) for row in first]
            else:
                probs = [{"en": 1.0} for _ in audios]
        scores = []
        for i, (prompt, text_tokens) in enumerate(rows):
            # no speech: the <|nospeech|> token's probability right after <|startoftranscript|>, as Whisper reads it
            no_speech = float(logprobs[i, prompt.index(tokenizer.sot), tokenizer.no_speech].exp())
            positions = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(text_tokens))
            given = logprobs[i, positions, torch.tensor(text_tokens, dtype=torch.long)].tolist() if text_tokens else []
            scores.append(WindowScore(probs[i], no_speech, *_agreement(given), len(text_tokens)))
        return scores

    def transcribe(self, audios: Sequence[np.ndarray], options: DecodingOptions) -> list[WindowTranscript]:
        import torch
        import whisper

        if not audios:
            return []
        if options.language is None and not self.model.is_multilingual:  # an English-only model: nothing to detect
            options = replace(options, language="en")
        with torch.no_grad():  # encoded once: whisper.decode takes encoder output as well as mel, retries reuse it
            features = self.model.embed_audio(self._mel(audios))
            detected = [dict(p) for p in self.model.detect_language(features, self._tokenizer())[1]] if options.language is None else None

        def decode(indices: list[int], temperature: float) -> list[_Raw]:
            decoding = whisper.DecodingOptions(
                task=options.task,
                language=options.language,
                temperature=temperature,
                beam_size=options.beam_size if temperature == 0 else None,
                best_of=options.best_of if temperature > 0 else None,
                without_timestamps=options.without_timestamps,
                fp16=self.fp16,
            )
            with torch.no_grad():
                results = whisper.decode(self.model, features[indices], decoding)
            return [
                _Raw(
                    list(r.tokens), r.text, r.language, r.avg_logprob, r.no_speech_prob, temperature,
                    language_prob=detected[i].get(r.language) if detected else None,
                    language_probs=detected[i] if detected else None,
                )
                for i, r in zip(indices, results)
            ]

        reseed = lambda indices, t: torch.manual_seed(sampling_seed([audios[i] for i in indices], t))  # noqa: E731
        raws = decode_with_fallback(len(audios), decode, options, reseed)
        tokenizer = self._tokenizer()
        words = self._words(features, raws, audios, options) if options.word_timestamps else [()] * len(raws)
        return [
            _finish(raw, tokenizer.timestamp_begin, tokenizer.decode, len(audio) / SAMPLE_RATE, options, timed)
            for raw, audio, timed in zip(raws, audios, words)
        ]

    def _words(self, features, raws: list[_Raw], audios: Sequence[np.ndarray], options: DecodingOptions) -> list[tuple[Word, ...]]:
        """Word timings of each decoded text: openai-whisper's own alignment (``whisper.timing.find_alignment``: the
        alignment heads' cross-attention, DTW), run as a decoder forward over the encoder output already computed."""
        import torch
        from whisper.timing import find_alignment

        decoder_only = _DecoderOnly(self.model)
        out: list[tuple[Word, ...]] = []
        for i, raw in enumerate(raws):
            tokenizer = self._tokenizer(raw.language if self.model.is_multilingual else None, options.task)
            text_tokens = [t for t in raw.tokens if t < tokenizer.eot]
            if not text_tokens or _is_silence(raw, options):
                out.append(())
                continue
            with torch.no_grad():
                timings = find_alignment(decoder_only, tokenizer, text_tokens, features[i], min(len(audios[i]), N_SAMPLES) // 160)
            out.append(word_timings(timings, audios[i]))
        return out


class _DecoderOnly:
    """A Whisper model whose forward takes the encoder's output instead of mel: ``find_alignment`` then runs the
    decoder alone on audio encoded once for the whole batch."""

    def __init__(self, model: Any):
        self._model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def __call__(self, features: Any, tokens: Any) -> Any:
        return self._model.decoder(tokens, features)


class FasterWhisperEngine:
    """faster-whisper (CTranslate2): int8 on CPU, float16 on GPU; a batch is one encoder and one generate call."""

    name = "faster-whisper"

    def __init__(self, ref: ModelRef, device: str | None = None, compute_type: str | None = None, threads: int = 0):
        import ctranslate2
        from faster_whisper import WhisperModel
        from faster_whisper.tokenizer import Tokenizer

        if ref.ct2_dir is None:  # load_engine converts once on disk (prepare_model); a bare ref may not have it
            ref = prepare_model(ref.spec, self.name)
        self.device = device or ("cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu")
        compute_type = compute_type or ("float16" if self.device == "cuda" else "int8")
        self.model = WhisperModel(str(ref.ct2_dir), device=self.device, compute_type=compute_type, cpu_threads=threads, local_files_only=True)
        self.tokenizer = Tokenizer(self.model.hf_tokenizer, self.model.model.is_multilingual, task="transcribe", language="en")

    def _features(self, audios: Sequence[np.ndarray]) -> np.ndarray:
        """Log-mel of each window alone, then zero-padded to 30 s of frames: what faster-whisper itself does (its
        batched pipeline and its sequential loop alike). Padding the audio with silence first instead, as
        openai-whisper does, cost this int8 model about 0.5 WER points on the benchmark set (BENCHMARKS.md)."""
        from faster_whisper.audio import pad_or_trim

        extractor = self.model.feature_extractor
        return np.stack([pad_or_trim(extractor(as_float_audio(a))[..., :-1]) for a in audios])

    def _language_probs(self, encoder_output) -> list[dict[str, float]]:
        return [{token[2:-2]: prob for token, prob in item} for item in self.model.model.detect_language(encoder_output)]

    def detect_language(self, audios: Sequence[np.ndarray]) -> list[dict[str, float]]:
        if not audios:
            return []
        return self._language_probs(self.model.encode(self._features(audios)))

    def score(self, audios: Sequence[np.ndarray], texts: Sequence[str], languages: Sequence[str | None]) -> list[WindowScore]:
        """One encoder pass per window; language ID, the no-speech probability (one decoder step) and CTranslate2's
        forced alignment (``Whisper.align``'s text-token probabilities) reuse it. A window's text is scored in its
        ``languages[i]`` (None: the detected one), without timestamps."""
        if not audios:
            return []
        features = self._features(audios)
        encoded = self.model.encode(features)
        probs = self._language_probs(encoded)
        chosen = [languages[i] or max(probs[i], key=probs[i].get) for i in range(len(audios))]
        no_timestamps = DecodingOptions(without_timestamps=True)
        prompts = [self._prompt(language, no_timestamps) for language in chosen]
        no_speech = [r.no_speech_prob for r in self.model.model.generate(encoded, [p[:1] for p in prompts], max_length=2, return_no_speech_prob=True)]
        text_tokens = [self.tokenizer.encode(" " + t.strip()) if t and t.strip() else [] for t in texts]
        frames = [min(len(a), N_SAMPLES) // 160 for a in audios]
        given: list[list[float]] = [[] for _ in audios]
        for language in sorted(set(chosen)):  # align takes one start sequence per call
            batch = [i for i, c in enumerate(chosen) if c == language and text_tokens[i]]
            if not batch:
                continue
            results = self.model.model.align(self._subset(encoded, features, batch), prompts[batch[0]], [text_tokens[i] for i in batch], [frames[i] for i in batch])
            for i, result in zip(batch, results):
                given[i] = [float(np.log(max(p, 1e-30))) for p in result.text_token_probs]
        return [WindowScore(probs[i], float(no_speech[i]), *_agreement(given[i]), len(text_tokens[i])) for i in range(len(audios))]

    def _prompt(self, language: str, options: DecodingOptions) -> list[int]:
        tok = self.tokenizer
        prompt = [tok.sot]
        if self.model.model.is_multilingual:
            prompt += [tok.tokenizer.token_to_id(f"<|{language}|>"), tok.translate if options.task == "translate" else tok.transcribe]
        if options.without_timestamps:
            prompt.append(tok.no_timestamps)
        return prompt

    def transcribe(self, audios: Sequence[np.ndarray], options: DecodingOptions) -> list[WindowTranscript]:
        import ctranslate2
        from faster_whisper.transcribe import get_suppressed_tokens

        if not audios:
            return []
        features = self._features(audios)
        encoded = self.model.encode(features)  # reused for language ID, the first pass and (on CPU) the retries
        if options.language is None and not self.model.model.is_multilingual:  # an English-only model
            options = replace(options, language="en")
        if options.language is None:
            detected = self._language_probs(encoded)
            languages = [max(p, key=p.get) for p in detected]
            language_probs = [p[lang] for p, lang in zip(detected, languages)]
        else:
            detected = [None] * len(audios)
            languages = [options.language] * len(audios)
            language_probs = [None] * len(audios)
        suppress = get_suppressed_tokens(self.tokenizer, [-1])

        def decode(indices: list[int], temperature: float) -> list[_Raw]:
            encoder_output = self._subset(encoded, features, indices)
            if temperature > 0:
                kwargs: dict[str, Any] = {"beam_size": 1, "num_hypotheses": options.best_of or 1, "sampling_topk": 0, "sampling_temperature": temperature}
            else:
                kwargs = {"beam_size": options.beam_size or 1}
            results = self.model.model.generate(
                encoder_output,
                [self._prompt(languages[i], options) for i in indices],
                max_length=self.model.max_length,
                return_scores=True,
                return_no_speech_prob=True,
                suppress_blank=True,
                suppress_tokens=suppress,
                max_initial_timestamp_index=50,
                **kwargs,
            )
            raws = []
            for i, result in zip(indices, results):
                tokens = result.sequences_ids[0]
                avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)  # length_penalty 1, as faster-whisper
                text = self.tokenizer.decode(tokens).strip()
                raws.append(_Raw(tokens, text, languages[i], avg_logprob, result.no_speech_prob, temperature,
                                 language_prob=language_probs[i], language_probs=detected[i]))
            return raws

        reseed = lambda indices, t: ctranslate2.set_random_seed(sampling_seed([audios[i] for i in indices], t))  # noqa: E731
        raws = decode_with_fallback(len(audios), decode, options, reseed)
        words = self._words(encoded, features, raws, audios, options) if options.word_timestamps else [()] * len(raws)
        return [
            _finish(raw, self.tokenizer.timestamp_begin, self.tokenizer.decode, len(audio) / SAMPLE_RATE, options, timed)
            for raw, audio, timed in zip(raws, audios, words)
        ]

    def _subset(self, encoded, features: np.ndarray, indices: list[int]):
        """The encoder output of some windows of a batch: sliced on CPU; CTranslate2 cannot slice device storage, so
        on a GPU those windows are encoded again."""
        import ctranslate2

        if len(indices) == len(features):
            return encoded
        if encoded.device == "cpu":
            return ctranslate2.StorageView.from_array(np.asarray(encoded)[indices])
        return self.model.encode(features[indices])

    def _words(self, encoded, features: np.ndarray, raws: list[_Raw], audios: Sequence[np.ndarray], options: DecodingOptions) -> list[tuple[Word, ...]]:
        """Word timings of each decoded text from CTranslate2's alignment (``Whisper.align``, through faster-whisper's
        ``find_alignment``) over the encoder output already computed, one call per language in the batch."""
        from faster_whisper.tokenizer import Tokenizer

        out: list[tuple[Word, ...]] = [()] * len(raws)
        eot = self.tokenizer.eot
        todo = [i for i, raw in enumerate(raws) if not _is_silence(raw, options) and any(t < eot for t in raw.tokens)]
        for language in sorted({raws[i].language for i in todo}):
            batch = [i for i in todo if raws[i].language == language]
            tokenizer = Tokenizer(self.model.hf_tokenizer, self.model.model.is_multilingual, task=options.task, language=language)
            found = self.model.find_alignment(
                tokenizer, [[t for t in raws[i].tokens if t < eot] for i in batch], self._subset(encoded, features, batch),
                [min(len(audios[i]), N_SAMPLES) // 160 for i in batch],
            )
            for i, timings in zip(batch, found):
                out[i] = word_timings(timings, audios[i])
        return out


def cpu_threads(threads: int = 0) -> int:
    """``threads``, or with 0 every core this process may use: Ray sets OMP_NUM_THREADS=1 in its workers, which
    would leave a model actor on one core while the CPU stages beside it need little."""
    if threads > 0:
        return threads
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def load_engine(engine: str, model: str, device: str | None = None, threads: int = 0, compute_type: str | None = None) -> Engine:
    """Resolve ``model`` (name or path, never downloaded) and load it in ``engine``: once per worker. ``compute_type``
    is CTranslate2's (int8, float32, float16, ...; default int8 on CPU, float16 on GPU); openai-whisper runs float32
    on CPU and float16 on GPU whatever it says."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    ref = prepare_model(model, engine)  # found on disk, converted there once if this engine reads the other format
    if engine == "openai-whisper":
        return OpenAIWhisperEngine(ref, device, cpu_threads(threads))
    if engine == "faster-whisper":
        return FasterWhisperEngine(ref, device, compute_type, threads=cpu_threads(threads))
    raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
