import json
import os
import shutil

from pipeline.io.sources import SourceOptions, discover_sources


def touch(path, text="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def reasons(discovery):
    return sorted((r["source"].split("/")[-1], r["reason"]) for r in discovery.rejects)


def test_directory_pairs_by_stem_with_language_suffix(tmp_path):
    root = tmp_path / "data"
    touch(root / "en" / "talk.mp3")
    touch(root / "en" / "talk.en.srt")
    touch(root / "de" / "rede.v2.opus")
    touch(root / "de" / "rede.v2.vtt")  # exact stem, no language
    touch(root / "x" / "lonely.wav")
    touch(root / "x" / "orphan.de.srt")
    touch(root / "x" / "notes.md")
    found = discover_sources([str(root)])
    by_name = {os.path.basename(r["audio_path"]): r for r in found.sources}
    assert set(by_name) == {"talk.mp3", "rede.v2.opus"}
    assert by_name["talk.mp3"]["language"] == "en"
    assert by_name["talk.mp3"]["source"] == f"{root}/en/talk.mp3"
    assert by_name["rede.v2.opus"]["language"] is None
    assert reasons(found) == [("lonely.wav", "missing_transcript"), ("orphan.de.srt", "missing_audio")]


def test_one_source_per_transcript_language_and_format_preference(tmp_path):
    root = tmp_path / "d"
    touch(root / "a.mp4")
    touch(root / "a.en.vtt")
    touch(root / "a.en.srt")
    touch(root / "a.de.srt")
    found = discover_sources([str(root)])
    pairs = sorted((r["language"], os.path.basename(r["transcript_path"])) for r in found.sources)
    assert pairs == [("de", "a.de.srt"), ("en", "a.en.srt")]


def test_ids_are_stable_across_locations(tmp_path):
    for place in ("one", "two"):
        touch(tmp_path / place / "corpus" / "a.wav")
        touch(tmp_path / place / "corpus" / "a.txt")
    first = discover_sources([str(tmp_path / "one" / "corpus")]).sources[0]["source_id"]
    second = discover_sources([str(tmp_path / "two" / "corpus")]).sources[0]["source_id"]
    assert first == second and len(first) == 16


def test_manifest_lines_good_and_bad(tmp_path):
    touch(tmp_path / "media" / "a.opus")
    touch(tmp_path / "media" / "a.srt")
    touch(tmp_path / "media" / "b.opus")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.wav"
    touch(outside)
    lines = [
        {"id": "clip-a", "audio": "media/a.opus", "transcript": "media/a.srt", "language": "EN", "speaker": "x", "tags": [1, 2]},
        {"audio": "media/b.opus", "text": "Inline words."},
        "{broken json",
        {"audio": "media/b.opus"},
        {"audio": "concat:media/a.opus|media/b.opus", "text": "t"},
        {"audio": "http://example.com/a.mp3", "text": "t"},
        {"audio": str(outside), "text": "t"},
        {"audio": "../" + outside.name, "text": "t"},
        {"id": "bad id!", "audio": "media/b.opus", "text": "t"},
        {"id": "clip-a", "audio": "media/b.opus", "text": "dup"},
        {"audio": "media/b.opus", "text": "t", "language": "english please"},
        [1, 2],
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n\n")
    found = discover_sources([str(manifest)])
    ids = {r["source_id"]: r for r in found.sources}
    assert "clip-a" in ids and len(found.sources) == 2
    a = ids["clip-a"]
    assert a["language"] == "en" and json.loads(a["metadata"]) == {"speaker": "x", "tags": [1, 2]}
    inline = next(r for r in found.sources if r["source_id"] != "clip-a")
    assert inline["inline_text"] == "Inline words." and inline["transcript_path"] is None
    got = sorted((r["detail"].split(":")[0], r["reason"]) for r in found.rejects)
    assert got == [
        ("line 10", "duplicate_source"),
        ("line 11", "bad_manifest_line"),
        ("line 12", "bad_manifest_line"),
        ("line 3", "bad_manifest_line"),
        ("line 4", "bad_manifest_line"),
        ("line 5", "unsafe_path"),
        ("line 6", "unsafe_path"),
        ("line 7", "unsafe_path"),
        ("line 8", "unsafe_path"),
        ("line 9", "bad_manifest_line"),
    ]
    allowed = discover_sources([str(manifest)], SourceOptions(allowed_roots=(str(tmp_path.parent),)))
    assert len(allowed.sources) == 4


def test_symlink_escaping_the_root_is_refused(tmp_path):
    root = tmp_path / "root"
    secret = touch(tmp_path / "secret.wav")
    touch(root / "a.txt")
    os.symlink(secret, root / "a.wav")
    found = discover_sources([str(root)])
    assert not found.sources and reasons(found) == [("a.wav", "unsafe_path")]


def test_discovery_is_deterministic(tmp_path):
    for i in range(20):
        touch(tmp_path / "d" / f"{i:02d}" / f"f{i}.wav")
        touch(tmp_path / "d" / f"{i:02d}" / f"f{i}.srt")
    first = discover_sources([str(tmp_path / "d")])
    shutil.copytree(tmp_path / "d", tmp_path / "copy" / "d")
    second = discover_sources([str(tmp_path / "copy" / "d")])
    assert [r["source_id"] for r in first.sources] == [r["source_id"] for r in second.sources]
