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


def test_the_same_recording_under_other_captions_is_found_by_its_audio(sample_run):
    """The Kennedy recording is in the sample three times (#21): jfk.opus, a re-upload cut 2 s at the start, resampled
    to 22.05 kHz MP3 with condensed captions (text dedup cannot see it), and the start of the code-switched
    jfk_then_spanish. The longest keeps; the other two are rejected as its audio duplicates, clips contained in it.
    The same text read by other voices (the dup1 group) is not the same recording; every row carries its cluster."""
    import pyarrow.parquet as pq

    out, summary = sample_run
    corpus, rejects = corpus_rows(out), reject_rows(out)
    kept = {r["source_id"] for r in corpus if r["source"].endswith("sample/sources/mixed/jfk_then_spanish.opus")}
    assert len(kept) == 1
    (keeper,) = kept
    dropped = {r["source"].split("sample/")[-1]: r for r in rejects if r["reason"] == "audio_duplicate"}
    assert set(dropped) == {"sources/en/jfk.opus", "sources/mixed/jfk_reupload.mp3"}
    for r in dropped.values():
        assert r["scope"] == "source" and r["duplicate_of"] == r["cluster_id"] == keeper and r["duration_ms"] > 8000
        assert "contained in it" in r["detail"] and "bit error rate" in r["detail"], r["detail"]
    assert summary["audio_duplicates"]["dropped"] == 2 and summary["audio_duplicates"]["clusters"] == 1
    assert summary["inputs"]["rejected_by_reason"]["audio_duplicate"] == 2
    # every row has its cluster: a kept source its own id, a text duplicate its keeper's, an audio duplicate its keeper's
    assert all(r["cluster_id"] == r["source_id"] for r in corpus)
    assert all(r["cluster_id"] == (r["duplicate_of"] if r["reason"] in ("duplicate", "audio_duplicate") else r["source_id"]) for r in rejects)
    pairs = pq.read_table(out / "audio_duplicates.parquet").to_pylist()
    linked = {r["a_id"] for r in pairs} | {r["b_id"] for r in pairs}
    assert linked == {keeper, *(r["source_id"] for r in dropped.values())} and max(r["bit_error_rate"] for r in pairs) < 0.1


def test_every_reject_of_a_readable_file_has_its_hours(sample_run):
    """Sources refused before decoding (bad transcripts, duplicates, wrong language...) have the length their
    container's header gives, so the hours per reason are complete; only files that cannot be read have none."""
    out, summary = sample_run
    unreadable = {"bad_audio", "no_audio_stream", "bad_manifest_line", "missing_audio", "audio_not_found"}
    rejects = [r for r in reject_rows(out) if r["scope"] == "source"]
    assert {r["reason"] for r in rejects} - unreadable >= {"all_lowercase", "duplicate", "missing_transcript", "empty_transcript"}
    for r in rejects:
        if r["reason"] not in unreadable:
            assert r["duration_ms"] and r["duration_ms"] > 500, r
    by_reason = summary["hours"]["rejected_by_reason"]
    assert all(by_reason[reason] > 0 for reason in {r["reason"] for r in rejects} - unreadable), by_reason
