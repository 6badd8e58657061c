"""Every window judged against its own audio, on real speech with Whisper base in both engines: a recording that
switches language keeps each window in its own language, a transcript of another recording is rejected, the
right one is kept; then the corpus job end to end, the new columns read back from its Parquet."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.io.media import decode_audio as decode_file
from pipeline.io.media import encode_flac
from pipeline.schema import table_from_rows
from stages.judge_windows import judge_windows
from stages.languages import LanguageOptions
from stages.score_windows import load_scoring_model, mixed_languages, score_windows
from stages.segment_into_windows import SegmentOptions, segment_into_windows
from support.data import DATA, JFK, JFK_TEXT, srt
from support.output import committed_rows

SPEECH = DATA / "speech"  # short read clips in nine languages with their texts (tests/data/speech/references.jsonl)
SPANISH = [("es_pangrama.flac", "El veloz murciélago hindú comía feliz cardillo y kiwi."), ("es_conteo.flac", "Uno dos tres cuatro cinco seis siete ocho nueve diez.")]
# Another passage of the same speech (Kennedy's inaugural address): plausible English of the right length, not these words.
OTHER_TEXT = "We observe today not a victory of party but a celebration of freedom, symbolizing an end as well as a beginning."
SWITCH_AT = 31.0  # s: the Spanish starts after Whisper's 30 s window, so the two languages fall in different windows


def code_switched_recording() -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """Kennedy (real English speech) for 11 s, a pause, then Spanish read speech: one recording, one timed transcript."""
    jfk = decode_file(JFK)
    parts, cues, t = [jfk, np.zeros(int(SWITCH_AT * 16000) - len(jfk), dtype=np.int16)], [(0.3, 10.7, JFK_TEXT)], SWITCH_AT
    for name, text in SPANISH:
        clip = decode_file(SPEECH / name)
        cues.append((t + 0.05, t + len(clip) / 16000 - 0.05, text))
        parts += [clip, np.zeros(8000, dtype=np.int16)]
        t += len(clip) / 16000 + 0.5
    return np.concatenate(parts), cues


def source_row(source_id: str, pcm: np.ndarray, cues: list[tuple[float, float, str]], language: str) -> dict:
    return {
        "source_id": source_id, "source": source_id, "language": language, "transcript_text": " ".join(c[2] for c in cues),
        "cues": [{"start_ms": int(a * 1000), "end_ms": int(b * 1000), "text": text} for a, b, text in cues],
        "duration_ms": len(pcm) * 1000 // 16000, "pcm": pcm.astype("<i2").tobytes(), "invalid_cues": 0,
    }


@pytest.fixture(scope="module", params=["faster-whisper", "openai-whisper"])
def engine(request):
    options = LanguageOptions(engine=request.param, model="base")
    return options, load_scoring_model(options)


@pytest.mark.slow
def test_each_window_is_judged_against_its_own_audio(engine):
    options, model = engine
    switched, switched_cues = code_switched_recording()
    jfk = decode_file(JFK)
    rows = [
        source_row("switched", switched, switched_cues, "en"),
        source_row("right", jfk, [(0.3, 10.7, JFK_TEXT)], "en"),
        source_row("wrong", jfk, [(0.3, 10.7, OTHER_TEXT)], "en"),
    ]
    windows = segment_into_windows(table_from_rows(rows), SegmentOptions(no_speech_keep_rate=0.0))
    out = {r["source_id"]: r for r in judge_windows(score_windows(windows, options, model), options).to_pylist()}

    switched = out["switched"]
    assert switched["reject_reason"] is None and switched["code_switched"] and switched["source_languages"] == ["en", "es"]
    assert [(w["language"], w["task"]) for w in switched["windows"]] == [("en", "transcribe"), ("es", "transcribe")]
    english, spanish = switched["windows"]
    assert json.loads(english["audio_language_probs"])["en"] > 0.5 and json.loads(spanish["audio_language_probs"])["es"] > 0.5
    assert english["agreement_logprob"] > -1.0 and spanish["agreement_logprob"] > -1.0  # each transcript is its speech

    assert out["right"]["reject_reason"] is None and out["right"]["windows"][0]["agreement_logprob"] > -1.0
    assert not out["right"]["code_switched"] and out["right"]["source_languages"] == ["en"]
    wrong = out["wrong"]
    assert wrong["reject_reason"] == "misaligned_transcript" and "transcript agreement" in wrong["reject_detail"]
    assert wrong["windows"][0]["agreement_logprob"] < options.min_agreement_logprob


def _window(i: int, language: str, probs: dict[str, float], agreement: float, tokens: int = 20) -> dict:
    return {"segment_id": f"s-{i:05d}", "window_index": i, "start_ms": 30_000 * i, "end_ms": 30_000 * i + 29_000, "text": "t",
            "prev_text": "before", "has_speech": True, "language": language, "languages": [language], "audio_language_probs": json.dumps(probs),
            "agreement_logprob": agreement, "agreement_unlikely_share": 0.0, "agreement_tokens": tokens}


def _judge(windows: list[dict], language: str, source_probs: dict[str, float]) -> dict:
    row = {"source_id": "s", "source": "s", "language": language, "windows": windows, "dropped": [], "audio_language_probs": json.dumps(source_probs)}
    return judge_windows(table_from_rows([row]), LanguageOptions()).to_pylist()[0]


def test_judging_rules_per_window():
    de, en = {"de": 0.9, "en": 0.05}, {"en": 0.92, "de": 0.03}
    # a confident switch is kept in its own language; a wrong transcript is dropped as a stretch, and the window
    # after it is not prompted with it; an unsure window stays in its passing source's language
    out = _judge([_window(0, "de", de, -0.8), _window(1, "en", en, -0.5), _window(2, "de", de, -5.0), _window(3, "de", {"ko": 0.2, "de": 0.1}, -1.0),
                  _window(4, "de", de, -0.9, tokens=3)], "de", {"de": 0.6, "en": 0.3})
    assert out.get("reject_reason") is None and out["code_switched"] and out["source_languages"] == ["de", "en"] and out["language"] == "de"
    assert [(w["window_index"], w["language"], w["prev_text"]) for w in out["windows"]] == [(0, "de", "before"), (1, "en", "before"), (3, "de", ""), (4, "de", "before")]
    (dropped,) = out["dropped"]
    assert (dropped["reason"], dropped["stage"], dropped["start_ms"]) == ("transcript_mismatch", "judge_windows", 60_000) and "-5.00" in dropped["detail"]
    # an English text over confident German speech: an X->en window, in the language spoken
    (translated,) = _judge([_window(0, "en", de, -2.0)], "en", de)["windows"]
    assert (translated["language"], translated["task"], translated["languages"]) == ("de", "translate", ["de"])
    # most of the speech fails: the whole source goes, under the reason that failed most of it
    assert _judge([_window(0, "en", en, -4.0), _window(1, "en", en, -6.0), _window(2, "en", en, -0.2)], "en", en)["reject_reason"] == "misaligned_transcript"
    assert _judge([_window(0, "de", en, -0.3)], "de", en)["reject_reason"] == "language_mismatch"


def test_mixed_script_windows_list_their_languages():
    options = LanguageOptions()
    assert mixed_languages("我们明天开会讨论这个project的deadline，然后发email给大家。", "zh", options) == ["en", "zh"]
    assert mixed_languages("今天天气很好，我们一起去公园散步吧。", "zh", options) == ["zh"]
    assert mixed_languages("And so my fellow Americans, ask not.", "en", options) == ["en"]
    assert mixed_languages("我们用iPad。", "zh", options) == ["zh"]  # too few letters of the second script to name it


@pytest.mark.slow
def test_corpus_job_keeps_switched_speech_per_window_and_drops_the_wrong_transcript(tmp_path, local_ray):
    from jobs.corpus import run

    sources = tmp_path / "sources"
    sources.mkdir()
    switched, cues = code_switched_recording()
    (sources / "switched.flac").write_bytes(encode_flac(switched))
    (sources / "switched.srt").write_text(srt(cues))
    for name, text in (("right", JFK_TEXT), ("wrong", OTHER_TEXT)):
        (sources / f"{name}.flac").write_bytes(JFK.read_bytes())
        (sources / f"{name}.srt").write_text(srt([(0.3, 10.7, text)]))
    # the three recordings share Kennedy's audio on purpose (audio dedup would keep only the longest: tested elsewhere)
    summary = run(["--sources", str(sources), "--out", str(tmp_path / "out"), "--quiet", "--set", "segment.no_speech_keep_rate=0",
                   "--set", "audio_dedup.enabled=false"])
    assert summary["inputs"] == {**summary["inputs"], "in": 3, "kept": 2, "rejected": 1}
    assert summary["inputs"]["rejected_by_reason"] == {"misaligned_transcript": 1} and summary["sources_code_switched"] == 1
    assert summary["hours"]["per_language"]["es"] > 0
    rows = {r["segment_id"]: r for r in committed_rows(tmp_path / "out", "corpus")}
    assert [(r["language"], r["code_switched"], r["source_languages"]) for k, r in sorted(rows.items()) if r["source"].endswith("/switched.flac")] == [
        ("en", True, ["en", "es"]), ("es", True, ["en", "es"])
    ]
    for row in rows.values():
        assert row["agreement_logprob"] > -1.0 and row["agreement_tokens"] > 10 and 0 <= row["no_speech_prob"] < 0.5
        assert row["languages"] == [row["language"]] and json.loads(row["audio_language_probs"])[row["language"]] > 0.5
    rejects = committed_rows(tmp_path / "out", "rejects")
    judged = [(r["source"].rsplit("/", 1)[-1], r["scope"], r["reason"]) for r in rejects if r["stage"] == "judge_windows"]
    assert judged == [("wrong.flac", "source", "misaligned_transcript")]
