"""Transcripts built to break or stall the parser: each is one source's reject (or a kept source with its bad cues
counted), parsing stays linear in the file's size, a named pipe is never opened, and a source that still takes too
long is stopped by the text stage's time limit. The job test runs them beside good sources through the real job."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import threading
import time

import pytest

from pipeline.io.transcripts import MAX_CUE_MS, TranscriptError, parse_transcript
from pipeline.limits import TimeLimitExceeded, time_limit
from pipeline.schema import table_from_rows
from stages.load_transcript import TranscriptOptions, load_transcript
from support.data import JFK, JFK_TEXT, ffmpeg, srt
from support.output import assert_accounted, committed_rows

CUE = srt([(0.2, 10.7, JFK_TEXT)])
HOUR_3E12 = "3000000000000:00:00,000 --> 3000000000000:00:05,000"


def _segments(*segments: str) -> str:
    return '{"segments": [' + ", ".join(segments) + "]}"


GOOD_SEGMENT = f'{{"start": 0.2, "end": 10.7, "text": "{JFK_TEXT}"}}'

# (file name, contents, expected reject reason or None for kept)
MALFORMED = [
    ("hour-overflow.srt", f"1\n{HOUR_3E12}\nAn hour past int64 in milliseconds.\n", "bad_transcript_format"),
    ("deep.json", "[" * 10_000 + "]" * 10_000, "bad_transcript_format"),
    ("deep-in-segments.json", '{"segments": ' + "[" * 10_000 + "]" * 10_000 + "}", "bad_transcript_format"),
    ("long-number.json", _segments('{"start": ' + "1" * 5000 + ', "end": 1, "text": "x"}'), "bad_transcript_format"),
    ("start-1e306.json", _segments('{"start": 1e306, "end": 1, "text": "x"}'), "bad_transcript_format"),
    ("start-as-long-string.json", _segments('{"start": "' + "9" * 5000 + '", "end": 1, "text": "x"}'),
     "bad_transcript_format"),
    ("hour-overflow-cli.txt", "[3000000000000:00:00.000 --> 3000000000000:00:01.000] Far too late.\n",
     "bad_transcript_format"),
]
# a good cue beside a bad one: the source is kept, the bad cue counted in invalid_cues
WITH_A_GOOD_CUE = [
    ("hour-overflow-and-good.srt", f"{CUE}2\n{HOUR_3E12}\nLate.\n"),
    ("start-1e306-and-good.json", _segments(GOOD_SEGMENT, '{"start": 1e306, "end": 1e307, "text": "x"}')),
    ("a-second-past-the-limit-and-good.json",
     _segments(GOOD_SEGMENT, f'{{"start": {MAX_CUE_MS // 1000 + 1}, "end": 1, "text": "x"}}')),
    ("hour-9999-and-good.vtt",
     f"WEBVTT\n\n00:00.200 --> 00:10.700\n{JFK_TEXT}\n\n9999:00:00.000 --> 9999:00:01.000\nx\n"),
]


def _rows(folder, names):
    return table_from_rows([
        {"source_id": name, "source": name, "transcript_path": str(folder / name), "inline_text": None,
         "language": "en"}
        for name in names
    ])


def _load(batch, **options):
    out = load_transcript(batch, TranscriptOptions(**options))
    table_from_rows(out.to_pylist())  # what the runner builds between stages: the stream schema must hold
    return {row["source_id"]: row for row in out.to_pylist()}


def test_each_malformed_transcript_is_its_sources_reject(tmp_path):
    for name, text, _ in MALFORMED:
        (tmp_path / name).write_text(text)
    out = _load(_rows(tmp_path, [name for name, _, _ in MALFORMED]))
    got = {name: (row.get("reject_reason"), row.get("reject_detail")) for name, row in out.items()}
    assert {name: reason for name, (reason, _) in got.items()} == {name: reason for name, _, reason in MALFORMED}, got
    assert "nested 10000 deep" in got["deep.json"][1] and "5000 characters" in got["long-number.json"][1]


def test_a_bad_cue_beside_a_good_one_is_counted_and_the_source_kept(tmp_path):
    for name, text in WITH_A_GOOD_CUE:
        (tmp_path / name).write_text(text)
    out = _load(_rows(tmp_path, [name for name, _ in WITH_A_GOOD_CUE]))
    for name, row in out.items():
        assert row.get("reject_reason") is None, (name, row.get("reject_detail"))
        assert row["invalid_cues"] == 1 and [(c["start_ms"], c["end_ms"]) for c in row["cues"]] == [(200, 10_700)], name


def _cue_then_untimed_blocks(blocks: int) -> str:
    return CUE + "more words\n\n" * blocks


def _cue_of(text: str) -> str:
    return f"1\n00:00:00,200 --> 00:00:10,700\n{text}\n"


ADVERSARIAL_SIZES = [
    ("8,000 untimed blocks", "srt", _cue_then_untimed_blocks(8_000)),
    ("100,000 untimed blocks", "srt", _cue_then_untimed_blocks(100_000)),
    ("20,000 '<'", "srt", _cue_of("<" * 20_000)),
    ("1,000,000 '<'", "srt", _cue_of("<" * 1_000_000)),
    ("1,000,000 '<' in WebVTT", "vtt", "WEBVTT\n\n" + _cue_of("<" * 1_000_000)),
    ("1,000,000 '<a'", "srt", _cue_of("<a" * 500_000)),
    ("1,000,000 '{\\'", "srt", _cue_of("{\\" * 500_000)),
    ("1 MB of entities", "srt", _cue_of("&amp;" * 200_000)),
    ("1 MB of spaces in a timing line", "srt", "1\n" + " " * 1_000_000 + "00:00:00,200 --> 00:00:10,700\nx\n"),
    ("1 MB of digits in a timing line", "srt", "1\n" + "1" * 1_000_000 + ":00:00,200 --> 00:00:10,700\nx\n"),
    ("1 MB of brackets in JSON", "json", "[" * 1_000_000),
    ("1 MB JSON text of '<'", "json", _segments('{"start": 0, "end": 1, "text": "' + "<" * 1_000_000 + '"}')),
    ("1 MB of escaped quotes in JSON", "json", '["' + '\\"' * 500_000),
    ("1 MB of Whisper command-line lines", "txt", "[00:00.000 --> 00:01.000] hi\n" * 35_000),
    ("1 MB of '<' in plain text", "txt", "<" * 1_000_000),
]


@pytest.mark.parametrize("name, fmt, text", ADVERSARIAL_SIZES, ids=[name for name, _, _ in ADVERSARIAL_SIZES])
def test_adversarial_sizes_parse_in_linear_time(name, fmt, text):
    started = time.perf_counter()
    try:
        parse_transcript(text, fmt)
    except TranscriptError:
        pass
    assert time.perf_counter() - started < 2.0, name  # quadratic work on these took seconds to hours


def _in_thread_with_deadline(call, seconds=30.0):
    """``call()`` in a thread: a hang fails the test at the deadline instead of hanging the suite."""
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("value", call()), daemon=True)
    thread.start()
    thread.join(seconds)
    return thread.is_alive(), result.get("value")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_is_refused_unopened(tmp_path):
    fifo = tmp_path / "x.srt"
    os.mkfifo(fifo)
    (tmp_path / "folder.srt").mkdir()
    try:
        hung, out = _in_thread_with_deadline(lambda: _load(_rows(tmp_path, ["x.srt", "folder.srt"])))
    finally:
        try:  # a reader blocked on the pipe (the regression) is released by a writer
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    assert not hung, "reading a named pipe blocked"
    assert (out["x.srt"]["reject_reason"], out["x.srt"]["reject_detail"]) == (
        "transcript_unreadable", "not a regular file (a named pipe)")
    assert (out["folder.srt"]["reject_reason"], out["folder.srt"]["reject_detail"]) == (
        "transcript_unreadable", "not a regular file (a directory)")
    assert not out["x.srt"].get("reject_transient")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/mem answers reads with EIO on Linux")
def test_a_read_error_that_may_pass_is_retried_then_a_transient_reject(tmp_path):
    os.symlink("/proc/self/mem", tmp_path / "eio.srt")  # a regular file whose reads fail with EIO
    started = time.monotonic()
    out = _load(_rows(tmp_path, ["eio.srt", "absent.srt"]))
    assert time.monotonic() - started >= 1.0  # retried (0.5 s, then 1 s) before giving up
    assert out["eio.srt"]["reject_reason"] == "transcript_unreadable" and out["eio.srt"]["reject_transient"] is True
    assert "Input/output error" in out["eio.srt"]["reject_detail"]
    assert out["absent.srt"]["reject_reason"] == "transcript_unreadable"
    assert not out["absent.srt"].get("reject_transient")


def test_bytes_read_not_the_size_reported_decide_too_large(tmp_path):
    (tmp_path / "big.txt").write_text("word " * 1000)
    out = _load(_rows(tmp_path, ["big.txt"]), max_mb=1000 / 2**20)
    assert out["big.txt"]["reject_reason"] == "transcript_too_large"


def test_a_source_over_the_time_limit_is_a_permanent_stage_timeout(tmp_path):
    (tmp_path / "slow.srt").write_text(_cue_of("&amp;" * 2_000_000))  # linear, but 10 MB of entities take a while
    (tmp_path / "fine.srt").write_text(CUE)
    out = _load(_rows(tmp_path, ["slow.srt", "fine.srt"]), timeout_s=0.05)
    assert out["slow.srt"]["reject_reason"] == "stage_timeout" and not out["slow.srt"].get("reject_transient")
    assert "transcript.timeout_s=0.05" in out["slow.srt"]["reject_detail"]
    assert out["fine.srt"].get("reject_reason") is None
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


@pytest.mark.parametrize("seconds", [0, -1, float("nan")])
def test_time_limits_must_be_positive(seconds):
    with pytest.raises(ValueError):
        TranscriptOptions(timeout_s=seconds)
    with pytest.raises(ValueError):
        with time_limit(seconds):
            pass


def _busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


@pytest.fixture
def own_alarm_handler():
    """A SIGALRM handler of the test's own, put back afterwards, so restoring it is observable."""
    fired = []
    handler = lambda signum, frame: fired.append(time.monotonic())  # noqa: E731
    previous = signal.signal(signal.SIGALRM, handler)
    yield handler, fired
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def test_time_limit_interrupts_a_busy_loop_and_restores_the_handler(own_alarm_handler):
    handler, fired = own_alarm_handler
    started = time.monotonic()
    with pytest.raises(TimeLimitExceeded):
        with time_limit(0.05):
            _busy(30)
    assert time.monotonic() - started < 5
    assert signal.getsignal(signal.SIGALRM) is handler and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    with time_limit(5):
        pass
    assert signal.getsignal(signal.SIGALRM) is handler and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert not fired


