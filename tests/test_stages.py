"""Stage functions that no other quick test calls directly, each on a three-row table in this process (no Ray):
the transcript loader, the decoder, the pseudo-label check, the reference comparison, and the two Whisper model
stages with the tiny random model (the real code path, loaded once per module)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.io.media import decode_audio as decode_file
from pipeline.io.media import encode_flac
from pipeline.schema import table_from_rows
from pipeline.stage import Stage, run_stages
from stages.check_pseudo_labels import PseudoLabelVerdicts, check_pseudo_labels
from stages.compare_with_reference import CompareOptions, compare_with_reference
from stages.decode_audio import DecodeOptions, decode_audio
from stages.score_windows import load_scoring_model, score_windows
from stages.languages import LanguageOptions
from stages.load_transcript import TranscriptOptions, load_transcript
from stages.segment_at_silences import VadOptions, segment_at_silences
from stages.transcribe_windows import (
    HallucinationOptions, TranscribeStageOptions, WhisperOptions, load_transcriber, transcribe_windows,
)
from pipeline.whisper.engines import DecodingOptions
from support.data import JFK, JFK_TEXT, srt, write_wav
from support.output import reasons_of


def test_load_transcript_reads_files_and_inline_text(tmp_path):
    (tmp_path / "a.srt").write_text(srt([(0.0, 1.5, "Hello there."), (1.5, 3.0, "General Kenobi.")]))
    (tmp_path / "b.srt").write_bytes(b"\xff\xfe\x00garbage")
    batch = table_from_rows([
        {"source_id": "a", "source": "a", "transcript_path": str(tmp_path / "a.srt"), "inline_text": None, "language": "en"},
        {"source_id": "b", "source": "b", "transcript_path": str(tmp_path / "b.srt"), "inline_text": None, "language": None},
        {"source_id": "c", "source": "c", "transcript_path": None, "inline_text": "Just a sentence.", "language": None},
    ])
    out = {r["source_id"]: r for r in load_transcript(batch, TranscriptOptions()).to_pylist()}
    assert out["a"]["transcript_format"] == "srt" and [c["text"] for c in out["a"]["cues"]] == ["Hello there.", "General Kenobi."]
    assert out["a"]["transcript_text"] == "Hello there. General Kenobi."
    assert out["b"]["reject_reason"] in ("bad_encoding", "bad_transcript_format", "empty_transcript")
    assert out["c"]["cues"] is None and out["c"]["transcript_text"] == "Just a sentence."


def test_decode_audio_gives_pcm_and_duration_or_a_reject(tmp_path):
    write_wav(tmp_path / "tone.wav", 1.25)
    (tmp_path / "broken.mp3").write_bytes(b"ID3" + bytes(500))
    batch = table_from_rows([
        {"source_id": "jfk", "source": "jfk", "audio_path": str(JFK)},
        {"source_id": "tone", "source": "tone", "audio_path": str(tmp_path / "tone.wav")},
        {"source_id": "broken", "source": "broken", "audio_path": str(tmp_path / "broken.mp3")},
    ])
    out = {r["source_id"]: r for r in decode_audio(batch, DecodeOptions()).to_pylist()}
    assert out["tone"]["duration_ms"] == 1250 and len(out["tone"]["pcm"]) == 1250 * 16 * 2
    assert abs(out["jfk"]["duration_ms"] - 11_000) < 100
    assert out["broken"]["reject_reason"] == "bad_audio"


def test_pseudo_label_check_uses_wer_or_cer_by_language():
    verdicts = PseudoLabelVerdicts((("en-bad", "en", 0.6, 0.3), ("en-ok", "en", 0.1, 0.05), ("zh-bad", "zh", 0.0, 0.5)), 0.3, 0.2)
    batch = table_from_rows([{"source_id": s, "source": s} for s in ("en-bad", "en-ok", "zh-bad", "unscored")])
    assert reasons_of(check_pseudo_labels(batch, verdicts)) == {"en-bad": "high_error_rate", "en-ok": None, "zh-bad": "high_error_rate", "unscored": None}


def test_compare_with_reference_scores_words_and_characters():
    segments = lambda text, flag=None: [{"window_index": 0, "start_ms": 0, "end_ms": 1000, "text": text, "avg_logprob": -0.2,  # noqa: E731
                                         "compression_ratio": 1.2, "no_speech_prob": 0.0, "temperature": 0.0, "flag": flag}]
    batch = table_from_rows([
        {"source_id": "same", "source": "/data/talks/a.opus", "transcript_text": "Hello, world.", "segments": segments("hello world"), "source_language": "en", "metadata": "{}"},
        {"source_id": "half", "source": "/data/talks/b.opus", "transcript_text": "red green blue black", "segments": segments("red green"), "source_language": "en", "metadata": "{}"},
        {"source_id": "flagged", "source": "/data/calls/c.opus", "transcript_text": "spoken words", "segments": segments("spoken words", "repeated_ngram"),
         "source_language": None, "language": "en", "metadata": json.dumps({"uploader": "x"})},
    ])
    out = {r["source_id"]: r for r in compare_with_reference(batch, CompareOptions()).to_pylist()}
    assert out["same"]["wer"] == 0.0 and out["same"]["group"] == "/data/talks"
    assert out["half"]["word_errors"] == 2 and out["half"]["reference_words"] == 4
    assert out["flagged"]["wer"] == 1.0  # flagged segments are not the hypothesis
    assert compare_with_reference(batch, CompareOptions(group_by="uploader")).to_pylist()[2]["group"] == "x"


@pytest.fixture(scope="module")
def tiny_language_model():
    return load_scoring_model(LanguageOptions(model="tiny-random"))


def test_window_scoring_records_language_and_agreement_per_window(tiny_language_model):
    pcm = decode_file(JFK)
    window = lambda k, speech=True: {"segment_id": f"s-{k}", "window_index": k, "start_ms": 0, "end_ms": 11000,  # noqa: E731
                                     "flac": encode_flac(pcm), "text": JFK_TEXT, "text_timestamped": None, "prev_text": "", "has_speech": speech}
    batch = table_from_rows([
        {"source_id": "one", "source": "one", "language": "en", "windows": [window(0)]},
        {"source_id": "two", "source": "two", "language": "de", "windows": [window(0), window(1)]},
        {"source_id": "silent", "source": "silent", "language": "en", "windows": [window(0, speech=False)]},
    ])
    out = {r["source_id"]: r for r in score_windows(batch, LanguageOptions(model="tiny-random"), tiny_language_model).to_pylist()}
    for source in ("one", "two"):
        probs = json.loads(out[source]["audio_language_probs"])
        assert out[source]["audio_language"] in probs and 0.0 <= out[source]["audio_language_prob"] <= 1.0
        assert out[source]["language"] in probs  # the transcript's language is always recorded, for the agreement rule
        for window in out[source]["windows"]:  # every speech window scored, in its own text's language (English here)
            assert window["language"] == "en" and window["languages"] == ["en"] and window["transcript_language"] == "en"
            assert "en" in json.loads(window["audio_language_probs"]) and 0.0 <= window["no_speech_prob"] <= 1.0
            assert window["agreement_logprob"] < 0 and 0.0 <= window["agreement_unlikely_share"] <= 1.0 and window["agreement_tokens"] > 10
    assert out["silent"]["audio_language"] is None and out["silent"]["windows"][0]["agreement_logprob"] is None  # no speech: nothing to judge
    capped = score_windows(batch, LanguageOptions(model="tiny-random", max_windows=1), tiny_language_model).to_pylist()[1]["windows"]
    assert [w["agreement_logprob"] is not None for w in capped] == [True, False]


def test_transcribe_stage_on_windows_cut_at_silences(tmp_path):
    write_wav(tmp_path / "tone.wav", 2.0)
    batch = table_from_rows([
        {"source_id": "jfk", "source": "jfk", "audio_path": str(JFK), "language": "en"},
        {"source_id": "tone", "source": "tone", "audio_path": str(tmp_path / "tone.wav"), "language": None},
        {"source_id": "missing", "source": "missing", "audio_path": str(tmp_path / "nope.wav"), "language": None},
    ])
    options = TranscribeStageOptions(WhisperOptions(engine="openai-whisper", model="tiny-random"),
                                     DecodingOptions(temperatures=(0.0,)), HallucinationOptions())
    stages = [
        Stage("decode_audio", decode_audio, DecodeOptions()),
        Stage("segment_at_silences", segment_at_silences, VadOptions(method="energy")),
        Stage("transcribe_windows", transcribe_windows, options, setup=load_transcriber),
    ]
    out = {r["source_id"]: r for r in run_stages(stages, batch).to_pylist()}
    assert out["missing"]["reject_reason"] == "audio_not_found"
    jfk = out["jfk"]
    assert jfk["language"] == "en" and jfk["speech_ms"] > 5000  # the declared language is used, not detected
    assert all(0 <= s["start_ms"] <= s["end_ms"] <= jfk["duration_ms"] for s in jfk["segments"])
    assert all(np.isfinite(s["avg_logprob"]) for s in jfk["segments"])
    assert out["tone"]["language"] is not None or not out["tone"]["segments"]
