"""Windows cut at silences (the transcribe job): real speech (JFK's phrases) laid out in code between stretches of
low noise of known lengths, so every expected speech region is known to within the detectors' frame size."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline.audio import SAMPLES_PER_MS
from pipeline.io.media import decode_audio
from pipeline.schema import SPEECH_WINDOW_TYPE
from stages.segment_at_silences import (
    METHODS,
    VadOptions,
    frame_levels_db,
    plan_windows,
    quietest_point_ms,
    segment_at_silences,
    silero_probabilities,
    speech_regions,
)
from support.data import JFK

# Phrases of jfk.flac (ms), each cut with ~70 ms of the recording's own background around the words:
# "And so my fellow Americans," / "what your country can do for you," / "ask what you can do for your country."
PHRASES = {"fellow": (240, 2300), "country": (5360, 7680), "ask": (8140, 10560)}
NOISE = 100  # std of the filler noise in int16 units: about -50 dBFS
TOLERANCE_MS = 150  # detectors work on 20/32 ms frames and the phrase cuts keep a little of JFK's background
PAD = VadOptions().speech_pad_ms


@pytest.fixture(scope="module")
def jfk() -> np.ndarray:
    return decode_audio(JFK)


def compose(
    jfk: np.ndarray, layout: list[str | int], seed: int = 0, noise: float = NOISE
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Audio from a layout of phrase names and pause lengths (ms of noise); returns it and where each phrase went."""
    rng = np.random.default_rng(seed)
    parts, placed, t = [], [], 0
    for item in layout:
        if isinstance(item, int):
            parts.append(np.round(rng.standard_normal(item * SAMPLES_PER_MS) * noise).astype(np.int16))
            t += item
        else:
            a, b = PHRASES[item]
            parts.append(jfk[a * SAMPLES_PER_MS : b * SAMPLES_PER_MS])
            placed.append((t, t + b - a))
            t += b - a
    return np.concatenate(parts), placed


