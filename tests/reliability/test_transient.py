"""Transient is not permanent, through the corpus job: a decoder killed from outside on every attempt (an OOM killer
that keeps coming back) ends as a reject marked transient; a plain rerun keeps that outcome, and
``--retry-transient`` processes the source again once the machine is healthy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.data import DATA, JFK, ffmpeg, srt
from support.output import assert_accounted, committed_rows

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
FAST = ["--set", "machine_generated.enabled=false", "--set", "language.enabled=false", "--set", "dedup.enabled=false",
        "--set", "audio_dedup.enabled=false", "--quiet"]


def test_a_source_whose_decoder_is_always_killed_is_retried_on_request(tmp_path, local_ray):
    from jobs.corpus import run as corpus
    from pipeline.io.media import ffmpeg_binary

    sources = tmp_path / "sources"
    sources.mkdir()
    ffmpeg("-t", "4", "-i", str(JFK), str(sources / "unlucky.flac"))
    (sources / "unlucky.en.srt").write_text(srt([(0.0, 3.9, "And so my fellow Americans,")]))
    (sources / "fine.flac").write_bytes((DATA / "speech" / "en_quick_brown_fox.flac").read_bytes())
    (sources / "fine.en.srt").write_text(srt([(0.0, 2.8, "The quick brown fox jumps over the lazy dog.")]))
    # An ffmpeg that is killed (SIGKILL, from outside) whenever it decodes the unlucky file.
    killer = tmp_path / "ffmpeg"
    killer.write_text(f"#!/bin/sh\ncase \"$*\" in *unlucky*) kill -KILL $$;; esac\nexec '{ffmpeg_binary()}' \"$@\"\n")
    killer.chmod(0o755)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "jobs.corpus", "--sources", str(sources), "--out", str(out), "--set", "ray.num_cpus=2", *FAST]
    proc = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, WSPSR_FFMPEG=str(killer)), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [reject] = [r for r in committed_rows(out, "rejects") if r["scope"] == "source"]
    assert (Path(reject["source"]).name, reject["reason"], reject["transient"]) == ("unlucky.flac", "bad_audio", True)
    assert reject["detail"] == "ffmpeg was killed by SIGKILL (a fault that may pass, retried; --retry-transient tries again)"
    assert_accounted(out, "corpus")

    # The machine is healthy again (the real ffmpeg): a plain rerun keeps what is committed ...
    again = corpus(["--sources", str(sources), "--out", str(out), "--set", "ray.num_cpus=2", *FAST])
    assert again["inputs"]["rejected_by_reason"] == {"bad_audio": 1}
    # ... and --retry-transient processes the transient rejects again.
    retried = corpus(["--sources", str(sources), "--out", str(out), "--set", "ray.num_cpus=2", "--retry-transient", *FAST])
    assert retried["inputs"] == {**retried["inputs"], "kept": 2, "rejected": 0} and retried["accounting"]["ok"]
    assert {Path(w["source"]).name for w in committed_rows(out, "corpus")} == {"unlucky.flac", "fine.flac"}
    assert_accounted(out, "corpus")
