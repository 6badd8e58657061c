"""The corpus job end to end on Ray: real audio in, Parquet read back and checked, reruns idempotent."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from support.data import JFK, ffmpeg, srt, vtt, write_wav
from jobs.corpus import run
from pipeline.io.commit import OutputError
from pipeline.io.media import decode_flac
from pipeline.schema import CORPUS_SCHEMA, REJECTS_SCHEMA, SCHEMA_VERSION
from support.output import committed_table, corpus_rows, reject_rows

pytestmark = pytest.mark.slow
# These tests check the corpus foundation (sources, decoding, windows, commit); the filters have their own tests.
NO_FILTERS = ["--set", "machine_generated.enabled=false", "--set", "dedup.enabled=false", "--set", "audio_dedup.enabled=false",
              "--set", "language.enabled=false"]
TOKEN = re.compile(r"<\|(\d+\.\d\d)\|>")
LONG_CUES = [(0.0, 4.5, "And so my fellow Americans,"), (4.5, 10.6, "ask not what your country can do for you, ask what you can do for your country.")]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A folder and a manifest with good, long, and broken sources."""
    root = tmp_path_factory.mktemp("src")
    data = root / "data"
    (data / "en").mkdir(parents=True)
    shutil.copy(JFK, data / "en" / "jfk.flac")
    (data / "en" / "jfk.en.srt").write_text(srt(LONG_CUES))
    # 7 x JFK with 2 s of silence between: 89 s, cues every 13 s, several windows
    ffmpeg("-i", str(JFK), "-af", "apad=pad_dur=2", str(root / "padded.wav"))
    (root / "list.txt").write_text("".join(f"file '{root / 'padded.wav'}'\n" for _ in range(7)))
    ffmpeg("-f", "concat", "-safe", "0", "-i", str(root / "list.txt"), "-c:a", "libopus", str(data / "en" / "long.opus"))
    cues = [(13 * k + a, 13 * k + b, f"{text} ({k})") for k in range(7) for a, b, text in LONG_CUES]
    (data / "en" / "long.en.vtt").write_text(vtt(cues))
    write_wav(data / "tone.wav", 3.0)
    (data / "tone.txt").write_text("A short tone, untimed.")
    (data / "broken.mp3").write_bytes(b"<html>404</html>")
    (data / "broken.en.srt").write_text(srt([(0, 1, "Never heard.")]))
    (data / "alone.wav").write_bytes((data / "tone.wav").read_bytes())
    (data / "empty.wav").write_bytes((data / "tone.wav").read_bytes())
    (data / "empty.txt").write_text("   \n")
    manifest = root / "m.jsonl"
    lines = [
        json.dumps({"id": "inline-1", "audio": "data/tone.wav", "text": "Inline text for a tone.", "language": "en", "speaker": "synth"}),
        "{oops",
        json.dumps({"id": "long-json", "audio": "data/en/long.opus", "transcript": "long.json", "language": "en"}),
    ]
    (root / "long.json").write_text(json.dumps({"segments": [{"start": a, "end": b, "text": t} for a, b, t in cues]}))
    manifest.write_text("\n".join(lines) + "\n")
    return [str(data), str(manifest)], cues


@pytest.fixture(scope="module")
def built(sources, tmp_path_factory, local_ray):
    paths, _ = sources
    out = tmp_path_factory.mktemp("out") / "corpus-out"
    summary = run(["--sources", *paths, "--out", str(out), "--quiet", "--set", "segment.no_speech_keep_rate=1.0", *NO_FILTERS])
    return out, summary


def test_summary_accounts_for_every_source(built):
    out, summary = built
    assert summary["accounting"]["ok"]
    s = summary["inputs"]
    assert s["in"] == 9 and s["kept"] == 5 and s["in"] == s["kept"] + s["rejected"]
    assert s["rejected_by_reason"] == {"bad_audio": 1, "bad_manifest_line": 1, "empty_transcript": 1, "missing_transcript": 1}
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["hours"]["per_language"]["en"] > 0.04


def test_windows_are_valid_training_examples(built):
    out, _ = built
    table = committed_table(out, "corpus")
    assert table.schema.remove_metadata() == CORPUS_SCHEMA
    assert table.schema.metadata[b"wspsr.schema_version"] == SCHEMA_VERSION.encode()
    for row in table.to_pylist():
        length = row["end_ms"] - row["start_ms"]
        assert 0 < length <= 30_000
        audio = decode_flac(row["audio"]["bytes"])
        assert abs(len(audio) - length * 16) <= 16
        assert row["audio"]["path"] == f"{row['segment_id']}.flac" and row["sample_rate"] == 16000
        if row["text_timestamped"]:
            assert all(0 <= float(t) * 1000 <= length for t in TOKEN.findall(row["text_timestamped"]))
        assert row["has_speech"] == bool(row["text"])
        assert row["task"] == "transcribe"


def test_long_recording_text_survives_windowing_exactly(built, sources):
    out, _ = built
    _, cues = sources
    rows = corpus_rows(out)
    long_ids = {r["source_id"] for r in rows if r["source"].endswith("long.opus")}
    assert len(long_ids) == 2  # the folder's VTT pairing and the manifest's JSON
    for source_id in long_ids:
        windows = [r for r in rows if r["source_id"] == source_id]
        assert len([w for w in windows if w["has_speech"]]) >= 3
        assert " ".join(w["text"] for w in windows if w["text"]) == " ".join(t for _, _, t in cues)
        speech = [w for w in windows if w["has_speech"]]
        assert all(b["prev_text"] == a["text"] for a, b in zip(speech, speech[1:]))