def test_nested_time_limits_each_fire_at_their_own_moment(own_alarm_handler):
    handler, fired = own_alarm_handler
    with pytest.raises(TimeLimitExceeded) as outer:
        with time_limit(0.1):
            with time_limit(30):
                _busy(30)
    assert outer.value.seconds == 0.1
    with time_limit(30):
        with pytest.raises(TimeLimitExceeded) as inner:
            with time_limit(0.05):
                _busy(30)
        assert inner.value.seconds == 0.05
        assert 25 < signal.getitimer(signal.ITIMER_REAL)[0] <= 30  # the outer limit's timer is back
    assert signal.getsignal(signal.SIGALRM) is handler and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    signal.setitimer(signal.ITIMER_REAL, 0.05)  # a timer of the caller's own, due inside a longer limit
    with time_limit(30):
        _busy(0.3)
    assert len(fired) == 1  # its handler ran at its moment


def test_time_limit_does_nothing_outside_the_main_thread():
    before = signal.getsignal(signal.SIGALRM)

    def sleep_past_the_limit():
        with time_limit(0.01):
            time.sleep(0.1)
        return "finished"

    hung, result = _in_thread_with_deadline(sleep_past_the_limit)
    assert not hung and result == "finished" and signal.getsignal(signal.SIGALRM) is before


