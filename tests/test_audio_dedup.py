"""Audio duplicates on real speech: JFK's recording re-encoded, resampled, cut at the start, band-limited like a
phone call, and inside a longer recording is found as the same recording (the clip as contained); other recordings,
the same text read by other voices included, are not. Fingerprints come from the ffmpeg run that decodes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipeline.io.media import decode_audio, decode_audio_and_fingerprint, ffmpeg_binary
from stages.audio_dedup import ITEMS_PER_SECOND, AudioDedupOptions, containment, fingerprint_keys, is_duplicate, match
from support.data import JFK

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = AudioDedupOptions()
# (name, ffmpeg arguments between the input and the output file)
VARIANTS = {
    "mp3_32k.mp3": ["-b:a", "32k"],
    "opus_16k.opus": ["-c:a", "libopus", "-b:a", "16k"],
    "resampled_8k.wav": ["-ar", "8000"],
    "phone.opus": ["-af", "volume=0.5,highpass=f=200,lowpass=f=3400", "-ar", "8000", "-c:a", "libopus", "-b:a", "12k"],
}


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_binary(), "-nostdin", "-v", "error", "-y", *args], check=True)


def fingerprint(path: Path) -> np.ndarray:
    return decode_audio_and_fingerprint(path)[1]


@pytest.fixture(scope="module")
def copies(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("copies")
    made = {}
    for name, args in VARIANTS.items():
        ffmpeg("-i", str(JFK), *args, str(folder / name))
        made[name] = folder / name
    ffmpeg("-ss", "2.3", "-i", str(JFK), str(folder / "cut_2.3s.flac"))
    made["cut_2.3s.flac"] = folder / "cut_2.3s.flac"
    before, after = ROOT / "tests/data/speech/en_counting.flac", ROOT / "tests/data/speech/conversation_en.flac"
    ffmpeg("-i", str(before), "-i", str(JFK), "-i", str(after), "-filter_complex",
           "".join(f"[{i}:a]aresample=16000,aformat=channel_layouts=mono[s{i}];" for i in range(3)) + "[s0][s1][s2]concat=n=3:v=0:a=1",
           str(folder / "longer.flac"))
    made["longer.flac"] = folder / "longer.flac"
    return made


def test_the_fingerprint_comes_from_the_decoding_run():
    pcm, fp = decode_audio_and_fingerprint(JFK)
    assert np.array_equal(pcm, decode_audio(JFK)) and fp.dtype == np.dtype("<u4")
    assert abs(len(fp) - len(pcm) / 16000 * ITEMS_PER_SECOND) < 3 * ITEMS_PER_SECOND  # Chromaprint's edges cost ~2 s


@pytest.mark.parametrize("name", [*VARIANTS, "cut_2.3s.flac"])
def test_copies_of_a_real_recording_are_the_same_recording(copies, name):
    original, copy = fingerprint(JFK), fingerprint(copies[name])
    found = match(original, copy)
    assert is_duplicate(found, OPTIONS) and found.bit_error_rate < 0.15, found
    assert len(np.intersect1d(fingerprint_keys(original, OPTIONS), fingerprint_keys(copy, OPTIONS))) >= OPTIONS.min_shared_keys
    if name.startswith("cut"):
        assert abs(found.offset_s + 2.3) < 0.2 and containment(found, len(original), len(copy), OPTIONS) == "b_in_a"
    else:
        assert found.offset == 0 and containment(found, len(original), len(copy), OPTIONS) is None


def test_a_clip_inside_a_longer_recording_is_found_as_contained(copies):
    clip, longer = fingerprint(JFK), fingerprint(copies["longer.flac"])
    found = match(clip, longer)
    counting_s = len(decode_audio(ROOT / "tests/data/speech/en_counting.flac")) / 16000
    assert is_duplicate(found, OPTIONS) and abs(found.offset_s - counting_s) < 0.3, found
    assert containment(found, len(clip), len(longer), OPTIONS) == "a_in_b"


def test_recordings_that_only_share_a_stretch_are_not_duplicates(tmp_path):
    """One recording ends with Kennedy's words, the other begins with them (as consecutive parts of a stream cut with
    overlap): the shared 11 s match at their offset, but each holds 10-20 s that the other lacks, so neither is a
    duplicate of the other; the same file against a copy of itself with a second of silence added still is."""
    counting, conversation = ROOT / "tests/data/speech/en_counting.flac", ROOT / "tests/data/speech/conversation_en.flac"
    for name, parts in (("ends.flac", [counting, JFK]), ("begins.flac", [JFK, conversation])):
        inputs = [arg for p in parts for arg in ("-i", str(p))]
        chain = "".join(f"[{i}:a]aresample=16000,aformat=channel_layouts=mono[s{i}];" for i in range(len(parts)))
        ffmpeg(*inputs, "-filter_complex", chain + "".join(f"[s{i}]" for i in range(len(parts))) + f"concat=n={len(parts)}:v=0:a=1", str(tmp_path / name))
    ends, begins = fingerprint(tmp_path / "ends.flac"), fingerprint(tmp_path / "begins.flac")
    found = match(ends, begins)
    assert found is not None and found.bit_error_rate < 0.1, found  # the shared stretch lines up
    assert not is_duplicate(found, OPTIONS, min(len(ends), len(begins))), found
    ffmpeg("-i", str(tmp_path / "ends.flac"), "-af", "adelay=1000", str(tmp_path / "later.flac"))
    later = fingerprint(tmp_path / "later.flac")
    assert is_duplicate(match(ends, later), OPTIONS, min(len(ends), len(later)))


def test_other_recordings_are_not_duplicates():
    """Different speech, and the same text read by three other voices (the sample's near-duplicate group)."""
    same_text = [ROOT / "sample/sources/en/en_dup1_a.opus", ROOT / "sample/media/en-dup1-b.opus", ROOT / "sample/media/en-dup1-c.mp3"]
    others = [ROOT / "tests/data/speech" / n for n in ("conversation_en.flac", "en_quick_brown_fox.flac", "en_hello_world.flac")]
    prints = {p.name: fingerprint(p) for p in [JFK, *same_text, *others]}
    names = list(prints)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            found = match(prints[a], prints[b])
            assert not is_duplicate(found, OPTIONS), (a, b, found)
            assert found is None or found.bit_error_rate > 0.3, (a, b, found)


def test_silence_and_tones_are_no_evidence(tmp_path):
    """Two files that share only silence or a held tone are not the same recording."""
    for name, source in (("a.wav", "anullsrc=r=16000:cl=mono"), ("b.wav", "sine=frequency=440:sample_rate=16000")):
        ffmpeg("-f", "lavfi", "-t", "20", "-i", source, str(tmp_path / name))
    for name in ("a.wav", "b.wav"):
        fp = fingerprint(tmp_path / name)
        assert len(fingerprint_keys(fp, OPTIONS)) == 0
        assert not is_duplicate(match(fp, fp.copy()), OPTIONS)


def test_the_global_step_finds_every_copy_and_nothing_else(copies):
    """The step the corpus job runs over the whole run (here on an in-process plan): JFK's copies form one connected
    set of verified edges; other speech, the same text in other voices and silence join none."""
    from test_dedup import InProcessPlan

    from pipeline.schema import table_from_rows
    from stages.audio_dedup import find_audio_duplicates

    paths = {"jfk": JFK, **{name: path for name, path in copies.items()}}
    for name in ("conversation_en.flac", "en_quick_brown_fox.flac", "en_hello_world.flac", "es_pangrama.flac"):
        paths[name] = ROOT / "tests/data/speech" / name
    paths["dup1_a"] = ROOT / "sample/sources/en/en_dup1_a.opus"
    paths["dup1_b"] = ROOT / "sample/media/en-dup1-b.opus"
    rows = [{"ref": ref, "source_id": name, "fingerprint": fingerprint(path).tobytes(), "reject_reason": None}
            for ref, (name, path) in enumerate(sorted(paths.items()))]
    rows.append({"ref": len(rows), "source_id": "rejected copy", "fingerprint": fingerprint(JFK).tobytes(), "reject_reason": "bad_audio"})
    table = table_from_rows(rows)
    edges = find_audio_duplicates(InProcessPlan(), [table.slice(0, 7), table.slice(7)], OPTIONS, rows_hint=table.num_rows)
    linked = set(edges["a_id"].to_pylist()) | set(edges["b_id"].to_pylist())
    # longer.flac is counting + JFK + conversation: the conversation recording is in it too
    assert linked == {"jfk", *copies, "conversation_en.flac"}, edges.to_pylist()
    assert max(edges["bit_error_rate"].to_pylist()) < 0.15
    contained = {(e["a_id"], e["b_id"], e["contained"]) for e in edges.to_pylist() if e["contained"]}
    assert ("jfk", "longer.flac", "a_in_b") in contained and ("conversation_en.flac", "longer.flac", "a_in_b") in contained


# --- one decision per cluster, and the committed output rewritten by it (no Ray) -----------------------------------


def edge(a_id, b_id, ber=0.03, contained=None, offset_s=0.0, qa="12:0000000010000", qb="12:0000000010000"):
    return {"a": 0, "b": 1, "a_id": a_id, "b_id": b_id, "bit_error_rate": ber, "offset_s": offset_s, "overlap_s": 9.0,
            "contained": contained, "a_quality": qa, "b_quality": qb}


def test_a_cluster_keeps_its_best_copy_and_a_clip_goes_to_the_longer_recording():
    from stages.audio_dedup import EDGE_SCHEMA, resolve_audio_duplicates

    long_talk, clip, mirror = "12:0000000038000", "12:0000000011000", "12:0000000011000"
    edges = [edge("clip", "talk", contained="a_in_b", offset_s=2.0, qa=clip, qb=long_talk), edge("clip", "mirror", qa=clip, qb=mirror),
             # captions that are clearly better (punctuated and cased against all lowercase) win over a longer recording
             edge("lowercase-talk", "cased-clip", contained="b_in_a", qa="01:0000000060000", qb="12:0000000005000")]
    decisions = resolve_audio_duplicates(pa.Table.from_pylist(edges, schema=EDGE_SCHEMA))
    assert dict(zip(decisions.dropped.to_pylist(), decisions.keepers.to_pylist())) == {"clip": "talk", "mirror": "talk", "lowercase-talk": "cased-clip"}
    details = {source: decisions.detail(i) for i, source in enumerate(decisions.dropped.to_pylist())}
    assert details["clip"].startswith("same audio as talk (a clip contained in it): bit error rate 0.030 over 9.0 s, starting at +2.00 s")
    assert details["mirror"].endswith("; its cluster keeps talk") and "same audio as clip" in details["mirror"]
    assert details["lowercase-talk"].startswith("same audio as cased-clip (contains it)")
    assert (decisions.clusters, decisions.contained) == (2, 1)
    again = resolve_audio_duplicates(pa.Table.from_pylist(edges[::-1], schema=EDGE_SCHEMA))
    assert again.version == decisions.version and again.dropped.equals(decisions.dropped)


def _source(source_id, ref, windows=0, reject=None, duplicate_of=None, seconds=10):
    from pipeline.io.media import encode_flac

    flac = encode_flac(np.zeros(16000, np.int16))
    return {
        "source_id": source_id, "source": f"/data/{source_id}.flac", "ref": ref, "key": ref, "duration_ms": None if reject else seconds * 1000,
        "reject_reason": reject, "reject_stage": "remove_duplicates" if reject else None, "reject_detail": reject and f"near-duplicate of {duplicate_of}",
        "duplicate_of": duplicate_of, "language": "en", "code_switched": False, "fingerprint": None if reject else b"\x01\x00\x00\x00" * 8,
        "dedup_quality": "12:x", "dropped": [{"stage": "judge_windows", "reason": "transcript_mismatch", "detail": "d", "start_ms": 0, "end_ms": 1000}] if windows else [],
        "windows": [{"segment_id": f"{source_id}-{k:05d}", "window_index": k, "start_ms": k * 1000, "end_ms": k * 1000 + 1000, "flac": flac,
                     "text": "Hello there.", "has_speech": True, "language": "en", "task": "transcribe"} for k in range(windows)],
    }


def test_publishing_drops_the_duplicates_moves_their_clusters_and_keeps_the_accounts(tmp_path, monkeypatch):
    """Two committed shards: the keeper and a source the audio step drops in one, a text duplicate kept for the dropped
    source in the other. Publishing rewrites both, a second publish changes nothing, and a crash between the new files
    and the marker leaves the shard as it was until the next run finishes it."""
    from pipeline.io.commit import OutputDir, OutputOptions
    from pipeline.schema import table_from_rows
    from pipeline.sinks.corpus import CORPUS_TABLES, audio_work, commit_corpus_batch, publish_shard, summarize
    from stages.audio_dedup import MATCH_SCHEMA, AudioDuplicateDecisions
    from support.output import corpus_rows, markers, reject_rows

    out = OutputDir(tmp_path, CORPUS_TABLES, "fp", side_files=())
    out.prepare({"job": "test"}, overwrite=False)
    options = OutputOptions()
    first = commit_corpus_batch(table_from_rows([_source("keeper", 0, windows=2), _source("copy", 1, windows=3)]), out, options)
    second = commit_corpus_batch(table_from_rows([_source("text-dup", 2, reject="duplicate", duplicate_of="copy"), _source("alone", 3, windows=1)]), out, options)
    found = np.arange(4, dtype=np.int64)
    before = summarize(out, found)
    assert before["inputs"]["kept"] == 3 and before["windows"]["total"] == 6 and second["clusters"] == ["copy"]
    assert {r["source_id"]: r["cluster_id"] for r in corpus_rows(tmp_path)} == {"keeper": "keeper", "copy": "copy", "alone": "alone"}
    match = pa.Table.from_pylist([{"other": "keeper", "bit_error_rate": 0.03, "overlap_s": 9.0, "at_s": 0.0, "role": None}], schema=MATCH_SCHEMA)
    decisions = AudioDuplicateDecisions(pa.array(["copy"]), pa.array(["keeper"]), match, "v1", 1, 0)
    assert sorted(audio_work(out, decisions)[0]) == sorted([first["shard"], second["shard"]]) and audio_work(out, decisions)[1] == []

    monkeypatch.setenv("WSPSR_FAULTS", "raise@commit")
    monkeypatch.setenv("WSPSR_FAULTS_DIR", str(tmp_path.parent))
    with pytest.raises(RuntimeError, match="injected"):
        publish_shard(out, first["shard"], options, decisions)
    assert summarize(out, found)["inputs"] == before["inputs"]  # the marker still names the old files: nothing changed
    assert out.finish_pending()  # the new files without a marker are leftovers of the crash
    for shard in audio_work(out, decisions)[0]:
        publish_shard(out, shard, options, decisions)

    after = summarize(out, found)
    assert after["accounting"]["ok"] and after["inputs"]["kept"] == 2 and after["inputs"]["rejected_by_reason"] == {"audio_duplicate": 1, "duplicate": 1}
    assert after["windows"]["total"] == 3 and after["hours"]["rejected_by_reason"]["audio_duplicate"] == round(10 / 3600, 4)
    assert "transcript_mismatch" in after["stretches_dropped"] and after["stretches_dropped"]["transcript_mismatch"]["count"] == 2  # copy's went
    rows = {r["source_id"]: r for r in reject_rows(tmp_path) if r["scope"] == "source"}
    assert (rows["copy"]["reason"], rows["copy"]["duplicate_of"], rows["copy"]["cluster_id"]) == ("audio_duplicate", "keeper", "keeper")
    assert rows["copy"]["detail"] == "same audio as keeper (the same recording): bit error rate 0.030 over 9.0 s, starting at +0.00 s of it"
    assert rows["text-dup"]["cluster_id"] == "keeper" and rows["text-dup"]["duplicate_of"] == "copy"
    assert {r["source_id"] for r in corpus_rows(tmp_path)} == {"keeper", "alone"}
    assert not [r for r in reject_rows(tmp_path) if r["source_id"] == "copy" and r["scope"] == "stretch"]
    # Published: the markers say under which decisions, the old files are gone, and publishing again does nothing.
    assert {m.get("version") for m in markers(tmp_path)} == {"v1"}
    assert all("-v1-" in p.name for table in CORPUS_TABLES for p in (tmp_path / table).glob("*.parquet"))
    assert audio_work(out, decisions) == ([], []) and publish_shard(out, first["shard"], options, decisions) == 0
    # Other decisions later (inputs changed): "copy" kept and "keeper" dropped for it. The shard that dropped "copy"
    # cannot bring its windows back: it is processed again; the text duplicate's cluster moves back to "copy".
    other = AudioDuplicateDecisions(pa.array(["keeper"]), pa.array(["copy"]), match, "v2")
    assert audio_work(out, other) == ([second["shard"]], [first["shard"]])
    with pytest.raises(Exception, match="no longer an audio duplicate"):
        publish_shard(out, first["shard"], options, other)
    publish_shard(out, second["shard"], options, other)
    assert {r["source_id"]: r["cluster_id"] for r in reject_rows(tmp_path) if r["source_id"] == "text-dup"} == {"text-dup": "copy"}
    assert audio_work(out, other) == ([], [first["shard"]])