def test_rejects_table(built):
    out, _ = built
    table = committed_table(out, "rejects")
    assert table.schema.remove_metadata() == REJECTS_SCHEMA
    by_reason = {r["reason"]: r for r in table.to_pylist() if r["scope"] == "source"}
    assert by_reason["bad_audio"]["stage"] == "decode_audio" and by_reason["bad_audio"]["source"].endswith("broken.mp3")
    assert by_reason["bad_manifest_line"]["detail"].startswith("line 2:")
    assert by_reason["missing_transcript"]["stage"] == "discover_sources"
    assert by_reason["empty_transcript"]["stage"] == "load_transcript"


def test_metadata_is_kept(built):
    out, _ = built
    inline = [r for r in corpus_rows(out) if r["source_id"] == "inline-1"]
    assert json.loads(inline[0]["metadata"]) == {"speaker": "synth"} and inline[0]["text"] == "Inline text for a tone."


def test_rerun_is_idempotent_and_resumes_after_a_crash(built, sources, tmp_path):
    out, summary = built
    paths, _ = sources
    args = ["--sources", *paths, "--quiet", "--set", "segment.no_speech_keep_rate=1.0", *NO_FILTERS]
    before_corpus, before_rejects = corpus_rows(out), reject_rows(out)
    again = tmp_path / "again"
    shutil.copytree(out, again)
    assert run([*args, "--out", str(again)])["inputs"] == summary["inputs"]
    assert corpus_rows(again) == before_corpus and reject_rows(again) == before_rejects
    # A crash: one shard's files written (its pending record names them) but not its marker, and a temporary file of
    # an interrupted write beside one of them.
    markers = sorted((again / "_commits").glob("*.json"), key=lambda p: -len(json.loads(p.read_text())["sources"]["kept"]))
    crashed = json.loads(markers[0].read_text())
    files = sorted(f"{table}/{name}" for table, names in crashed["files"].items() for name in names)
    (again / "_commits" / "_pending").mkdir(exist_ok=True)
    (again / "_commits" / "_pending" / f"{crashed['shard']}.json").write_text(json.dumps({"shard": crashed["shard"], "files": files}))
    markers[0].unlink()
    (again / f"{files[0]}").with_name(f".tmp-{Path(files[0]).name}.k3x9_q2z").write_bytes(b"PAR1 half")
    resumed = run([*args, "--out", str(again)])
    assert resumed["accounting"]["ok"] and resumed["inputs"] == summary["inputs"]
    assert corpus_rows(again) == before_corpus and reject_rows(again) == before_rejects
    assert not list(again.rglob(".tmp-*"))


def test_a_fresh_run_gives_the_same_rows_and_ids(built, sources, tmp_path):
    out, _ = built
    paths, _ = sources
    fresh = tmp_path / "fresh"
    run(["--sources", *paths, "--out", str(fresh), "--quiet", "--set", "segment.no_speech_keep_rate=1.0", "--set", "ray.sources_per_block=2", *NO_FILTERS])
    assert corpus_rows(fresh) == corpus_rows(out) and reject_rows(fresh) == reject_rows(out)


def test_other_config_in_same_folder_is_refused_unless_overwrite(built, sources, tmp_path):
    out, _ = built
    paths, _ = sources
    target = tmp_path / "target"
    shutil.copytree(out, target)
    other = ["--sources", *paths, "--out", str(target), "--quiet", "--set", "segment.boundary_pad_ms=0", *NO_FILTERS]
    with pytest.raises(OutputError, match="different config"):
        run(other)
    summary = run([*other, "--overwrite"])
    assert summary["accounting"]["ok"] and summary["inputs"]["in"] == 9
    assert summary["config_fingerprint"] != json.loads((out / "summary.json").read_text())["config_fingerprint"]
    assert {w["segment_id"] for w in corpus_rows(target)} == {w["segment_id"] for w in corpus_rows(out)}
    timed = [w for w in corpus_rows(target) if w["text_timestamped"]]
    assert timed and all(w["text_timestamped"].startswith("<|0.00|>") for w in timed)  # no lead-in pad any more


def test_a_log_gets_a_progress_line_and_none_of_rays_dumps(sources, tmp_path):
    """Not on a terminal (CI, a file, `ray job logs`): wspsr's progress line (inputs done of the total, hours, real-time
    factor, rejects, time left) at its interval, and no Ray progress dumps or informational logs."""
    import subprocess
    import sys
    from pathlib import Path

    paths, _ = sources
    argv = [sys.executable, "-m", "jobs.corpus", "--sources", *paths, "--out", str(tmp_path / "out"), "--set", "ray.progress_interval_s=1", *NO_FILTERS]
    done = subprocess.run(argv, cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stderr.splitlines()
    assert any(re.search(r"INFO sources: 9/9 \(100 %\), 0\.\d\d h of audio at [\d.]+x real time, 4 rejected, \d+:\d\d elapsed \(done\)", line) for line in log), log
    assert not [line for line in log if "logging_progress" in line or "streaming_executor" in line or "committed shard" in line], log
    assert len(log) + len(done.stdout.splitlines()) < 30, log


def test_verbose_brings_rays_own_logs_and_bars_back(local_ray):
    import logging

    import ray.data

    from pipeline.run.runner import RayOptions, init_ray

    context = ray.data.DataContext.get_current()
    try:
        init_ray(RayOptions(verbose=True))
        assert logging.getLogger("ray.data").level == logging.INFO and context.enable_progress_bars
        init_ray(RayOptions())  # not a terminal here: no bars (the progress line instead), Ray's logs only as errors
        assert logging.getLogger("ray.data").level == logging.ERROR and not context.enable_progress_bars
    finally:
        init_ray(RayOptions(progress=False))