def merged(regions: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Regions with touching neighbours joined (a pause inside a phrase may or may not split it in two)."""
    out: list[tuple[int, int]] = []
    for a, b in regions:
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(b, out[-1][1]))
        else:
            out.append((a, b))
    return out


def assert_well_formed(regions: list[tuple[int, int]], duration_ms: int) -> None:
    assert all(0 <= a < b <= duration_ms for a, b in regions)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(regions, regions[1:])), regions


def assert_windows_ok(windows: list[tuple[int, int]], duration_ms: int, options: VadOptions) -> None:
    assert_well_formed(windows, duration_ms)
    assert all(b - a <= options.max_window_ms for a, b in windows), windows


def covered(windows: list[tuple[int, int]], start: int, end: int) -> bool:
    """Every millisecond of [start, end) lies inside some window (windows may touch)."""
    cursor = start
    for a, b in windows:
        if a <= cursor < b:
            cursor = b
    return cursor >= end


def stage_table(recordings: dict[str, np.ndarray]) -> pa.Table:
    return pa.table(
        {
            "source_id": list(recordings),
            "pcm": pa.array([pcm.tobytes() for pcm in recordings.values()], type=pa.large_binary()),
            "duration_ms": pa.array([len(pcm) // SAMPLES_PER_MS for pcm in recordings.values()], type=pa.int64()),
            "output_name": [f"out/{name}" for name in recordings],
        }
    )


# --- speech regions -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_regions_match_the_phrases_laid_out(jfk, method):
    # pauses: 1.5 s and 0.7 s separate; 0.1 s (shorter than min_silence_ms with the phrases' own edges) does not
    # (200 ms of padding: with the default 400 the 0.7 s pause would be padded shut)
    pcm, placed = compose(jfk, [1000, "fellow", 1500, "country", 700, "ask", 2000, "country", 100, "fellow", 1000])
    regions = speech_regions(pcm, VadOptions(method=method, speech_pad_ms=200))
    assert_well_formed(regions, len(pcm) // SAMPLES_PER_MS)
    expected = [
        (placed[0][0] - 200, placed[0][1] + 200),
        (placed[1][0] - 200, placed[1][1] + 200),
        (placed[2][0] - 200, placed[2][1] + 200),
        (placed[3][0] - 200, placed[4][1] + 200),  # joined across the short pause
    ]
    found = merged(regions)
    assert len(found) == len(expected), (found, expected)
    for (a, b), (ea, eb) in zip(found, expected):
        assert abs(a - ea) <= TOLERANCE_MS and abs(b - eb) <= TOLERANCE_MS, (found, expected)


def test_silero_regions_equal_faster_whispers_get_speech_timestamps(jfk):
    """Our vectorised hysteresis over the model's frame probabilities decides like Silero's own per-frame loop
    (on audio with speech in every ~5 s block, so that our state reset after silence never happens)."""
    from faster_whisper.vad import VadOptions as FasterWhisperVad
    from faster_whisper.vad import get_speech_timestamps

    pcm, _ = compose(jfk, [700, "fellow", 1200, "ask", 250, "country", 3000])
    options = VadOptions()
    theirs = get_speech_timestamps(
        pcm.astype(np.float32) / 32768.0,
        FasterWhisperVad(
            threshold=options.threshold,
            min_speech_duration_ms=options.min_speech_ms,
            min_silence_duration_ms=options.min_silence_ms,
            speech_pad_ms=options.speech_pad_ms,
        ),
    )
    assert speech_regions(pcm, options) == [(t["start"] // SAMPLES_PER_MS, t["end"] // SAMPLES_PER_MS) for t in theirs]


def test_silero_probabilities_do_not_depend_on_the_blocks(jfk):
    """Streaming the model over blocks of frames (bounded memory) carries its state: same as one call."""
    whole = silero_probabilities(jfk, block_frames=10_000)
    assert len(whole) == -(-len(jfk) // 512)
    np.testing.assert_allclose(silero_probabilities(jfk, block_frames=50), whole, atol=1e-5)
    np.testing.assert_allclose(silero_probabilities(jfk, reset_below=0.35), whole, atol=1e-5)  # speech in every block
    assert np.array_equal(silero_probabilities(jfk, block_frames=10_000), whole)
    assert whole.max() > 0.9 and whole[:5].max() < 0.2  # speech, and the silent start


def test_silero_state_is_reset_after_silence(jfk):
    """Left alone, the model's state drifts over long quiet and the next speech scores far lower."""
    pcm, placed = compose(jfk, [45_000, "fellow", 1_000])
    start, end = (placed[0][0] + 100) // 32, (placed[0][1] - 100) // 32
    drifted = silero_probabilities(pcm)[start:end].mean()
    reset = silero_probabilities(pcm, reset_below=0.35)[start:end].mean()
    assert reset > 0.6 and reset > drifted + 0.15, (reset, drifted)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("noise", [0.0, 30.0, 300.0])  # digital silence, -60 and -40 dBFS noise
def test_silence_and_noise_have_no_speech(method, noise):
    pcm = np.round(np.random.default_rng(1).standard_normal(20_000 * SAMPLES_PER_MS) * noise).astype(np.int16)
    options = VadOptions(method=method)
    assert speech_regions(pcm, options) == []
    assert plan_windows([], len(pcm) // SAMPLES_PER_MS, options, pcm) == []


def test_min_speech_ms_drops_blips(jfk):
    pcm, placed = compose(jfk, [2000, "fellow", 2000])
    start, end = placed[0]
    blip = pcm.copy()
    blip[: 2000 * SAMPLES_PER_MS] = 0
    blip[1000 * SAMPLES_PER_MS : 1100 * SAMPLES_PER_MS] = 12_000  # a 100 ms click
    regions = speech_regions(blip, VadOptions(method="energy"))
    assert len(regions) == 1 and abs(regions[0][0] - (start - PAD)) <= TOLERANCE_MS
    assert len(speech_regions(blip, VadOptions(method="energy", min_speech_ms=50))) == 2


def test_empty_and_tiny_audio():
    for method in METHODS:
        assert speech_regions(np.zeros(0, np.int16), VadOptions(method=method)) == []
        assert speech_regions(np.zeros(100, np.int16), VadOptions(method=method)) == []
    with pytest.raises(TypeError):
        speech_regions(np.zeros(1000, np.float32), VadOptions())


# --- windows ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_speech_in_the_middle_of_95_s_gets_windows_only_around_it(jfk, method):
    pcm, placed = compose(jfk, [45_000, "fellow", 500, "country", 600, "ask", 95_000 - 45_000 - 8_000])
    duration = len(pcm) // SAMPLES_PER_MS
    assert 94_000 < duration < 96_000
    options = VadOptions(method=method)
    windows = plan_windows(speech_regions(pcm, options), duration, options, pcm)
    assert_windows_ok(windows, duration, options)
    speech_start, speech_end = placed[0][0], placed[-1][1]
    assert windows
    assert windows[0][0] >= speech_start - PAD - TOLERANCE_MS and windows[-1][1] <= speech_end + PAD + TOLERANCE_MS
    assert windows == [(windows[0][0], windows[-1][1])]  # 8 s of speech with short pauses: one window
    assert covered(windows, speech_start + 100, speech_end - 100)


@pytest.mark.parametrize("method", METHODS)
def test_continuous_speech_longer_than_a_window_is_split_at_a_quiet_point(jfk, method):
    pcm, placed = compose(jfk, [300] + ["fellow", "country", "ask"] * 6 + [300])  # ~41 s, no pause of 300 ms
    duration = len(pcm) // SAMPLES_PER_MS
    options = VadOptions(method=method)
    regions = speech_regions(pcm, options)
    windows = plan_windows(regions, duration, options, pcm)
    assert_windows_ok(windows, duration, options)
    assert len(windows) >= 2
    # Every phrase lies inside the windows. (The energy detector hears the fading "...country" at the end of the
    # last phrase, ~8 dB over JFK's background, as a pause of ~440 ms: its last 300 ms get this leeway.)
    for start, end in placed:
        assert covered(windows, start + 100, end - 300), (start, end, windows)
    if method == "silero":
        assert len(regions) == 1  # one long region: split, so the two windows touch at the cut
        assert windows[0][1] == windows[1][0]
    cut = windows[0][1]
    assert windows[0][1] - windows[0][0] >= options.max_window_ms * 2 // 3  # filled at least 20 s before cutting
    levels = frame_levels_db(pcm[(cut - 15) * SAMPLES_PER_MS : (cut + 15) * SAMPLES_PER_MS], 30 * SAMPLES_PER_MS)
    assert levels[0] < -35.0  # a pause between words (speech here runs at -10 to -20 dBFS)


def test_plan_windows_packs_greedily_within_the_limits():
    options = VadOptions()
    regions = [(0, 5_000), (6_000, 12_000), (20_000, 28_000), (29_000, 35_000), (36_000, 37_000), (48_000, 50_000)]
    # (48_000, ...) follows a pause of 11 s: longer than max_pause_in_window_ms, so it starts its own window
    assert plan_windows(regions, 60_000, options) == [(0, 28_000), (29_000, 37_000), (48_000, 50_000)]
    assert plan_windows(regions, 60_000, VadOptions(max_pause_in_window_ms=30_000)) == [(0, 28_000), (29_000, 50_000)]
    assert plan_windows([(0, 30_000), (30_000, 30_500)], 40_000, options) == [(0, 30_000), (30_000, 30_500)]
    assert plan_windows([(500, 1_500)], 1_200, options) == [(500, 1_200)]  # clipped to the audio
    assert plan_windows([], 10_000, options) == []
    with pytest.raises(ValueError):
        plan_windows([(5_000, 6_000), (1_000, 2_000)], 10_000, options)
    with pytest.raises(ValueError):
        plan_windows([(0, 6_000), (5_000, 7_000)], 10_000, options)


def test_a_long_region_is_cut_at_its_quietest_point_in_the_last_third():
    options = VadOptions()
    t = np.arange(75_000 * SAMPLES_PER_MS) / 16_000
    tone = np.round(8_000 * np.sin(2 * np.pi * 220 * t)).astype(np.int16)
    for dip_ms in (10_000, 23_000, 24_000):  # 10 s: outside the last third, never chosen
        tone[dip_ms * SAMPLES_PER_MS : (dip_ms + 200) * SAMPLES_PER_MS] //= 50
    tone[26_000 * SAMPLES_PER_MS : 26_200 * SAMPLES_PER_MS] //= 20  # quieter than the tone, louder than the dips
    windows = plan_windows([(1_000, 74_000)], 75_000, options, tone)
    assert windows[0][0] == 1_000 and 24_000 < windows[0][1] < 24_200  # equal dips: the later one (fuller window)
    assert_windows_ok(windows, 75_000, options)
    assert windows[-1][1] == 74_000 and all(b1 == a2 for (_, b1), (a2, _) in zip(windows, windows[1:]))
    # without the audio the region is cut exactly at the limit
    assert plan_windows([(1_000, 74_000)], 75_000, options) == [(1_000, 31_000), (31_000, 61_000), (61_000, 74_000)]


def test_quietest_point_is_inside_the_range():
    flat = np.zeros(40_000 * SAMPLES_PER_MS, np.int16)
    cut = quietest_point_ms(flat, 20_000, 30_000)
    assert 20_000 < cut < 30_000
    assert quietest_point_ms(flat, 29_990, 30_000) == 30_000  # too short to search: the limit itself


# --- the stage ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_stage_windows_hold_exact_slices_and_silence_gets_none(jfk, method):
    speech, _ = compose(jfk, [3_000, "fellow", 1_000, "ask", 15_000, "country", 2_000])
    long, _ = compose(jfk, ["fellow", "country", "ask"] * 5, seed=2)
    silence = np.zeros(10_000 * SAMPLES_PER_MS, np.int16)
    recordings = {"speech": speech, "silence": silence, "long": long}
    options = VadOptions(method=method)
    out = segment_at_silences(stage_table(recordings), options)
    assert "pcm" not in out.column_names
    assert out.schema.field("speech_windows").type == pa.list_(SPEECH_WINDOW_TYPE)
    assert out.column("output_name").to_pylist() == [f"out/{name}" for name in recordings]
    rows = out.to_pylist()
    assert [r["source_id"] for r in rows] == list(recordings)
    by_id = {r["source_id"]: r["speech_windows"] for r in rows}
    assert by_id["silence"] == []
    assert len(by_id["speech"]) == 2  # 15 s of noise between the phrases ends the first window
    assert len(by_id["long"]) >= 2
    for name, pcm in recordings.items():
        windows = by_id[name]
        assert [w["window_index"] for w in windows] == list(range(len(windows)))
        spans = [(w["start_ms"], w["end_ms"]) for w in windows]
        assert_windows_ok(spans, len(pcm) // SAMPLES_PER_MS, options)
        for w in windows:
            assert w["pcm"] == pcm[w["start_ms"] * SAMPLES_PER_MS : w["end_ms"] * SAMPLES_PER_MS].tobytes()


def test_stage_is_deterministic_and_handles_an_empty_batch(jfk):
    pcm, _ = compose(jfk, [2_000, "fellow", 400, "country", 2_000], seed=5)
    table = stage_table({"a": pcm, "b": pcm[: 4_000 * SAMPLES_PER_MS]})
    for method in METHODS:
        first = segment_at_silences(table, VadOptions(method=method))
        assert first.equals(segment_at_silences(table, VadOptions(method=method)))
    empty = segment_at_silences(table.slice(0, 0), VadOptions())
    assert empty.num_rows == 0 and "pcm" not in empty.column_names and "speech_windows" in empty.column_names


def test_stage_under_the_runner_contract_passes_rejected_rows_through(jfk):
    from pipeline.stage import Stage, apply_stage

    pcm, _ = compose(jfk, [1_000, "fellow", 1_000])
    table = pa.table(
        {
            "source_id": ["ok", "bad"],
            "pcm": pa.array([pcm.tobytes(), None], type=pa.large_binary()),
            "duration_ms": pa.array([len(pcm) // SAMPLES_PER_MS, None], type=pa.int64()),
            "reject_reason": pa.array([None, "bad_audio"], type=pa.string()),
        }
    )
    out = apply_stage(Stage("segment_at_silences", segment_at_silences, VadOptions(method="energy")), table)
    rows = {r["source_id"]: r for r in out.to_pylist()}
    assert len(rows["ok"]["speech_windows"]) == 1 and rows["ok"]["reject_reason"] is None
    assert rows["bad"]["reject_reason"] == "bad_audio" and rows["bad"]["speech_windows"] is None


def test_stage_refuses_a_row_without_audio():
    table = pa.table({"source_id": ["x"], "pcm": pa.array([None], type=pa.large_binary()), "duration_ms": [0]})
    with pytest.raises(ValueError, match="x"):
        segment_at_silences(table, VadOptions())


@pytest.mark.parametrize(
    "bad",
    [
        {"method": "webrtc"},
        {"max_window_ms": 31_000},
        {"max_window_ms": 500},
        {"min_silence_ms": -1},
        {"speech_pad_ms": 20_000},
        {"threshold": 1.0},
        {"threshold": 0.5, "neg_threshold": 0.6},
        {"energy_db_above_floor": 2.0},
        {"energy_min_floor_dbfs": 3.0},
    ],
)
def test_options_are_validated(bad):
    with pytest.raises(ValueError):
        VadOptions(**bad)
