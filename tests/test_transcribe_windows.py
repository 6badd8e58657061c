"""wspsr transcribe on speech that changes: a window's text is complete up to its end (resumed decodes), each window
carries its own language, and each channel of a stereo call can be its own track. Real Whisper base on real speech
(JFK) and the sample's recordings (English and German speech)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import soundfile

from pipeline.io.media import decode_audio
from pipeline.whisper.engines import DecodingOptions, Segment, WindowTranscript, Word, completion, segments_from_words
from stages.segment_at_silences import VadOptions, segment_at_silences
from stages.transcribe_windows import HallucinationOptions, TranscribeStageOptions, WhisperOptions, resume_point
from support.data import JFK
from support.output import committed_rows

SAMPLE = Path(__file__).resolve().parent.parent / "sample"
GERMAN = SAMPLE / "media" / "de-long-vtt.opus"  # 79 s of German speech (espeak-ng), the sample's
EN_LONG = SAMPLE / "sources" / "en" / "en_long.opus"  # 80 s of English speech, three windows
TB = 50365  # <|0.00|> in Whisper's multilingual vocabulary


def _result(tokens: list[int], **kw) -> WindowTranscript:
    until, continues = completion(tokens, TB)
    return WindowTranscript("text", (), "en", -0.2, 1.2, 0.01, 0.0, tokens=tuple(tokens), complete_until=until, continues=continues, **kw)


def test_a_window_is_complete_until_its_last_closed_segment():
    # <|0.00|> a <|4.00|><|4.20|>  : Whisper's continuation signal: complete until 4.00, the speech goes on
    assert completion([TB, 1, TB + 200, TB + 210], TB) == (4.0, True)
    # <|0.00|> a <|4.00|>  : a single timestamp ends the text
    assert completion([TB, 1, TB + 200], TB) == (4.0, False)
    # text cut after its last timestamp (the length limit): complete until that timestamp
    assert completion([TB, 1, TB + 100, TB + 100, 2, 3], TB) == (2.0, False)
    assert completion([1, 2, 3], TB) == (None, False)  # without timestamps nothing is known


def test_resume_point_follows_the_signal_and_long_tails():
    options = WhisperOptions()
    assert resume_point(_result([TB, 1, TB + 200, TB + 210]), 9.0, options) == 4.0  # signal, 5 s left
    assert resume_point(_result([TB, 1, TB + 200, TB + 210]), 4.3, options) is None  # signal, 0.3 s left: padding
    assert resume_point(_result([TB, 1, TB + 200]), 9.0, options) == 4.0  # stopped 5 s before the window's end
    assert resume_point(_result([TB, 1, TB + 400]), 9.0, options) is None  # 1 s left: the VAD pad, not speech
    assert resume_point(_result([TB, 1, TB + 200]), 9.0, WhisperOptions(resume=False)) is None
    assert resume_point(_result([1, 2]), 9.0, options) is None


def test_segments_from_words_end_at_sentences_pauses_and_length():
    words = [Word(0.0, 0.4, " Hello", 0.9), Word(0.4, 0.8, " there.", 0.9), Word(1.0, 1.5, " Ask", 0.9), Word(1.5, 2.0, " not,", 0.9),
             Word(3.5, 4.0, " then", 0.9), Word(4.0, 4.4, " go", 0.9)]
    assert segments_from_words(words, 5.0) == [Segment(0.0, 0.8, "Hello there."), Segment(1.0, 2.0, "Ask not,"), Segment(3.5, 4.4, "then go")]
    long = [Word(i * 0.5, i * 0.5 + 0.4, f" w{i}" + ("," if i % 5 == 4 else ""), 0.9) for i in range(60)]
    cut = segments_from_words(long, 30.0)
    assert all(s.end - s.start <= 18.0 for s in cut) and " ".join(s.text for s in cut) == "".join(w.text for w in long).strip()
    assert segments_from_words([], 3.0) == [] and segments_from_words([Word(2.9, 3.4, " end", 0.9)], 3.0) == [Segment(2.9, 3.0, "end")]


def _stereo(path: Path) -> Path:
    """A call: JFK on the left channel, German speech on the right (26 s), talking at the same time at first."""
    right = decode_audio(GERMAN)[: 16000 * 26]
    left = decode_audio(JFK)
    left = np.concatenate([left, np.zeros(len(right) - len(left), np.int16)])
    soundfile.write(path, np.stack([left, right], axis=1), 16000, subtype="PCM_16")
    return path


def test_split_channels_decode_and_segment_each_channel_on_its_own(tmp_path):
    stereo = _stereo(tmp_path / "call.flac")
    both = decode_audio(stereo, keep_channels=True)
    jfk = decode_audio(JFK)
    assert both.shape == (16000 * 26, 2) and np.array_equal(both[: len(jfk), 0], jfk) and not both[len(jfk) :, 0].any()
    assert decode_audio(stereo).ndim == 1  # the default stays a downmix
    table = pa.table({"source_id": ["call"], "pcm": [both.tobytes()], "channels": [2]})
    windows = segment_at_silences(table, VadOptions()).column("speech_windows")[0].as_py()
    assert {w["channel"] for w in windows} == {0, 1}
    assert [w["window_index"] for w in windows] == list(range(len(windows)))
    left = next(w for w in windows if w["channel"] == 0)
    start = left["start_ms"] * 16
    assert np.array_equal(np.frombuffer(left["pcm"], "<i2"), both[start : start + len(left["pcm"]) // 2, 0])
    mono = pa.table({"source_id": ["call"], "pcm": [decode_audio(stereo).tobytes()]})
    assert {w["channel"] for w in segment_at_silences(mono, VadOptions()).column("speech_windows")[0].as_py()} == {None}


def _mixed_recording(path: Path) -> Path:
    """English (JFK three times, 2 s apart) for 37 s, then German for 40 s."""
    jfk, gap = decode_audio(JFK), np.zeros(32000, np.int16)
    pcm = np.concatenate([jfk, gap, jfk, gap, jfk, gap, decode_audio(GERMAN)[: 16000 * 40]])
    soundfile.write(path, pcm, 16000, subtype="PCM_16")
    return path


def _stage_output(path: Path, engine, whisper: WhisperOptions, decoding: DecodingOptions = DecodingOptions(), seconds: tuple[float, float] | None = None):
    from stages.transcribe_windows import transcribe_windows

    pcm = decode_audio(path)
    pcm = pcm[int(seconds[0] * 16000) : int(seconds[1] * 16000)] if seconds else pcm
    windows = segment_at_silences(pa.table({"source_id": ["x"], "pcm": [pcm.tobytes()]}), VadOptions())
    return transcribe_windows(windows, TranscribeStageOptions(whisper, decoding, HallucinationOptions()), engine).to_pylist()[0]


@pytest.fixture(scope="module", params=["faster-whisper", "openai-whisper"])
def engine(request):
    from pipeline.whisper.engines import load_engine

    return load_engine(request.param, "base")


@pytest.mark.slow
def test_each_window_carries_its_own_language(tmp_path, engine):
    mixed = _mixed_recording(tmp_path / "en_then_de.flac")
    whisper = WhisperOptions(engine=engine.name)
    out = _stage_output(mixed, engine, whisper)
    by_window: dict[int, set[str]] = {}
    for segment in out["segments"]:
        by_window.setdefault(segment["window_index"], set()).add(segment["language"])
        assert 0 < segment["language_prob"] <= 1
    first, last = by_window[min(by_window)], by_window[max(by_window)]
    assert first == {"en"} and last == {"de"}, by_window
    # the window where the speaker switches (JFK ends at 37 s, German starts at 39 s) carries both languages
    assert all(s["language"] == "de" for s in out["segments"] if s["start_ms"] >= 39_500), out["segments"]
    assert all(s["language"] == "en" for s in out["segments"] if s["end_ms"] <= 36_500), out["segments"]
    assert out["languages"][:2] in (["en", "de"], ["de", "en"]) and out["language"] in ("en", "de")
    english = " ".join(s["text"] for s in out["segments"] if s["window_index"] == min(by_window)).lower()
    assert "ask not what your country can do for you" in english
    # a given language is used for every window (the 20 s around the switch: both languages' speech)
    forced = _stage_output(mixed, engine, whisper, DecodingOptions(language="en"), seconds=(26.0, 46.0))
    assert {s["language"] for s in forced["segments"]} == {"en"} and forced["languages"] == ["en"]


@pytest.mark.slow
def test_aligned_timings_place_jfks_words_where_he_says_them(engine):
    """The default timings: text decoded without timestamp tokens, word times from the alignment over the same
    encoder output, segments cut from the words. JFK says "ask" after a pause, at about 3.1 s."""
    jfk = decode_audio(JFK)
    result = engine.transcribe([jfk], DecodingOptions(language="en", without_timestamps=True, word_timestamps=True))[0]
    words = [w.text.strip().lower().strip(",.") for w in result.words]
    assert words[:6] == ["and", "so", "my", "fellow", "americans", "ask"] and "".join(w.text for w in result.words).strip() == result.text.strip()
    ask = result.words[5]
    assert 2.4 <= ask.start <= 3.8 and result.words[0].start < 1.0 and result.words[-1].end <= 11.0
    assert all(a.start <= a.end <= b.start + 0.02 for a, b in zip(result.words, result.words[1:]))
    out = _stage_output(JFK, engine, WhisperOptions(engine=engine.name), DecodingOptions(language="en"))
    # one window: its words' segments, the same words as the direct decode (a comma may differ: the stage decodes with
    # its own defaults, and a comma after "Americans" is a coin toss for base on some BLAS kernels)
    words_only = lambda text: re.sub(r"[^\w\s]", "", text).split()  # noqa: E731
    assert words_only(" ".join(s["text"] for s in out["segments"])) == words_only(result.text)
    assert out["segments"][0]["start_ms"] < 1000 and out["segments"][-1]["end_ms"] <= 11_000


@pytest.fixture(scope="module")
def default_engine():
    from pipeline.whisper.engines import load_engine

    return load_engine(WhisperOptions().engine, "base")


@pytest.mark.slow
def test_a_decode_that_stops_early_is_resumed_from_its_last_timestamp(default_engine):
    """Timings from timestamp tokens: en_long's middle window (27-55 s) ends with "Is it because of that song?";
    Whisper base (faster-whisper, beam 5) stops before it, with the continuation signal, and the resumed decode
    writes it."""
    engine = default_engine
    whisper, decoding = WhisperOptions(timings="tokens"), DecodingOptions(beam_size=5, language="en")
    resumed = _stage_output(EN_LONG, engine, whisper, decoding, seconds=(27.0, 55.0))
    alone = _stage_output(EN_LONG, engine, WhisperOptions(timings="tokens", resume=False), decoding, seconds=(27.0, 55.0))
    text = " ".join(s["text"] for s in resumed["segments"]).lower()
    assert "song" in text
    # every segment of the plain decode is kept, in place; the resumed ones only add what came after
    assert {(s["start_ms"], s["text"]) for s in alone["segments"]} <= {(s["start_ms"], s["text"]) for s in resumed["segments"]}
    added = [s for s in resumed["segments"] if (s["start_ms"], s["text"]) not in {(a["start_ms"], a["text"]) for a in alone["segments"]}]
    ends = {s["window_index"]: max(a["end_ms"] for a in alone["segments"] if a["window_index"] == s["window_index"]) for s in added}
    assert all(s["start_ms"] >= ends[s["window_index"]] for s in added)
    starts = [s["start_ms"] for s in resumed["segments"]]
    assert starts == sorted(starts)


@pytest.mark.slow
def test_transcribe_job_splits_channels_and_lists_a_files_languages(tmp_path, local_ray):
    from jobs.transcribe import run

    data = tmp_path / "audio"
    data.mkdir()
    _stereo(data / "call.flac")
    _mixed_recording(data / "en_then_de.flac")
    out = tmp_path / "out"
    summary = run(["--inputs", str(data), "--out", str(out), "--formats", "parquet,json", "--channels", "split", "--quiet"])
    assert summary["accounting"]["ok"] and summary["inputs"]["kept"] == 2 and summary["files_multilingual"] == 2
    rows = committed_rows(out, "transcripts", ("source_id", "segment_index"))
    call = [r for r in rows if r["source"].endswith("call.flac")]
    left = " ".join(r["text"] for r in call if r["channel"] == 0).lower()
    assert "ask not what your country can do for you" in left
    assert {r["language"] for r in call if r["channel"] == 0} == {"en"} and {r["language"] for r in call if r["channel"] == 1} == {"de"}
    assert all(r["channel"] is None for r in rows if r["source"].endswith("en_then_de.flac"))  # mono: no channels
    doc = json.loads((out / "files" / "audio" / "en_then_de.json").read_text())
    assert sorted(doc["languages"]) == ["de", "en"] and {s["language"] for s in doc["segments"]} == {"en", "de"}


def test_timings_are_chosen_in_one_place(tmp_path):
    from jobs.transcribe import run
    from pipeline.config import ConfigError

    with pytest.raises(ValueError, match="timings"):
        WhisperOptions(timings="words")
    with pytest.raises(ConfigError, match="whisper.timings"):  # before any work starts
        run(["--inputs", str(JFK), "--out", str(tmp_path / "out"), "--set", "decoding.without_timestamps=true"])
    assert not (tmp_path / "out").exists()
