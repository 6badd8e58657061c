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


# --- discovery in splits (what the corpus job's tasks do) ---------------------------------------------------

def test_manifest_pieces_read_back_every_line_once_with_its_number(tmp_path):
    """A plain manifest cut into line-aligned pieces gives the rows (ids, line numbers, rejects) of one whole read."""
    import gzip
    import random

    from pipeline.io.sources import _manifest_pieces, manifest_rows

    rng = random.Random(0)
    lines = []
    for i in range(1500):
        kind = rng.random()
        lines.append("" if kind < 0.03 else "{broken" if kind < 0.06 else json.dumps({"audio": f"a/{i}.wav", "text": "x" * rng.randint(1, 200)}))
    manifest = touch(tmp_path / "m.jsonl", "\n".join(lines) + "\n")
    whole = [(r["manifest_line"], r["source_id"], r.get("reject_reason")) for r in manifest_rows(str(manifest), SourceOptions())]
    assert len(whole) == sum(1 for line in lines if line.strip())
    for size in (64, 700, 5000, 10**7):
        pieces = _manifest_pieces(str(manifest), size)
        assert pieces[0][0] == 0 and pieces[-1][1] is None and all(a[1] == b[0] for a, b in zip(pieces, pieces[1:]))
        read = [(r["manifest_line"], r["source_id"], r.get("reject_reason"))
                for start, end, first in pieces for r in manifest_rows(str(manifest), SourceOptions(), start=start, end=end, first_line=first)]
        assert read == whole, size
    packed = tmp_path / "m.jsonl.gz"
    packed.write_bytes(gzip.compress(manifest.read_bytes()))
    assert _manifest_pieces(str(packed), 64) == [(0, None, 1)]  # gzip cannot be cut: one task
    assert [r["manifest_line"] for r in manifest_rows(str(packed), SourceOptions())] == [w[0] for w in whole]


def test_splits_find_what_one_pass_finds_with_stable_refs(tmp_path):
    from pipeline.io.sources import plan_splits, split_rows

    root = tmp_path / "data"
    touch(root / "top.mp3")
    touch(root / "top.srt")
    touch(root / "en" / "talk.mp3")
    touch(root / "en" / "deeper" / "talk.en.srt")  # another folder: does not pair with en/talk.mp3
    touch(root / "en" / "deeper" / "talk.mp3")
    touch(root / "de" / "rede.opus")
    touch(root / ".hidden" / "x.mp3")
    manifest = touch(tmp_path / "list.jsonl", "\n".join(json.dumps({"audio": "data/top.mp3", "text": f"line {i}"}) for i in range(5)) + "\n")
    options = SourceOptions(manifest_split_mb=0.0001)  # 100-byte pieces
    splits = plan_splits([str(root), str(manifest)], options)
    assert [(s.kind, s.part) for s in splits[:3]] == [("folder", None), ("folder", "de"), ("folder", "en")]
    assert len(splits) > 4  # the manifest in several pieces
    rows = [r for split in splits for r in split_rows(split, options)]
    refs = [r["ref"] for r in rows]
    assert len(set(refs)) == len(refs) and refs == [r["ref"] for split in plan_splits([str(root), str(manifest)], options) for r in split_rows(split, options)]
    found = discover_sources([str(root), str(manifest)], options)  # the same splits, collected in this process
    assert sorted(r["source_id"] for r in rows if not r.get("reject_reason")) == sorted(r["source_id"] for r in found.sources)
    assert sorted(r["source"].removeprefix(f"{root}/") for r in found.sources if r.get("manifest") is None) == ["en/deeper/talk.mp3", "top.mp3"]
    assert sorted(r["source"].removeprefix(f"{root}/") for r in found.rejects) == ["de/rede.opus", "en/talk.mp3"]  # no transcript beside them


def test_only_regular_files_are_paired_and_a_named_pipe_is_refused_unopened(tmp_path):
    root = tmp_path / "d"
    touch(root / "x.wav")
    os.mkfifo(root / "x.srt")  # opening it would block for ever
    touch(root / "sub" / "y.wav")
    os.mkfifo(root / "sub" / "y.en.vtt")
    found = discover_sources([str(root)])
    assert found.sources == []
    assert sorted((r["reason"], r["detail"]) for r in found.rejects) == [
        ("unsafe_path", "sub/y.en.vtt is a named pipe, not a regular file"), ("unsafe_path", "x.srt is a named pipe, not a regular file")]


def test_a_source_key_follows_what_the_file_is_not_where_it_is_listed(tmp_path):
    root = tmp_path / "d"
    touch(root / "b.wav")
    touch(root / "b.txt", "first words")
    def keys():
        return {os.path.basename(r["audio_path"]): r["key"] for r in discover_sources([str(root)]).sources}

    key = keys()["b.wav"]
    touch(root / "a.wav")  # sorts before: positions shift, the key does not
    touch(root / "a.txt")
    assert keys()["b.wav"] == key
    touch(root / "b.txt", "other words, longer")  # the file changed: a new source
    assert keys()["b.wav"] != key


def test_manifest_lines_out_of_any_range_are_their_own_rejects(tmp_path):
    touch(tmp_path / "a.wav")
    lines = [
        json.dumps({"audio": "a.wav", "text": "Fine."}),
        '{"audio": "a.wav", "text": "x", "meta": ' + "[" * 10_000 + "]" * 10_000 + "}",
        '{"audio": "a.wav", "text": "x", "n": ' + "9" * 5_000 + "}",
        '{"audio": "a.wav", "text": "x", "n": 1e400, "id": "big"}',
        '{"audio": "a.wav", "text": "x", "language": ' + "[" * 31 + "]" * 31 + "}",
        "\xff\xfe not utf-8",
    ]
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes("\n".join(lines).encode("utf-8", "surrogateescape").replace("\xff\xfe".encode(), b"\xff\xfe"))
    found = discover_sources([str(manifest)])
    assert len(found.sources) == 2  # the first line, and the line with 1e400 (an infinite float is a value like another)
    reasons = sorted((r["reason"], r["detail"].split(":")[0]) for r in found.rejects)
    assert reasons == [("bad_manifest_line", "line 2"), ("bad_manifest_line", "line 3"), ("bad_manifest_line", "line 5"),
                       ("bad_manifest_line", "line 6")]
    assert "nested deeper than 32" in next(r["detail"] for r in found.rejects if r["detail"].startswith("line 2"))
