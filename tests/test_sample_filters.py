"""The filters on the bundled sample, scored against sample/labels.jsonl (what `wspsr eval` prints)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.eval.labels import format_report, outcomes, read_labels, score
from support.output import committed_rows

pytestmark = pytest.mark.slow
SAMPLE = Path(__file__).resolve().parent.parent / "sample"
# Outcomes the filters must get exactly right on the sample: every planted defect and every X->en pair.
EXACT = [
    "all_uppercase", "all_lowercase", "missing_punctuation", "repetitive_text", "mostly_non_speech_markers",
    "machine_generated_captions", "duplicate", "audio_duplicate", "translate",
]
# Whisper base does not recognise espeak-ng's voices for these languages reliably (sample/README.md measured
# median p = 0.55 it, 0.15 ru, 0.01 pt); their clean sources may fail the agreement rule, and that is reported.
WEAK_FOR_BASE = {"it", "pt", "ru"}


@pytest.fixture(scope="module")
def report(sample_run):
    out, _ = sample_run
    result = score(outcomes(out, read_labels(SAMPLE / "labels.jsonl")))
    print("\n" + format_report(result))
    return result


def test_planted_defects_and_translations_are_handled_as_labelled(report):
    table = report["per_outcome"]
    for name in EXACT:
        assert table[name]["precision"] == 1.0 and table[name]["recall"] == 1.0, (name, table[name])
    assert table["language_mismatch"]["recall"] == 1.0  # both planted mismatches (English speech, de/ru text)


def test_only_languages_whisper_base_cannot_hear_are_lost_and_the_evidence_is_kept(report):
    for wrong in report["disagreements"]:
        assert wrong["expected"] == "keep" and wrong["got"] == "language_mismatch", wrong
        assert wrong["language"] in WEAK_FOR_BASE, wrong
        own = float(re.search(r"audio gives \w+ ([0-9.]+)", wrong["detail"]).group(1))
        assert own < 0.2 and "audio:" in wrong["detail"]  # the probabilities base gave are in the reject detail


def test_every_language_keeps_clean_sources_and_each_duplicate_group_one(sample_run, report):
    out, _ = sample_run
    rows = committed_rows(out, "corpus")
    assert {r["language"] for r in rows if r["task"] == "transcribe"} >= {"en", "de", "es", "it", "ru", "pt", "pl", "zh"}
    for group, got in report["duplicate_groups"].items():
        assert got.count("keep") == 1 and set(got) == {"keep", "duplicate"}, group
    for row in rows:
        assert row["transcript_language"] and row["audio_language"]
        assert 0 < row["transcript_language_prob"] <= 1 and 0 < row["audio_language_prob"] <= 1
    translated = [r for r in rows if r["task"] == "translate"]
    assert translated and all(r["language"] == r["audio_language"] != "en" and r["transcript_language"] == "en" for r in translated)


def test_rejects_name_the_rule_and_the_measured_value(sample_run):
    out, _ = sample_run
    rejects = {r["reason"]: r for r in committed_rows(out, "rejects") if r["scope"] == "source"}
    assert "cased letters are capitals" in rejects["all_uppercase"]["detail"]
    assert "gzip compression ratio" in rejects["repetitive_text"]["detail"] or "n-grams" in rejects["repetitive_text"]["detail"]
    assert rejects["duplicate"]["duplicate_of"] and rejects["duplicate"]["stage"] == "remove_duplicates"


def test_summary_reports_counts_and_hours_per_rule(sample_run):
    _, summary = sample_run
    by_reason = summary["inputs"]["rejected_by_reason"]
    assert by_reason["duplicate"] == 3 and by_reason["all_uppercase"] == 2
    assert set(summary["hours"]["rejected_by_reason"]) == set(by_reason)
    assert summary["hours"]["per_task"]["translate"] > 0


def test_eval_command_prints_the_table(sample_run):
    out, _ = sample_run
    done = subprocess.run([sys.executable, "-m", "jobs.eval", "--corpus", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "precision" in done.stdout and "translate" in done.stdout
    assert json.loads((out / "eval.json").read_text())["sources"] == 65
