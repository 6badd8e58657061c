"""Crashes, killed workers, full disks, bugs and reruns, on the real jobs in their own processes (each run starts
its own local Ray, so injected faults reach its workers through the environment; see ``pipeline/faults.py``).
Every case ends with the same rows as a clean run and the accounting invariant."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from support.output import assert_accounted, committed_rows, corpus_rows, reject_rows
from support.data import JFK, ffmpeg, srt, write_wav
from support.processes import kill_after_commits

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
NO_FILTERS = ["--set", "machine_generated.enabled=false", "--set", "dedup.enabled=false", "--set", "language.enabled=false"]
TEXTS = ["And so my fellow Americans,", "ask not what your country can do for you,", "ask what you can do for your country."]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Twelve short real recordings with their transcripts, and one broken file: thirteen sources."""
    root = tmp_path_factory.mktemp("sources")
    for i in range(12):
        start, length = [(0, 3), (3, 4), (6, 5)][i % 3]
        ffmpeg("-ss", str(start + i * 0.01), "-t", str(length), "-i", str(JFK), str(root / f"clip{i:02d}.flac"))
        (root / f"clip{i:02d}.en.srt").write_text(srt([(0.1, length - 0.2, f"{TEXTS[i % 3]} ({i})")]))
    (root / "broken.mp3").write_bytes(b"<html>404</html>")
    (root / "broken.en.srt").write_text(srt([(0, 1, "Never heard.")]))
    return root


def corpus_cmd(sources: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "jobs.corpus", "--sources", str(sources), "--out", str(out), "--quiet",
            "--set", "ray.sources_per_block=1", "--set", "ray.num_cpus=2", *NO_FILTERS, *extra]


