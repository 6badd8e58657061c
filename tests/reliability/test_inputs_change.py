"""Inputs added, removed, reordered and changed between runs, in a folder and in a manifest: after each rerun every
source has exactly one outcome, and the folder holds exactly what a clean run over the same inputs writes (rows,
ids, rejects, duplicate clusters). Real recordings (JFK, tests/data/speech); the corpus job in this process on the
session's Ray, text dedup and audio dedup on (their decisions change with the inputs), Whisper's checks off."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from support.data import DATA, JFK, JFK_TEXT, ffmpeg, srt
from support.output import assert_accounted, committed_rows

pytestmark = pytest.mark.slow
SPEECH = DATA / "speech"
FILTERS = ["--set", "machine_generated.enabled=false", "--set", "language.enabled=false", "--set", "ray.sources_per_block=2",
           "--set", "ray.num_cpus=2", "--quiet"]
SENTENCE = "the committee met on tuesday to discuss the new budget for the city library and its staff"


def corpus(sources: list[str], out: Path, *extra: str) -> dict:
    from jobs.corpus import run

    return run(["--sources", *sources, "--out", str(out), *FILTERS, *extra])


def outcome(out: Path) -> dict:
    """What a reader sees: the windows and the rejects with their decisions (not the shard layout)."""
    windows = sorted((r["segment_id"], name(r["source"]), r["source_id"], r["cluster_id"], r["text"], r["start_ms"], r["end_ms"])
                     for r in committed_rows(out, "corpus"))
    rejects = sorted((name(r["source"]), r["scope"], r["reason"], r["detail"], r["source_id"], r["duplicate_of"], r["cluster_id"],
                      r["start_ms"] or 0) for r in committed_rows(out, "rejects"))
    return {"windows": windows, "rejects": rejects}


def name(source: str) -> str:
    return Path(source).stem


def place(folder: Path, name: str, audio: Path, text: str, seconds: float, suffix: str = ".en.srt") -> None:
    shutil.copyfile(audio, folder / f"{name}{audio.suffix}")
    (folder / f"{name}{suffix}").write_text(srt([(0.0, seconds, text)]), encoding="utf-8")


@pytest.fixture(scope="module")
def recordings(tmp_path_factory) -> dict[str, Path]:
    """JFK re-encoded (the same recording uploaded twice), beside the distinct real clips."""
    folder = tmp_path_factory.mktemp("recordings")
    ffmpeg("-i", str(JFK), "-c:a", "libopus", "-b:a", "32k", str(folder / "jfk.opus"))
    return {"jfk_opus": folder / "jfk.opus"}


def first_sources(folder: Path, recordings: dict[str, Path]) -> None:
    place(folder, "b_fox", SPEECH / "en_quick_brown_fox.flac", "The quick brown fox jumps over the lazy dog.", 2.8)
    place(folder, "c_count", SPEECH / "en_counting.flac", "One two three four five six seven eight nine ten.", 2.9)
    place(folder, "jfk_talk", JFK, JFK_TEXT, 10.9)  # keeps the cluster: punctuated captions
    place(folder, "jfk_reupload", recordings["jfk_opus"], "fellow citizens we are gathered here today to hear the president", 10.9)
    place(folder, "n_plain", SPEECH / "en_hello_world.flac", SENTENCE, 1.1)  # a near-duplicate text, the worse copy


def test_a_folder_that_grows_shrinks_and_changes_between_runs(tmp_path, recordings, local_ray):
    folder = tmp_path / "talks"
    folder.mkdir()
    first_sources(folder, recordings)
    out = tmp_path / "out"
    summary = corpus([str(folder)], out)
    assert summary["inputs"]["in"] == 5 and summary["audio_duplicates"]["dropped"] == 1
    assert {r[0]: r[2] for r in outcome(out)["rejects"] if r[1] == "source"}["jfk_reupload"] == "audio_duplicate"

    # Added: one sorting before all others, one with a language suffix, one after; a better copy of n_plain's text.
    place(folder, "a_better", SPEECH / "pt_pangrama.flac", SENTENCE[0].upper() + SENTENCE[1:] + ".", 3.0)
    place(folder, "e_es", SPEECH / "es_pangrama.flac", "El veloz murciélago hindú comía feliz cardillo y kiwi.", 3.4, ".es.srt")
    place(folder, "z_last", SPEECH / "fr_comptage.flac", "Un deux trois quatre cinq six sept huit neuf dix.", 3.0)
    grown = corpus([str(folder)], out)
    clean = tmp_path / "clean-grown"
    reference = corpus([str(folder)], clean)
    assert grown["inputs"] == reference["inputs"] and grown["inputs"]["in"] == 8
    assert outcome(out) == outcome(clean)
    reasons = {r[0]: r[2] for r in outcome(out)["rejects"] if r[1] == "source"}
    assert reasons["n_plain"] == "duplicate" and reasons["jfk_reupload"] == "audio_duplicate"  # the committed keeper lost to a better copy
    assert_accounted(out, "corpus")

    # Removed: the audio keeper and one clip; changed: b_fox's captions. The re-upload comes back as a kept source.
    for name in ("jfk_talk.flac", "jfk_talk.en.srt", "c_count.flac", "c_count.en.srt"):
        (folder / name).unlink()
    (folder / "b_fox.en.srt").write_text(srt([(0.0, 2.8, "A quick brown fox jumped over a lazy dog.")]), encoding="utf-8")
    shrunk = corpus([str(folder)], out)
    clean = tmp_path / "clean-shrunk"
    corpus([str(folder)], clean)
    assert outcome(out) == outcome(clean) and shrunk["inputs"]["in"] == 6
    assert "jfk_reupload" in {w[1] for w in outcome(out)["windows"]}
    assert any(w[4] == "A quick brown fox jumped over a lazy dog." for w in outcome(out)["windows"])
    assert_accounted(out, "corpus")

    # Nothing changed: nothing is processed or rewritten.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    again = corpus([str(folder)], out)
    assert again["accounting"]["ok"] and {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")} == before


def test_a_manifest_that_grows_across_pieces_and_is_reordered(tmp_path, local_ray):
    media = tmp_path / "media"
    media.mkdir()
    clips = [("en_counting", "One two three four five six seven eight nine ten.", "en"),
             ("es_conteo", "Uno dos tres cuatro cinco seis siete ocho nueve diez.", "es"),
             ("it_conteggio", "Uno due tre quattro cinque sei sette otto nove dieci.", "it"),
             ("pt_contagem", "Um dois três quatro cinco seis sete oito nove dez.", "pt"),
             ("pl_liczenie", "Jeden dwa trzy cztery pięć sześć siedem osiem dziewięć dziesięć.", "pl")]
    lines = []
    for name, text, language in clips:
        shutil.copyfile(SPEECH / f"{name}.flac", media / f"{name}.flac")
        lines.append(json.dumps({"audio": f"media/{name}.flac", "text": text, "language": language}, ensure_ascii=False))
    manifest = tmp_path / "manifest.jsonl"
    pieces = ["--set", "sources.manifest_split_mb=0.0001",  # about 100 bytes: every line a piece of its own
              "--set", "dedup.enabled=false", "--set", "audio_dedup.enabled=false"]

    manifest.write_text("\n".join(lines[1:4]) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    assert corpus([str(manifest)], out, *pieces)["inputs"]["in"] == 3
    manifest.write_text("\n".join([lines[0], *lines[1:4], "{not json", lines[4]]) + "\n", encoding="utf-8")  # grows at both ends
    grown = corpus([str(manifest)], out, *pieces)
    clean = tmp_path / "clean"
    corpus([str(manifest)], clean, *pieces)
    assert grown["inputs"]["in"] == 6 and grown["inputs"]["rejected_by_reason"] == {"bad_manifest_line": 1}
    assert outcome(out) == outcome(clean)
    assert_accounted(out, "corpus")

    manifest.write_text("\n".join([lines[4], lines[2], "{not json", lines[0], lines[3], lines[1]]) + "\n", encoding="utf-8")
    reordered = corpus([str(manifest)], out, *pieces)
    assert reordered["accounting"]["ok"] and reordered["inputs"] == grown["inputs"]
    kept = {w[1] for w in outcome(out)["windows"]}
    assert kept == {w[1] for w in outcome(clean)["windows"]} and len(kept) == 5
    assert_accounted(out, "corpus")
