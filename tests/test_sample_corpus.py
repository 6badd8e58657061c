"""The corpus job on the bundled sample (what `make corpus` runs), checked against sample/labels.jsonl."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from jobs.corpus import run
from pipeline.io.media import decode_flac
from support.output import committed_rows, committed_table, corpus_rows, reject_rows

pytestmark = pytest.mark.slow
SAMPLE = Path(__file__).resolve().parent.parent / "sample"
TOKEN = re.compile(r"<\|(\d+\.\d\d)\|>")
# Outcomes decided by the stages of the corpus foundation (sources, transcripts, decoding, segmentation).
STRUCTURAL = {
    "bad_manifest_line", "missing_transcript", "empty_transcript", "bad_audio", "no_audio_stream", "untimed_transcript_too_long",
}


def labels():
    return [json.loads(line) for line in (SAMPLE / "labels.jsonl").read_text().splitlines() if line.strip()]


def label_key(label):
    if label.get("manifest_line") and not label.get("audio"):
        return f"manifest.jsonl:{label['manifest_line']}"
    return f"sample/{label['audio']}"


def test_every_sample_source_is_accounted_for(sample_run):
    _, summary = sample_run
    assert summary["accounting"]["ok"]
    assert summary["inputs"]["in"] == len(labels()) == summary["inputs"]["kept"] + summary["inputs"]["rejected"]
    assert set(summary["hours"]["per_language"]) >= {"en", "de", "es", "it", "ru", "pt", "pl", "zh"}


def test_structural_defects_are_rejected_as_labelled(sample_run):
    out, _ = sample_run
    rejects = [r for r in committed_rows(out, "rejects") if r["scope"] == "source"]
    for label in labels():
        if label["expected"] in STRUCTURAL:
            key = label_key(label)
            assert [r["reason"] for r in rejects if r["source"].endswith(key)] == [label["expected"]], key


def test_long_recordings_keep_their_whole_transcript(sample_run):
    out, _ = sample_run
    rows = corpus_rows(out)
    long_labels = [label for label in labels() if label["kind"].startswith("clean_long") or label.get("duration_s", 0) > 60]
    assert len(long_labels) >= 3
    judged = {(r["source"], r["start_ms"]) for r in reject_rows(out) if r["stage"] == "judge_windows" and r["scope"] == "stretch"}
    for label in long_labels:
        windows = [r for r in rows if r["source"].endswith(label_key(label)) and r["has_speech"]]
        assert len(windows) >= 2, label["audio"]
        joined = " ".join(w["text"] for w in windows)
        dropped = [start for source, start in judged if source.endswith(label_key(label))]
        expected, got = (label["text"].replace(" ", ""), joined.replace(" ", "")) if label["language"] == "zh" else (label["text"].split(), joined.split())
        if not dropped:
            assert got == expected, label["audio"]
            continue
        # a window judged not to match its speech was dropped (a stretch reject): the rest is the transcript in order
        assert len(got) < len(expected) and _in_order(got, expected), label["audio"]
        assert all(start not in {w["start_ms"] for w in windows} for start in dropped)


def _in_order(part, whole) -> bool:
    it = iter(whole)
    return all(any(x == y for y in it) for x in part)


def test_every_window_is_a_valid_example(sample_run):
    out, _ = sample_run
    for row in committed_rows(out, "corpus"):
        length = row["end_ms"] - row["start_ms"]
        assert 0 < length <= 30_000
        assert abs(len(decode_flac(row["audio"]["bytes"])) - length * 16) <= 16
        for token in TOKEN.findall(row["text_timestamped"] or ""):
            assert 0 <= float(token) * 1000 <= length


def test_rerunning_the_sample_does_no_work_and_changes_nothing(sample_run):
    out, summary = sample_run
    before = committed_table(out, "corpus").sort_by("segment_id")
    again = run(["--out", str(out), "--quiet"])
    assert again["inputs"] == summary["inputs"] and again["windows"] == summary["windows"]
    assert committed_table(out, "corpus").sort_by("segment_id").equals(before)