def run(cmd: list[str], faults: str | None = None, tmp: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("WSPSR_FAULTS", None)
    if faults:
        (tmp / "fired").mkdir(parents=True, exist_ok=True)
        env.update(WSPSR_FAULTS=faults, WSPSR_FAULTS_DIR=str(tmp / "fired"))
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def run_in_process(sources: Path, out: Path) -> dict:
    """A plain run (a reference, or the rerun that finishes a failed one) on the session's Ray: where no process
    boundary is being tested, no Ray start per run."""
    from jobs.corpus import run as corpus

    return corpus(corpus_cmd(sources, out)[3:])


def rows(out: Path) -> tuple[list[dict], list[dict]]:
    corpus, rejects = corpus_rows(out), reject_rows(out)
    return corpus, rejects


@pytest.fixture(scope="module")
def clean(sources, tmp_path_factory, local_ray):
    out = tmp_path_factory.mktemp("clean") / "out"
    run_in_process(sources, out)
    summary = assert_accounted(out, "corpus")
    assert summary["inputs"] == {**summary["inputs"], "in": 13, "kept": 12, "rejected": 1}
    return out, rows(out)


def test_driver_killed_partway_then_rerun(sources, clean, tmp_path):
    out = tmp_path / "out"
    committed = kill_after_commits(corpus_cmd(sources, out), out, 3, cwd=REPO)  # discovery + 2 shards
    assert 3 <= committed < 13, "the run was not killed partway"
    assert not (out / "summary.json").exists()
    run_in_process(sources, out)
    assert_accounted(out, "corpus")
    assert rows(out) == clean[1]


@pytest.mark.parametrize("fault", ["kill@stage:decode_audio", "kill@stage:segment_into_windows", "kill@commit"])
def test_a_worker_killed_once_is_retried(sources, clean, tmp_path, fault):
    out = tmp_path / "out"
    run(corpus_cmd(sources, out), faults=fault, tmp=tmp_path)
    assert (tmp_path / "fired" / fault.replace(":", "_")).exists(), "the fault did not fire"
    assert_accounted(out, "corpus")
    assert rows(out) == clean[1]


def test_disk_full_while_committing(sources, clean, tmp_path):
    out = tmp_path / "out"
    failed = run(corpus_cmd(sources, out), faults="enospc@commit", tmp=tmp_path, check=False)
    assert failed.returncode == 1
    assert "No space left on device" in failed.stderr and "rerun" in failed.stderr
    assert not (out / "summary.json").exists()
    for marker in map(json.loads, map(Path.read_text, (out / "_commits").glob("*.json"))):  # what is committed is whole
        for table, names in marker["files"].items():
            for name in names:
                assert pq.read_table(out / table / name).num_rows > 0
    run_in_process(sources, out)
    assert_accounted(out, "corpus")
    assert rows(out) == clean[1]


def test_a_bug_on_one_batch_is_retried_row_by_row(sources, clean, tmp_path):
    """The stage raises once on a whole batch: the batch runs again row by row and every row comes through."""
    out = tmp_path / "out"
    run(corpus_cmd(sources, out), faults="raise@stage:find_audio", tmp=tmp_path)  # a stage over whole blocks of sources
    assert (tmp_path / "fired" / "raise@stage_find_audio").exists()
    assert_accounted(out, "corpus")
    assert rows(out) == clean[1]


def test_a_bug_every_row_meets_is_rejected_per_row_and_fails_the_run_past_the_error_budget(sources, tmp_path):
    """A stage that raises on every row: each row becomes its own internal_error reject (stage, exception), everything
    is committed and accounted for, and the run exits 1 because the error budget is spent."""
    out = tmp_path / "out"
    failed = run(corpus_cmd(sources, out), faults="raise*100@stage:segment_into_windows", tmp=tmp_path, check=False)
    assert failed.returncode == 1 and "--max-error-fraction" in failed.stderr
    summary = assert_accounted(out, "corpus")
    assert summary["inputs"]["rejected_by_reason"] == {"bad_audio": 1, "internal_error": 12}
    assert summary["error_fraction"] == {"internal_errors": 12, "value": round(12 / 13, 4), "max": 0.01, "ok": False}
    errors = [r for r in reject_rows(out) if r["reason"] == "internal_error"]
    assert {(r["stage"], r["detail"]) for r in errors} == {("segment_into_windows", "RuntimeError: injected fault at stage:segment_into_windows")}
    # The budget is a setting: with room for them the same run succeeds (a rerun changes nothing committed).
    assert run(corpus_cmd(sources, out, "--max-error-fraction", "1.0")).returncode == 0


def test_one_worker_and_bigger_blocks_give_the_same_rows(sources, clean, tmp_path):
    out = tmp_path / "out"
    run(corpus_cmd(sources, out, "--set", "ray.num_cpus=1", "--set", "ray.sources_per_block=5"))
    assert_accounted(out, "corpus")
    assert rows(out) == clean[1]


def test_rerun_of_a_finished_job_does_no_work(clean, sources, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(clean[0], out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    proc = run(corpus_cmd(sources, out))
    assert "0 to process" in proc.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == before
    assert rows(out) == clean[1]


def test_max_reject_fraction_fails_after_writing_everything(sources, tmp_path):
    out = tmp_path / "out"
    proc = run(corpus_cmd(sources, out, "--max-reject-fraction", "0.05"), check=False)
    assert proc.returncode == 1 and "--max-reject-fraction" in proc.stderr
    summary = assert_accounted(out, "corpus")
    assert summary["reject_fraction"] == {"value": round(1 / 13, 4), "max": 0.05, "ok": False}


def test_transcribe_actor_killed_once_gives_the_same_rows(tmp_path, local_ray):
    data = tmp_path / "audio"
    data.mkdir()
    for i, (start, length) in enumerate([(0, 4), (3, 5), (6, 5)]):
        ffmpeg("-ss", str(start), "-t", str(length), "-i", str(JFK), str(data / f"clip{i}.flac"))
    write_wav(data / "silence.wav", 5.0, freq=0)
    cmd = [sys.executable, "-m", "jobs.transcribe", "--inputs", str(data), "--quiet", "--model", "tiny-random", "--engine", "openai-whisper",
           "--language", "en", "--set", "decoding.temperatures=[0.0]", "--set", "ray.sources_per_block=1", "--set", "whisper.batch_files=1"]
    from jobs.transcribe import run as transcribe

    transcribe([*cmd[3:], "--out", str(tmp_path / "clean")])  # the reference, on the session's Ray
    run([*cmd, "--out", str(tmp_path / "killed")], faults="kill@stage:transcribe_windows", tmp=tmp_path)
    assert (tmp_path / "fired" / "kill@stage_transcribe_windows").exists()
    read = lambda out: committed_rows(out, "transcripts", ("source_id", "segment_index"))  # noqa: E731
    assert read(tmp_path / "killed") == read(tmp_path / "clean")
    assert_accounted(tmp_path / "killed", "transcripts")