@pytest.mark.slow
def test_the_job_rejects_each_hostile_transcript_and_keeps_the_good_sources(tmp_path, local_ray):
    """Beside good sources, through Ray: the run finishes, each bad source is its own reject."""
    from jobs.corpus import run

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(JFK, src / "good-copy.flac")
    (src / "good-copy.srt").write_text(CUE)
    ffmpeg("-i", str(JFK), "-t", "11", str(src / "good-cut.wav"))
    (src / "good-cut.srt").write_text(CUE)
    expected = {"good-copy.flac": None, "good-cut.wav": None}
    for name, text, reason in MALFORMED:
        stem = name.rsplit(".", 1)[0]
        shutil.copy(JFK, src / f"{stem}.flac")
        (src / name).write_text(text)
        expected[f"{stem}.flac"] = reason
    shutil.copy(JFK, src / "slow.flac")
    (src / "slow.srt").write_text(_cue_of("&amp;" * 3_000_000))  # 15 MB of entities: seconds, over the limit below
    expected["slow.flac"] = "stage_timeout"
    shutil.copy(JFK, src / "pipe.flac")
    os.mkfifo(src / "pipe.srt")
    expected["pipe.flac"] = "transcript_unreadable"
    out = tmp_path / "out"
    try:
        summary = run(["--sources", str(src), "--out", str(out), "--quiet", "--set", "ray.num_cpus=2",
                       "--set", "transcript.timeout_s=0.5", "--set", 'sources.default_language="en"',
                       "--set", "machine_generated.enabled=false", "--set", "dedup.enabled=false",
                       "--set", "language.enabled=false", "--set", "audio_dedup.enabled=false"])
    finally:
        os.unlink(src / "pipe.srt")
    assert summary["reject_fraction"]["ok"]
    assert_accounted(out, "corpus")
    kept = {row["source"].rsplit("/", 1)[-1] for row in committed_rows(out, "corpus")}
    rejected = {row["source"].rsplit("/", 1)[-1]: row["reason"] for row in committed_rows(out, "rejects")
                if row["scope"] == "source"}
    got = {name: rejected.get(name, "kept" if name in kept else "missing") for name in expected}
    if got.get("pipe.flac") == "unsafe_path":  # discovery refuses what is not a regular file before the text stage
        got["pipe.flac"] = "transcript_unreadable"
    assert got == {name: reason or "kept" for name, reason in expected.items()}
