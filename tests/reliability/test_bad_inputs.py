"""Every broken or hostile input file through the real jobs: each ends as a reject row with the right reason (or
is kept when it is merely unusual), the run completes, and the accounting invariant holds."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import soundfile

from support.output import assert_accounted, committed_rows
from support.data import JFK, JFK_TEXT, ffmpeg, srt, write_wav

pytestmark = pytest.mark.slow
NO_FILTERS = ["--set", "machine_generated.enabled=false", "--set", "dedup.enabled=false", "--set", "audio_dedup.enabled=false",
              "--set", "language.enabled=false"]
CUE = srt([(0.2, 10.7, JFK_TEXT)])


def _media_cases(root):
    """(file name -> expected reject reason, or None for kept); each audio file gets a good transcript."""
    root.mkdir(parents=True)
    real = JFK.read_bytes()
    cases = {}

    def add(name, data, expected):
        (root / name).write_bytes(data)
        cases[name] = expected

    add("zero-byte.wav", b"", "bad_audio")
    header = bytearray(open(write_wav(root / "h.tmp", 0.0), "rb").read())
    (root / "h.tmp").unlink()
    add("header-only.wav", bytes(header), "bad_audio")
    add("random-bytes.mp3", np.random.default_rng(0).bytes(40_000), "bad_audio")
    add("truncated.flac", real[: len(real) // 20], "no_usable_cues")  # decodes up to the cut (0.4 s): the cue lies beyond
    add("html-error-page.mp3", b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "bad_audio")
    # a WAV header claiming hours of audio over 1 s of samples: the decoded length is what counts
    wav = bytearray(open(write_wav(root / "liar.tmp", 1.0), "rb").read())
    (root / "liar.tmp").unlink()
    wav[40:44] = (16000 * 2 * 3600 * 5).to_bytes(4, "little")
    wav[4:8] = (16000 * 2 * 3600 * 5 + 36).to_bytes(4, "little")
    add("header-claims-hours.wav", bytes(wav), None)
    # a header saying 1 Hz over 1 MB of samples (142 hours by its word), rejected before decoding (empty transcript)
    one_hertz = bytearray(open(write_wav(root / "one-hertz.tmp", 32.0), "rb").read())
    (root / "one-hertz.tmp").unlink()
    one_hertz[24:28], one_hertz[28:32] = (1).to_bytes(4, "little"), (2).to_bytes(4, "little")
    add("one-hertz-header.wav", bytes(one_hertz), "empty_transcript")
    # rates, channels, sample formats: resampled and down-mixed, kept
    audio, rate = soundfile.read(JFK, dtype="float32")
    audio = audio.mean(axis=1) if audio.ndim > 1 else audio
    for name, sr, channels, subtype in [("8k.wav", 8000, 1, "PCM_16"), ("44k1-stereo-24bit.flac", 44100, 2, "PCM_24"), ("48k-float.wav", 48000, 1, "FLOAT")]:
        resampled = np.interp(np.arange(0, len(audio), rate / sr), np.arange(len(audio)), audio).astype("float32")
        soundfile.write(root / name, np.repeat(resampled[:, None], channels, axis=1), sr, subtype=subtype)
        cases[name] = None
    ffmpeg("-i", str(JFK), "-f", "lavfi", "-i", "color=c=black:s=32x32:r=2", "-shortest", "-c:v", "libx264", "-c:a", "aac", str(root / "video.mp4"))
    cases["video.mp4"] = None
    ffmpeg("-f", "lavfi", "-i", "color=c=black:s=32x32:r=2:d=3", "-c:v", "libx264", str(root / "video-no-audio.mp4"))
    cases["video-no-audio.mp4"] = "no_audio_stream"
    write_wav(root / "too-long.wav", 70.0)
    cases["too-long.wav"] = "audio_too_long"  # decode.max_seconds=60 in this run
    # names that are only names: spaces, unicode, protocol-looking strings
    for name in ("with spaces ü 日本.flac", "concat:jfk.flac", "http:jfk.flac"):
        shutil.copy(JFK, root / name)
        cases[name] = None
    # a symlink leaving the input root
    outside = root.parent / "outside"
    outside.mkdir()
    shutil.copy(JFK, outside / "secret.flac")
    os.symlink(outside / "secret.flac", root / "escape.flac")
    cases["escape.flac"] = "unsafe_path"
    for name in cases:
        (root / (name.rsplit(".", 1)[0] + ".srt")).write_text(CUE)
    (root / "header-claims-hours.srt").write_text(srt([(0.0, 0.9, "A one second tone.")]))
    (root / "one-hertz-header.srt").write_text("")
    return cases


def _transcript_cases(root):
    """(transcript -> expected reject reason, or None for kept); each pairs with a copy of JFK."""
    root.mkdir(parents=True)
    cases = {}

    def add(stem, ext, data, expected):
        shutil.copy(JFK, root / f"{stem}.flac")
        (root / f"{stem}.{ext}").write_bytes(data)
        cases[f"{stem}.flac"] = expected

    text = CUE
    add("utf8-bom-crlf", "srt", b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode(), None)
    add("utf16-bom", "srt", text.encode("utf-16"), None)
    add("latin1", "txt", "Ça coûte très cher, dit-il à l'épicière.".encode("latin-1"), "bad_encoding")  # not certain: declare it
    add("invalid-utf8", "txt", b"caf\xc3\x28 na\xefve \xff\xfe\xfd broken", "bad_encoding")
    add("empty", "txt", b"", "empty_transcript")
    add("whitespace", "srt", b"  \n\n \t\n", "empty_transcript")
    add("vtt-variants", "vtt", b"WEBVTT\n\nSTYLE\n::cue { color: red }\n\nNOTE a note\n\n00:00.200 --> 00:10.700 align:start\n<v Speaker>And so my fellow Americans,</v> ask not what your country can do for you, ask what you can do for your country.", None)
    add("bad-timings", "srt", srt([(5.0, 2.0, "End before start."), (0.2, 10.7, JFK_TEXT), (20.0, 25.0, "Beyond the audio.")]).encode(), None)
    write_wav(root / "one-cue-longer-than-30s.wav", 40.0)
    (root / "one-cue-longer-than-30s.srt").write_text(srt([(0.0, 35.0, "Far too long a cue."), (36.0, 39.0, "A short one.")]))
    cases["one-cue-longer-than-30s.wav"] = None  # kept: the long stretch is dropped and counted, the rest makes windows
    add("too-large", "txt", b"word " * 300_000, "transcript_too_large")  # transcript.max_mb=1 in this run
    add("newlines", "txt", b"And so my fellow Americans,\n\n\nask not\nwhat your country\ncan do for you.\n" * 3, None)
    return cases


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory, local_ray):
    from jobs.corpus import run

    base = tmp_path_factory.mktemp("hostile")
    media = _media_cases(base / "media")
    transcripts = _transcript_cases(base / "transcripts")
    manifest = base / "manifest.jsonl"
    shutil.copy(JFK, base / "m.flac")
    shutil.copy(JFK, base / "l.flac")
    (base / "l.txt").write_bytes("Ça coûte très cher, dit-il à l'épicière.".encode("latin-1"))
    manifest.write_text("\n".join([
        json.dumps({"id": "ok", "audio": "m.flac", "text": JFK_TEXT, "language": "en"}),
        "{not json",
        json.dumps({"id": "url", "audio": "https://example.com/a.mp3", "text": "x"}),
        json.dumps({"id": "dotdot", "audio": "../../../../etc/passwd", "text": "x"}),
        json.dumps({"id": "no-audio-field", "text": "x"}),
        json.dumps({"id": "ok", "audio": "m.flac", "text": "the same id again"}),
        json.dumps({"id": "latin1-declared", "audio": "l.flac", "transcript": "l.txt", "encoding": "latin-1", "language": "fr"}),
    ]) + "\n")
    out = base / "out"
    run(["--sources", str(base / "media"), str(base / "transcripts"), str(manifest), "--out", str(out), "--quiet",
         "--set", "decode.max_seconds=60", "--set", "transcript.max_mb=1", "--set", "sources.default_language=\"en\"", *NO_FILTERS])
    return out, media, transcripts


def _reason_of(out, name):
    for row in committed_rows(out, "rejects"):
        if row["scope"] == "source" and row["source"] and row["source"].replace("\\", "/").split("/")[-1] == name:
            return row
    return None


def test_the_run_accounts_for_every_source(hostile_run):
    out, media, transcripts = hostile_run
    summary = assert_accounted(out, "corpus")
    assert summary["inputs"]["in"] == len(media) + len(transcripts) + 7  # seven manifest lines


@pytest.mark.parametrize("case", ["media", "transcripts"])
def test_each_file_gets_its_expected_outcome(hostile_run, case):
    out, media, transcripts = hostile_run
    cases = media if case == "media" else transcripts
    kept_sources = {row["source"] for row in committed_rows(out, "corpus")}
    wrong = {}
    for name, expected in cases.items():
        row = _reason_of(out, name)
        got = row["reason"] if row else ("kept" if any(s.endswith(name) for s in kept_sources) else "missing")
        if got != (expected or "kept"):
            wrong[name] = (got, expected or "kept", row and row["detail"])
    assert not wrong, wrong


def test_bad_audio_rejects_carry_ffmpegs_error(hostile_run):
    out, _, _ = hostile_run
    for name in ("random-bytes.mp3", "html-error-page.mp3"):
        detail = _reason_of(out, name)["detail"]  # ffmpeg's first error line, not a traceback
        assert detail and "\n" not in detail and "Traceback" not in detail and len(detail) < 400


def test_a_cue_longer_than_a_window_is_dropped_and_counted(hostile_run):
    out, _, _ = hostile_run
    stretches = [r for r in committed_rows(out, "rejects") if r["scope"] == "stretch" and r["source"].endswith("one-cue-longer-than-30s.wav")]
    assert [(r["reason"], r["start_ms"], r["end_ms"]) for r in stretches] == [("cue_too_long", 0, 35000)]
    kept = [r["text"] for r in committed_rows(out, "corpus") if r["source"].endswith("one-cue-longer-than-30s.wav") and r["has_speech"]]
    assert kept == ["A short one."]


def test_rejects_before_decoding_get_no_hours_from_a_lying_header_or_a_refused_path(hostile_run):
    """The header probe trusts a plausible header only, and never opens a path discovery refused (the symlink)."""
    out, _, _ = hostile_run
    assert _reason_of(out, "one-hertz-header.wav")["duration_ms"] is None
    assert _reason_of(out, "escape.flac")["duration_ms"] is None
    assert json.loads((out / "summary.json").read_text())["hours"]["in"] < 1


def test_decoded_length_is_trusted_over_the_header(hostile_run):
    out, _, _ = hostile_run
    rows = [r for r in committed_rows(out, "corpus") if r["source"].endswith("header-claims-hours.wav")]
    assert rows and all(r["end_ms"] <= 1000 for r in rows)  # 1 s of samples, not the 5 h the header claims


def test_manifest_lines(hostile_run):
    out, _, _ = hostile_run
    by_id = {}
    for row in committed_rows(out, "rejects"):
        if row["scope"] == "source":
            by_id.setdefault(row["reason"], []).append(row)
    assert any(r["detail"].startswith("line 2") for r in by_id["bad_manifest_line"])
    assert len(by_id["unsafe_path"]) >= 3  # the URL, the ../ path, the symlink escape
    assert "duplicate_source" in by_id
    kept = {row["source_id"] for row in committed_rows(out, "corpus")}
    assert {"ok", "latin1-declared"} <= kept


def test_decoder_hang_is_killed_at_the_timeout(tmp_path, local_ray):
    from jobs.corpus import run

    src = tmp_path / "src"
    src.mkdir()
    write_wav(src / "slow.wav", 600.0)
    (src / "slow.txt").write_text("A tone that takes too long to decode.")
    shutil.copy(JFK, src / "fine.flac")
    (src / "fine.srt").write_text(CUE)
    out = tmp_path / "out"
    run(["--sources", str(src), "--out", str(out), "--quiet", "--set", "decode.timeout_s=0.05", "--set", "sources.default_language=\"en\"", *NO_FILTERS])
    summary = assert_accounted(out, "corpus")
    assert _reason_of(out, "slow.wav")["reason"] == "decode_timeout"
    assert summary["inputs"]["in"] == 2


def test_transcribe_job_rejects_broken_files_and_writes_no_text_for_silence(tmp_path, local_ray):
    from jobs.transcribe import run

    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(JFK, src / "speech.flac")
    write_wav(src / "silence.wav", 20.0, freq=0)
    (src / "broken.mp3").write_bytes(b"<html>404</html>")
    (src / "empty.wav").write_bytes(b"")
    ffmpeg("-f", "lavfi", "-i", "color=c=black:s=32x32:r=2:d=3", "-c:v", "libx264", str(src / "no-audio.mp4"))
    out = tmp_path / "out"
    run(["--inputs", str(src), "--out", str(out), "--quiet", "--model", "tiny-random", "--engine", "openai-whisper",
         "--language", "en", "--set", "decoding.temperatures=[0.0]"])
    summary = assert_accounted(out, "transcripts")
    assert summary["inputs"] == {**summary["inputs"], "in": 5, "kept": 2, "rejected": 3}
    assert {r["reason"] for r in committed_rows(out, "rejects")} == {"bad_audio", "no_audio_stream"}
    texts = [r for r in committed_rows(out, "transcripts") if r["source"].endswith("silence.wav")]
    assert texts == []  # no speech found: no windows, never text
