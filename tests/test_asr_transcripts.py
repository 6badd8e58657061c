"""Transcripts a speech recogniser made: Whisper's command-line format read as timed cues, and the ASR timing rule
(every time on Whisper's 20 ms grid, cues back to back) on real Whisper output of real speech against a human
transcript of the same speech."""

from __future__ import annotations

import shutil

import pytest

from pipeline.io.transcripts import parse_transcript, read_transcript
from stages.detect_machine_generated import MachineGeneratedOptions, asr_timing, judge_transcript
from support.data import DATA, JFK, JFK_TEXT, srt
from support.output import committed_table

CLI_TALK = DATA / "whisper_cli_transcript.txt"  # 60 lines of a talk as Whisper's command line printed them


def _row(transcript) -> dict:
    cues = [{"start_ms": c.start_ms, "end_ms": c.end_ms, "text": c.text} for c in transcript.cues or ()]
    return {"transcript_text": transcript.text, "transcript_format": transcript.format, "cues": cues}


def _cli(cues: list[tuple[int, int, str]]) -> str:
    def clock(ms: int) -> str:
        return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"

    return "".join(f"[{clock(a)} --> {clock(b)}]   {text.strip()}\n" for a, b, text in cues)


def test_whisper_cli_output_reads_as_timed_cues_not_text():
    talk = read_transcript(CLI_TALK, 1 << 20)
    assert talk.format == "whisper_cli" and len(talk.cues) == 60
    assert talk.cues[1].start_ms == 4920 and talk.cues[1].end_ms == 7480
    assert talk.cues[1].text == "Thanks for inviting me for the talk today."
    assert "-->" not in talk.text and "[00:" not in talk.text
    # one line that is not a CLI line: plain text stays plain text, timestamps and all
    mixed = CLI_TALK.read_text() + "A note the uploader added.\n"
    assert parse_transcript(mixed, "txt").format == "txt" and parse_transcript(mixed, "txt").cues is None


def test_asr_timing_rule():
    verdict = judge_transcript(_row(read_transcript(CLI_TALK, 1 << 20)), MachineGeneratedOptions())
    assert verdict.reason.value == "asr_transcript"
    assert "59 of 59 cues start where the last ended" in verdict.detail and "'[audio out]'" in verdict.detail
    # The same cues as an SRT: judged on the timing alone
    whisper_srt = parse_transcript(srt([(c.start_ms / 1000, c.end_ms / 1000, c.text) for c in read_transcript(CLI_TALK, 1 << 20).cues]), "srt")
    assert judge_transcript(_row(whisper_srt), MachineGeneratedOptions()).reason.value == "asr_transcript"
    options = MachineGeneratedOptions()
    # human timing: millisecond times, or gaps between cues, or too few cues to tell
    human_ms = [{"start_ms": 1000 * i + 137 * (i % 3), "end_ms": 1000 * i + 900, "text": "x"} for i in range(10)]
    gaps = [{"start_ms": 2000 * i, "end_ms": 2000 * i + 1600, "text": "x"} for i in range(10)]
    back_to_back = [{"start_ms": 2000 * i, "end_ms": 2000 * (i + 1), "text": "x"} for i in range(10)]
    assert asr_timing(human_ms, "srt", options) is None and asr_timing(gaps, "srt", options) is None
    assert asr_timing(back_to_back[:5], "srt", options) is None  # fewer than asr_min_cues
    assert asr_timing(back_to_back, "srt", options) == "all 20 cue times on a 20 ms grid, 9 of 9 cues start where the last ended"
    assert asr_timing(back_to_back[:2], "whisper_cli", options).startswith("the Whisper command line's output format")
    assert asr_timing(back_to_back, "srt", MachineGeneratedOptions(asr_min_contiguous_share=1.0)) is not None
    assert asr_timing(back_to_back[:8] + gaps[5:], "srt", options) is None  # 7 of 9 contiguous < 0.8


@pytest.mark.slow
def test_whisper_output_of_real_speech_is_dropped_and_the_human_transcript_kept(tmp_path, local_ray):
    """JFK transcribed by wspsr transcribe (Whisper base), written as the Whisper CLI writes it, against the same
    speech with a human SRT: the first is rejected asr_transcript, the second kept."""
    from jobs.corpus import run as corpus
    from jobs.transcribe import run as transcribe

    audio = tmp_path / "in"
    audio.mkdir()
    shutil.copy(JFK, audio / "jfk.flac")
    transcribe(["--inputs", str(audio), "--out", str(tmp_path / "asr"), "--formats", "parquet,srt", "--quiet"])
    whisper = read_transcript(tmp_path / "asr" / "files" / "in" / "jfk.srt", 1 << 20)
    assert whisper.cues and "ask not what your country can do for you" in whisper.text.lower()
    times = [t for c in whisper.cues for t in (c.start_ms, c.end_ms)]
    assert all(t % 20 == 0 for t in times[:-1])  # Whisper's grid, measured (the last end is the audio's: 10,896 ms)

    sources = tmp_path / "sources"
    (sources / "asr").mkdir(parents=True)
    (sources / "human").mkdir()
    shutil.copy(JFK, sources / "asr" / "jfk.flac")
    (sources / "asr" / "jfk.en.txt").write_text(_cli([(c.start_ms, c.end_ms, c.text) for c in whisper.cues]))
    shutil.copy(JFK, sources / "human" / "jfk.flac")
    (sources / "human" / "jfk.en.srt").write_text(srt([(0.32, 4.41, JFK_TEXT[:27]), (4.87, 10.62, JFK_TEXT[28:])]))
    out = tmp_path / "corpus"
    summary = corpus(["--sources", str(sources), "--out", str(out), "--quiet", "--set", "dedup.enabled=false", "--set", "language.enabled=false"])
    assert summary["inputs"]["in"] == 2 and summary["inputs"]["rejected_by_reason"] == {"asr_transcript": 1}
    rejects = committed_table(out, "rejects").to_pylist()
    assert [r["source"].split("/")[-2] for r in rejects] == ["asr"] and "Whisper command line" in rejects[0]["detail"]
    kept = committed_table(out, "corpus").to_pylist()
    assert {r["source"].split("/")[-2] for r in kept} == {"human"}
