import random
import re

import numpy as np
import pytest

from pipeline.audio import MAX_WINDOW_MS
from pipeline.io.media import decode_flac
from pipeline.schema import table_from_rows
from pipeline.stage import Reject
from pipeline.text import join_texts
from stages.segment_into_windows import SegmentOptions, plan_windows, segment_into_windows, timestamped_text

ALL_NO_SPEECH = SegmentOptions(no_speech_keep_rate=1.0)
TOKEN = re.compile(r"<\|(\d+\.\d\d)\|>")


def cue(start, end, text):
    return {"start_ms": start, "end_ms": end, "text": text}


def spoken(plan):
    return [join_texts([u.text for u in w.units]) for w in plan.windows if w.has_speech]


def test_cues_pack_greedily_and_a_crossing_cue_starts_the_next_window():
    cues = [cue(i * 4000 + 500, i * 4000 + 3500, f"Sentence {i}.") for i in range(20)]
    plan = plan_windows(cues, "", 85_000, "s", SegmentOptions())
    speech = [w for w in plan.windows if w.has_speech]
    assert [(w.start_ms, w.end_ms) for w in speech] == [(300, 27_700), (28_300, 55_700), (56_300, 79_700)]
    assert " ".join(spoken(plan)) == " ".join(c["text"] for c in cues)
    assert plan.prev_texts[1].endswith("Sentence 6.") and plan.prev_texts[0] == ""


def test_timestamps_are_relative_on_the_grid_and_inside_the_window():
    plan = plan_windows([cue(1_000, 2_845, "Hello."), cue(3_000, 4_011, "World.")], "", 4_100, "s", SegmentOptions())
    (window,) = plan.windows
    assert (window.start_ms, window.end_ms) == (800, 4_100)
    assert timestamped_text(window) == "<|0.20|> Hello.<|2.04|><|2.20|> World.<|3.22|>"


def test_last_timestamp_never_passes_the_window_end():
    plan = plan_windows([cue(0, 2_999, "Ends at the audio end.")], "", 2_999, "s", SegmentOptions(boundary_pad_ms=0))
    (window,) = plan.windows
    assert timestamped_text(window).endswith("<|2.98|>")  # 3.00 would lie past 2.999 s


def test_long_cue_is_dropped_and_blocks_windows():
    cues = [cue(0, 5_000, "Before."), cue(5_000, 40_000, "Far too long."), cue(40_000, 42_000, "After.")]
    plan = plan_windows(cues, "", 50_000, "s", SegmentOptions(no_speech_keep_rate=0.0))
    assert [(w.start_ms, w.end_ms) for w in plan.windows] == [(0, 5_000), (40_000, 42_200)]
    assert plan.prev_texts == ["", "Far too long."]
    assert [(d["reason"], d["start_ms"], d["end_ms"]) for d in plan.dropped] == [
        ("cue_too_long", 5_000, 40_000),
        ("no_speech_not_sampled", 42_200, 50_000),
    ]


def test_gaps_become_no_speech_windows_of_at_most_30_s():
    plan = plan_windows([cue(70_000, 72_000, "Late start.")], "", 73_000, "s", ALL_NO_SPEECH)
    assert [(w.start_ms, w.end_ms, w.has_speech) for w in plan.windows] == [
        (0, 23_266, False),
        (23_266, 46_533, False),
        (46_533, 69_800, False),
        (69_800, 72_200, True),
    ]  # the 0.8 s after the cue is too short for a no-speech window
    assert plan.prev_texts == ["", "", "", ""]


def test_no_speech_sampling_is_deterministic_and_near_the_rate():
    cues = [cue(i * 40_000, i * 40_000 + 2_000, "Talk.") for i in range(200)]
    options = SegmentOptions(no_speech_keep_rate=0.25)
    first = plan_windows(cues, "", 8_000_000, "abc", options)
    second = plan_windows(cues, "", 8_000_000, "abc", options)
    assert first == second
    kept = sum(not w.has_speech for w in first.windows)
    assert 70 < kept < 130  # 200 gaps of 38 s, two windows each, at 25 %


def test_overlaps_are_trimmed_or_merged_and_bad_cues_counted():
    cues = [
        cue(0, 2_100, "One."),
        cue(2_000, 4_000, "Two."),  # 100 ms overlap: trimmed
        cue(5_000, 9_000, "Three."),
        cue(6_000, 8_000, "Inside three."),  # large overlap: merged
        cue(9_500, 9_000, "Backwards."),
        cue(-5, 100, "Negative."),
        cue(20_000, 21_000, "After the end."),
        cue(9_500, 10_400, "Clipped at the end."),
        cue(9_400, 9_450, "   "),
    ]
    plan = plan_windows(cues, "", 10_000, "s", SegmentOptions())
    assert spoken(plan) == ["One. Two. Three. Inside three. Clipped at the end."]
    stamped = timestamped_text(plan.windows[0])
    assert stamped.startswith("<|0.00|> One.<|2.00|><|2.00|> Two.<|4.00|><|5.00|> Three. Inside three.<|9.00|>"), stamped
    times = [float(t) for t in re.findall(r"<\|(\d+\.\d\d)\|>", stamped)]
    assert times == sorted(times)  # never backwards
    assert sorted(d["reason"] for d in plan.dropped) == ["cue_beyond_audio", "invalid_cue_timing"]
    assert plan.windows[0].end_ms == 10_000


