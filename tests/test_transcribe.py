"""wspsr transcribe: subtitle formats, the hallucination guard, and the job end to end on real audio."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.data import JFK, ffmpeg, write_wav
from support.processes import kill_after_commits
from pipeline.io.transcripts import parse_transcript
from pipeline.schema import TRANSCRIPTS_SCHEMA
from pipeline.io.transcripts import render
from stages.transcribe_windows import HallucinationOptions, hallucination_flag
from support.output import committed_rows, committed_table

ROOT = Path(__file__).resolve().parent.parent
SPEECH = ROOT / "tests" / "data" / "speech"

REPO = Path(__file__).resolve().parent.parent
SEGMENTS = [
    {"start_ms": 0, "end_ms": 1840, "text": " And so my fellow Americans,"},
    {"start_ms": 1840, "end_ms": 3_725_500, "text": "ask not --> what\nyour country can do."},
]


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_subtitles_parse_back(fmt):
    parsed = parse_transcript(render(fmt, SEGMENTS, "en", "x.wav"), fmt)
    assert [(c.start_ms, c.end_ms) for c in parsed.cues] == [(0, 1840), (1840, 3_725_500)]
    assert [c.text for c in parsed.cues] == ["And so my fellow Americans,", "ask not -> what your country can do."]


def test_json_and_txt():
    doc = json.loads(render("json", SEGMENTS, "en", "x.wav"))
    assert doc["language"] == "en" and doc["segments"][1]["start"] == 1.84
    assert parse_transcript(render("json", SEGMENTS, "en", "x.wav"), "json").cues[1].end_ms == 3_725_500
    assert render("txt", SEGMENTS, "en", "x.wav") == "And so my fellow Americans,\nask not --> what\nyour country can do.\n"


@pytest.mark.parametrize(
    "text, no_speech, flag",
    [
        ("And so my fellow Americans, ask not what your country can do for you.", 0.01, None),
        ("I'm going to go to the store. I'm going to go to the store. I'm going to go to the store. I'm going to go to the store.", 0.1, "repeated_ngram"),
        ("yes no maybe yes maybe no no yes maybe yes no maybe", 0.1, "few_distinct_words"),
        ("Thank you for watching!", 0.7, "known_phrase"),
        ("Thank you for watching!", 0.01, None),  # said, not invented over silence
        ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 0.1, "overlong_word"),
        ("我们今天去公园散步，天气很好。", 0.1, None),
        ("好的好的好的好的好的好的好的好的好的好的", 0.1, "repeated_ngram"),
    ],
)
def test_hallucination_guard(text, no_speech, flag):
    assert hallucination_flag({"text": text, "no_speech_prob": no_speech}, HallucinationOptions()) == flag


def _inputs(root: Path) -> Path:
    """Six short real recordings (JFK cut in pieces, one in a sub-folder), silence, and a corrupt file."""
    data = root / "audio"
    (data / "more").mkdir(parents=True)
    for i, (start, length) in enumerate([(0, 4), (3, 5), (6, 5), (0, 11), (2, 6)]):
        ffmpeg("-ss", str(start), "-t", str(length), "-i", str(JFK), str((data if i < 4 else data / "more") / f"clip{i}.flac"))
    write_wav(data / "silence.wav", 8.0, freq=0)
    (data / "broken.mp3").write_bytes(b"\x00garbage" * 100)
    return data


def _rows(out: Path):
    return committed_rows(out, "transcripts", ("source_id", "segment_index"))


@pytest.mark.slow
def test_transcribe_job_with_real_whisper(tmp_path, local_ray):
    from jobs.transcribe import run

    data = _inputs(tmp_path)
    out = tmp_path / "out"
    summary = run(["--inputs", str(data), "--out", str(out), "--formats", "parquet,srt,vtt,json,txt", "--quiet"])
    assert summary["accounting"]["ok"] and summary["inputs"] == {
        "in": 7, "kept": 6, "rejected": 1, "rejected_by_reason": {"bad_audio": 1},
    }
    table = committed_table(out, "transcripts")
    assert table.schema.remove_metadata() == TRANSCRIPTS_SCHEMA
    rows = table.to_pylist()
    full = " ".join(r["text"] for r in rows if r["source"].endswith("clip3.flac"))
    assert "ask not what your country can do for you" in full.lower()
    assert all(r["language"] == "en" and r["language_prob"] > 0.5 for r in rows)
    assert not [r for r in rows if r["source"].endswith("silence.wav")]  # no speech: no text, and no hallucination
    srt = (out / "files" / "audio" / "more" / "clip4.srt").read_text()
    assert parse_transcript(srt, "srt").cues and (out / "files" / "audio" / "silence.srt").read_text() == ""
    vtt = parse_transcript((out / "files" / "audio" / "clip3.vtt").read_text(), "vtt")
    assert vtt.cues[-1].end_ms <= 11_000
    # a rerun does nothing and changes nothing
    before = _rows(out)
    again = run(["--inputs", str(data), "--out", str(out), "--formats", "parquet,srt,vtt,json,txt", "--quiet"])
    assert again["inputs"] == summary["inputs"] and _rows(out) == before


@pytest.mark.slow
def test_compare_with_references_reports_wer_per_language(tmp_path, local_ray):
    from jobs.transcribe import run

    sample = REPO / "sample"
    summary = run(["--compare-with", str(sample / "sources" / "en"), str(sample / "sources" / "de"), "--out", str(tmp_path / "cmp"), "--quiet"])
    per_language = summary["comparison"]["per_language"]
    assert per_language["en"]["wer"] < 0.35 and per_language["de"]["sources"] >= 3
    ranking = summary["comparison"]["groups_by_errors_x_hours"]
    assert ranking and ranking == sorted(ranking, key=lambda g: -g["wer_x_hours"])
    table = committed_rows(tmp_path / "cmp", "comparison")
    shouting = next(r for r in table if r["source"].endswith("en_shouting_01.opus"))
    assert shouting["wer"] < 0.5  # case does not count after normalisation


@pytest.mark.slow
def test_killed_run_resumes_to_exactly_the_rows_of_a_clean_run(tmp_path, local_ray):
    from jobs.transcribe import run as transcribe

    data = _inputs(tmp_path)
    common = [
        sys.executable, "-m", "jobs.transcribe", "--inputs", str(data), "--quiet", "--model", "tiny-random",
        "--engine", "openai-whisper", "--language", "en", "--set", "decoding.temperatures=[0.0]",
        "--set", "ray.sources_per_block=1", "--set", "whisper.batch_files=1", "--set", "ray.num_cpus=2",
    ]
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    transcribe([*common[3:], "--out", str(clean)])  # the reference, on the session's Ray
    done_before = kill_after_commits([*common, "--out", str(crashed)], crashed, 3)  # discovery + 2 files
    assert 3 <= done_before < 8, "the run was not killed partway"
    transcribe([*common[3:], "--out", str(crashed)])  # the rerun that finishes it
    assert _rows(crashed) == _rows(clean)
    assert sorted(p.name for p in (crashed / "files").rglob("*")) == sorted(p.name for p in (clean / "files").rglob("*"))
    assert not list(crashed.rglob(".tmp-*"))
    summary = json.loads((crashed / "summary.json").read_text())
    assert summary["accounting"]["ok"] and summary["inputs"]["in"] == 7
    shutil.rmtree(clean)


@pytest.mark.slow
def test_corpus_drops_sources_whose_transcript_whisper_disagrees_with(tmp_path, local_ray):
    """The paper's second pass: transcribe with --compare-with, then `wspsr corpus --pseudo-labels --max-wer`."""
    from jobs.corpus import run as corpus
    from jobs.transcribe import run as transcribe

    data = tmp_path / "pairs"
    data.mkdir()
    shutil.copy(JFK, data / "good.flac")
    (data / "good.srt").write_text("1\n00:00:00,000 --> 00:00:10,500\nAnd so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.\n")
    shutil.copy(JFK, data / "wrong.flac")
    (data / "wrong.srt").write_text("1\n00:00:00,000 --> 00:00:10,500\nThe weather in the mountains was cold and the road to the village was closed for days.\n")
    transcribe(["--compare-with", str(data), "--out", str(tmp_path / "check"), "--quiet"])
    summary = corpus(
        ["--sources", str(data), "--out", str(tmp_path / "corpus"), "--quiet", "--pseudo-labels", str(tmp_path / "check"),
         "--max-wer", "0.3", "--set", "language.enabled=false", "--set", "dedup.enabled=false"]
    )
    assert summary["inputs"]["kept"] == 1 and summary["inputs"]["rejected_by_reason"] == {"high_error_rate": 1}
    (reject,) = committed_rows(tmp_path / "corpus", "rejects")
    assert reject["source"].endswith("wrong.flac") and reject["stage"] == "check_pseudo_labels" and "WER" in reject["detail"]


@pytest.mark.slow
def test_a_gpu_cluster_gets_one_model_actor_per_gpu(tmp_path):
    """On a Ray that declares two GPUs (logical ones here: the engines fall back to the CPU), the transcribe job's
    model stage is an autoscaling pool of up to two actors, each asking for one GPU, and the job completes."""
    files = [str(SPEECH / name) for name in ("en_counting.flac", "en_hello_world.flac", "es_conteo.flac")]
    done = subprocess.run(
        [sys.executable, "-m", "jobs.transcribe", "--inputs", *files, "--out", str(tmp_path / "out"), "--quiet",
         "--model", "tiny-random-v3", "--set", "ray.num_gpus=2", "--set", "ray.num_cpus=2", "--set", "ray.sources_per_block=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "in 1-2 model actors" in done.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["inputs"]["in"] == summary["inputs"]["kept"] == 3