def test_untimed_transcripts_only_for_short_audio():
    plan = plan_windows(None, "Short  clip,\nwith text.", 12_000, "s", SegmentOptions())
    assert [(w.start_ms, w.end_ms) for w in plan.windows] == [(0, 12_000)] and spoken(plan) == ["Short clip, with text."]
    rejected = plan_windows(None, "Long clip.", 45_000, "s", SegmentOptions())
    assert isinstance(rejected, Reject) and rejected.reason.value == "untimed_transcript_too_long"


def test_cues_the_parser_could_not_time_are_counted():
    """The parser skips a cue whose timing line is unreadable and counts it; segmentation records it with the rest."""
    from pipeline.io.transcripts import parse_srt

    transcript = parse_srt("1\n00:00:01,000 --> 00:00:02,000\nGood.\n\n2\n00:00:xx,000 --> garbage\nLost.\n\n")
    assert transcript.invalid_cues == 1
    cues = [{"start_ms": c.start_ms, "end_ms": c.end_ms, "text": c.text} for c in transcript.cues]
    plan = plan_windows(cues, transcript.text, 5_000, "s", SegmentOptions(), unreadable_cues=transcript.invalid_cues)
    assert spoken(plan) == ["Good."]
    assert [(d["reason"], d["detail"]) for d in plan.dropped] == [("invalid_cue_timing", "1 cue(s) with unreadable times")]


def test_no_usable_cues_rejects_the_source():
    rejected = plan_windows([cue(0, 31_000, "Too long."), cue(40_000, 39_000, "Backwards.")], "", 50_000, "s", SegmentOptions())
    assert isinstance(rejected, Reject) and rejected.reason.value == "no_usable_cues"
    assert "longer than 30 s" in rejected.detail and "impossible times" in rejected.detail


def test_caseless_scripts_join_without_spaces():
    assert join_texts(["你好。", "世界。", "Hello", "world."]) == "你好。世界。 Hello world."
    plan = plan_windows([cue(0, 1_000, "你好。"), cue(1_000, 2_000, "世界。")], "", 2_000, "s", SegmentOptions())
    assert timestamped_text(plan.windows[0]) == "<|0.00|>你好。<|1.00|><|1.00|>世界。<|2.00|>"


@pytest.mark.parametrize("seed", range(30))
def test_random_transcripts_keep_every_invariant(seed):
    rng = random.Random(seed)
    t, cues = rng.randint(0, 40_000), []
    for i in range(rng.randint(1, 60)):
        length = rng.choice([rng.randint(200, 8_000), rng.randint(8_000, 35_000)]) if rng.random() < 0.1 else rng.randint(200, 8_000)
        cues.append(cue(t, t + length, f"w{i}."))
        t += length + rng.choice([0, rng.randint(0, 2_000), rng.randint(5_000, 70_000)])
    duration = t + rng.randint(0, 30_000)
    plan = plan_windows(cues, "", duration, f"src{seed}", SegmentOptions(no_speech_keep_rate=0.5))
    if isinstance(plan, Reject):
        assert all(c["end_ms"] - c["start_ms"] > MAX_WINDOW_MS for c in cues)
        return
    previous_end = 0
    for window in plan.windows:
        assert 0 <= window.start_ms < window.end_ms <= duration
        assert window.end_ms - window.start_ms <= MAX_WINDOW_MS
        assert window.start_ms >= previous_end  # windows never overlap
        previous_end = window.end_ms
        for unit in window.units:
            assert window.start_ms <= unit.start_ms and unit.end_ms <= window.end_ms  # no text outside its audio
        for token in TOKEN.findall(timestamped_text(window)):
            assert 0 <= float(token) * 1000 <= window.end_ms - window.start_ms
    too_long = {c["text"] for c in cues if c["end_ms"] - c["start_ms"] > MAX_WINDOW_MS}
    assert " ".join(spoken(plan)).split() == [c["text"] for c in cues if c["text"] not in too_long]


def test_stage_cuts_audio_to_the_window_lengths():
    pcm = (np.random.default_rng(0).normal(size=16_000 * 40) * 1000).astype("<i2")
    row = {
        "source_id": "src",
        "source": "x.wav",
        "cues": [cue(1_000, 3_000, "One."), cue(32_000, 35_000, "Two.")],
        "transcript_text": "One. Two.",
        "duration_ms": 40_000,
        "pcm": pcm.tobytes(),
    }
    out = segment_into_windows(table_from_rows([row]), ALL_NO_SPEECH).to_pylist()[0]
    assert "pcm" not in out and "cues" not in out
    for window in out["windows"]:
        audio = decode_flac(window["flac"])
        assert len(audio) == (window["end_ms"] - window["start_ms"]) * 16
        assert np.array_equal(audio, pcm[window["start_ms"] * 16 : window["end_ms"] * 16])
    assert [w["segment_id"] for w in out["windows"]] == [f"src-{i:05d}" for i in range(len(out["windows"]))]
