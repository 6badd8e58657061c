import os
from pathlib import Path

import numpy as np
import pytest

from support.data import JFK, ffmpeg, write_wav
from pipeline.io.media import DecodeError, DecodeLimits, decode_audio, decode_flac, encode_flac
from pipeline.schema import RejectReason


def test_jfk_decodes_to_16k_mono():
    pcm = decode_audio(JFK)
    assert pcm.dtype == np.int16 and len(pcm) == 176000
    assert np.abs(pcm).max() > 1000


@pytest.mark.parametrize(
    "name, args",
    [
        ("stereo44k24bit.wav", ["-ac", "2", "-ar", "44100", "-c:a", "pcm_s24le"]),
        ("float8k.wav", ["-ar", "8000", "-c:a", "pcm_f32le"]),
        ("tone.mp3", ["-c:a", "libmp3lame", "-b:a", "64k"]),
        ("tone.opus", ["-c:a", "libopus", "-b:a", "24k"]),
        ("tone.m4a", ["-c:a", "aac", "-b:a", "64k"]),
        ("tone.webm", ["-c:a", "libopus"]),
        ("tone.flac", ["-ar", "48000", "-c:a", "flac"]),
    ],
)
def test_formats_are_resampled_to_16k_mono(tmp_path, name, args):
    source = write_wav(tmp_path / "src.wav", 2.0, rate=48000)
    target = tmp_path / name
    ffmpeg("-i", str(source), *args, str(target))
    pcm = decode_audio(target)
    assert abs(len(pcm) - 32000) < 16000 * 0.1  # codec priming/padding is a few ms
    spectrum = np.abs(np.fft.rfft(pcm[4000:20000].astype(float)))
    assert abs(np.argmax(spectrum) * 16000 / 16000 - 440) < 5  # the tone survives resampling


def test_video_with_audio_keeps_audio_and_video_only_is_refused(tmp_path):
    video = tmp_path / "v.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=black:s=32x32:d=1", "-i", str(write_wav(tmp_path / "a.wav", 1.0)), "-shortest", str(video))
    assert abs(len(decode_audio(video)) - 16000) < 1600
    silent = tmp_path / "silent.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=black:s=32x32:d=1", str(silent))
    with pytest.raises(DecodeError) as err:
        decode_audio(silent)
    assert err.value.reason is RejectReason.NO_AUDIO_STREAM


@pytest.mark.parametrize(
    "content",
    [b"", os.urandom(4000), b"<html><body>404 Not Found</body></html>", JFK.read_bytes()[:300], b"RIFF\x24\x00\x00\x00WAVEfmt "],
)
def test_broken_files_are_bad_audio(tmp_path, content):
    path = tmp_path / "broken.mp3"
    path.write_bytes(content)
    with pytest.raises(DecodeError) as err:
        decode_audio(path)
    assert err.value.reason is RejectReason.BAD_AUDIO
    assert " @ 0x" not in err.value.detail  # details must not vary between runs


def test_limits(tmp_path, monkeypatch):
    from pipeline.io import media

    monkeypatch.setattr(media, "RETRY_DELAY_S", 0.01)
    with pytest.raises(DecodeError) as err:
        decode_audio(JFK, DecodeLimits(max_seconds=5))
    assert err.value.reason is RejectReason.AUDIO_TOO_LONG
    with pytest.raises(DecodeError) as err:
        decode_audio(JFK, DecodeLimits(max_file_mb=0.5))
    assert err.value.reason is RejectReason.FILE_TOO_LARGE
    with pytest.raises(DecodeError) as err:
        decode_audio(JFK, DecodeLimits(timeout_s=0.001))
    assert err.value.reason is RejectReason.DECODE_TIMEOUT and err.value.transient
    with pytest.raises(DecodeError) as err:
        decode_audio(tmp_path / "absent.wav")
    assert err.value.reason is RejectReason.AUDIO_NOT_FOUND


def test_protocol_strings_are_plain_file_names(tmp_path, monkeypatch):
    """A file literally named like a protocol is read as a file; nothing else is fetched."""
    monkeypatch.chdir(tmp_path)
    write_wav(tmp_path / "a.wav", 0.5)
    (tmp_path / "concat:a.wav|a.wav").write_bytes((tmp_path / "a.wav").read_bytes())
    assert len(decode_audio("concat:a.wav|a.wav")) == 8000
    with pytest.raises(DecodeError) as err:
        decode_audio("http://127.0.0.1:9/a.wav")
    assert err.value.reason is RejectReason.AUDIO_NOT_FOUND


def test_playlists_are_not_followed(tmp_path):
    """An HLS playlist pointing at a local file (the 2017 ffmpeg disclosure) is not a format we open."""
    write_wav(tmp_path / "secret.wav", 0.5)
    playlist = tmp_path / "evil.mp3"
    playlist.write_text(f"#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:1.0,\nfile://{tmp_path}/secret.wav\n#EXT-X-ENDLIST\n")
    with pytest.raises(DecodeError) as err:
        decode_audio(playlist)
    assert err.value.reason is RejectReason.BAD_AUDIO


def test_flac_round_trip_is_exact():
    pcm = (np.sin(np.arange(16000) / 10) * 10000).astype(np.int16)
    assert np.array_equal(decode_flac(encode_flac(pcm)), pcm)


# How far a container's stated length may honestly be from the samples ffmpeg decodes, per format (ms):
EXACT_COUNT_MS = 1  # a sample count in the header (WAV data size, FLAC STREAMINFO, Ogg Opus granule less pre-skip)
REPORT_ROUNDING_MS = 5  # ffmpeg prints an input's Duration rounded to 10 ms
MP3_FRAME_MS = 1152 / 22.05  # the LAME tag's end padding, trimmed within the last 1152-sample frame (22.05 kHz here)
# Matroska's timestamps count Opus's pre-skip (312 samples at 48 kHz) that decoders drop, and whether the last 20 ms
# frame's padding (DiscardPadding) is trimmed differs between ffmpeg builds.
OPUS_IN_WEBM_MS = REPORT_ROUNDING_MS + 312 / 48 + 20
# MP4's edit list drops AAC's priming; whether the last 1024-sample frame's padding is trimmed differs between builds.
AAC_IN_M4A_MS = REPORT_ROUNDING_MS + 1024 / 22.05


def test_the_header_probe_gives_the_length_without_decoding():
    """Rejects made before decoding get their hours from the container (issue 23): libsndfile's header for WAV, FLAC,
    Ogg Opus and MP3, ffmpeg's report of the input for WebM and M4A; within what each format lets the two differ."""
    from pipeline.io.media import decode_audio, duration_ms, probe_duration_ms

    sample = Path(__file__).resolve().parent.parent / "sample"
    tolerances = {"en/en_long.opus": EXACT_COUNT_MS, "en/en_mp3_vtt.mp3": MP3_FRAME_MS,
                  "es/es_webm_srt.webm": OPUS_IN_WEBM_MS, "ru/ru_m4a_vtt.m4a": AAC_IN_M4A_MS,
                  "it/it_wav8k_txt.wav": EXACT_COUNT_MS, "de/de_flac_txt.flac": EXACT_COUNT_MS}
    for name, tolerance_ms in tolerances.items():
        probed, decoded = probe_duration_ms(sample / "sources" / name), duration_ms(decode_audio(sample / "sources" / name))
        assert probed is not None and abs(probed - decoded) <= tolerance_ms, (name, probed, decoded)
    for unreadable in ("media/ru-video-no-audio.mp4", "no/such/file.opus"):
        assert probe_duration_ms(sample / unreadable) is None
    assert probe_duration_ms("s3://bucket/a.opus") is None


def test_only_audio_discovery_accepted_is_probed(tmp_path):
    """A reject's hours come from its ``audio_path``; of discovery's rejects (no ``audio_path``) only a folder's
    audio without a transcript, reached without a symlink, is probed: never a path discovery refused."""
    from pipeline.schema import table_from_rows
    from stages.decode_audio import probe_rejected

    sample = Path(__file__).resolve().parent.parent / "sample"
    mp3, wav = str(sample / "sources/en/en_mp3_vtt.mp3"), str(sample / "sources/it/it_wav8k_txt.wav")
    (tmp_path / "folder").mkdir()
    os.symlink(wav, tmp_path / "folder" / "escape.wav")
    escape = str(tmp_path / "folder" / "escape.wav")
    discovery = "discover_sources"
    rows = table_from_rows([
        {"source_id": "a", "audio_path": mp3, "duration_ms": None, "reject_reason": "all_lowercase"},
        {"source_id": "b", "audio_path": None, "duration_ms": None, "reject_reason": "missing_audio"},
        {"source_id": "c", "audio_path": mp3, "duration_ms": 5, "reject_reason": "x"},
        {"source_id": "d", "source": wav, "reject_reason": "missing_transcript", "reject_stage": discovery},
        {"source_id": "e", "source": f"{sample}/manifest.jsonl:17", "reject_reason": "bad_manifest_line",
         "reject_stage": discovery},
        {"source_id": "f", "source": escape, "reject_reason": "unsafe_path", "reject_stage": discovery},
        {"source_id": "g", "source": escape, "reject_reason": "missing_transcript", "reject_stage": discovery},
        {"source_id": "h", "source": wav, "reject_reason": "duplicate_source", "reject_stage": discovery},
        {"source_id": "i", "source": wav, "reject_reason": "missing_transcript"},  # not discovery's, no audio_path
        {"source_id": "j", "audio_path": escape, "reject_reason": "unsafe_path", "reject_stage": "load_transcript"},
    ])
    assert probe_rejected(rows)["duration_ms"].to_pylist() == [6123, None, 5, 7274, None, None, None, None, None, None]
    assert probe_rejected(rows, DecodeLimits(max_seconds=7))["duration_ms"].to_pylist()[:4] == [6123, None, 5, None]


def test_a_header_that_lies_adds_no_hours(tmp_path):
    """A header is trusted only where it is plausible: a rate real audio uses, no more PCM samples than the file
    holds, no longer than the decoder would read; else ffmpeg's report under the same checks, else nothing."""
    from pipeline.io.media import probe_duration_ms

    one_hertz = bytearray(write_wav(tmp_path / "a.wav", 32.0).read_bytes())  # 1 MB of samples
    one_hertz[24:28], one_hertz[28:32] = (1).to_bytes(4, "little"), (2).to_bytes(4, "little")  # rate, byte rate
    (tmp_path / "one-hertz.wav").write_bytes(one_hertz)
    assert probe_duration_ms(tmp_path / "one-hertz.wav") is None  # both readers say 142 hours
    claims_hours = bytearray(write_wav(tmp_path / "b.wav", 1.0).read_bytes())
    claims_hours[40:44] = (16000 * 2 * 3600 * 5).to_bytes(4, "little")
    (tmp_path / "claims-hours.wav").write_bytes(claims_hours)
    assert probe_duration_ms(tmp_path / "claims-hours.wav") == 1000  # the samples the file holds
    write_wav(tmp_path / "ten.wav", 10.0)
    assert probe_duration_ms(tmp_path / "ten.wav") == 10000
    assert probe_duration_ms(tmp_path / "ten.wav", DecodeLimits(max_seconds=5)) is None  # the decoder refuses it
    assert probe_duration_ms(tmp_path / "ten.wav", DecodeLimits(formats="flac,mp3")) is None  # nor opens WAV at all


def test_the_probe_follows_no_playlist(tmp_path):
    """An HLS playlist named like audio: the probe's ffmpeg has the decoder's demuxer whitelist, so the file the
    playlist names is never opened (older ffmpeg builds open it before any other check)."""
    import threading

    from pipeline.io.media import probe_duration_ms

    secret = tmp_path / "secret.wav"
    os.mkfifo(secret)  # opening it for reading is what the writer below waits for
    playlist = tmp_path / "folder" / "evil.wav"
    playlist.parent.mkdir()
    playlist.write_text(f"#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:0\n#EXTINF:1.0,\nfile://{secret}\n#EXT-X-ENDLIST\n")
    probed, opened_while_probing = threading.Event(), []

    def writer():
        with open(secret, "wb"):
            opened_while_probing.append(not probed.is_set())

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    assert probe_duration_ms(playlist, DecodeLimits(timeout_s=3)) is None
    probed.set()
    release = os.open(secret, os.O_RDONLY | os.O_NONBLOCK)
    thread.join(timeout=5)
    os.close(release)
    assert opened_while_probing == [False]


@pytest.fixture
def flaky_ffmpeg(tmp_path, monkeypatch):
    """``WSPSR_FFMPEG`` pointed at a script that runs ``fault`` (by default: it kills itself) its first ``times`` runs,
    then the real ffmpeg; returns how many runs there were."""
    from pipeline.io import media

    real, calls = media.ffmpeg_binary(), tmp_path / "calls"

    def install(times, fault="kill -KILL $$"):
        script = tmp_path / "ffmpeg"
        script.write_text(f"""#!/bin/sh
calls=$(cat '{calls}' 2>/dev/null || echo 0)
echo $((calls + 1)) > '{calls}'
if [ "$calls" -lt {times} ]; then {fault}; fi
exec '{real}' "$@"
""")
        script.chmod(0o755)
        calls.unlink(missing_ok=True)
        monkeypatch.setenv("WSPSR_FFMPEG", str(script))
        media.ffmpeg_binary.cache_clear()
        return lambda: int(calls.read_text()) if calls.exists() else 0

    monkeypatch.setattr(media, "RETRY_DELAY_S", 0.01)
    yield install
    media.ffmpeg_binary.cache_clear()


def test_a_killed_decoder_is_tried_again(flaky_ffmpeg):
    from pipeline.io.media import DECODE_ATTEMPTS

    runs = flaky_ffmpeg(times=DECODE_ATTEMPTS - 1)
    assert len(decode_audio(JFK)) == 176000 and runs() == DECODE_ATTEMPTS


def test_a_decoder_killed_every_time_is_a_transient_reject(flaky_ffmpeg):
    from pipeline.io.media import DECODE_ATTEMPTS
    from pipeline.schema import table_from_rows
    from stages.decode_audio import decode_audio as decode_stage

    runs = flaky_ffmpeg(times=DECODE_ATTEMPTS + 5)
    with pytest.raises(DecodeError) as err:
        decode_audio(JFK)
    assert (err.value.reason, err.value.transient) == (RejectReason.BAD_AUDIO, True)
    assert err.value.detail == "ffmpeg was killed by SIGKILL"
    assert runs() == DECODE_ATTEMPTS
    row = decode_stage(table_from_rows([{"source_id": "a", "audio_path": str(JFK)}]), DecodeLimits()).to_pylist()[0]
    assert (row["reject_reason"], row["reject_transient"]) == ("bad_audio", True) and runs() == 2 * DECODE_ATTEMPTS


def test_a_crashing_decoder_is_a_permanent_reject(flaky_ffmpeg):
    """A crash (SIGSEGV, SIGABRT...) is what the file does to ffmpeg: not retried."""
    runs = flaky_ffmpeg(times=1, fault="kill -SEGV $$")
    with pytest.raises(DecodeError) as err:
        decode_audio(JFK)
    assert (err.value.reason, err.value.transient, runs()) == (RejectReason.BAD_AUDIO, False, 1)


def test_a_timeout_is_tried_again_then_transient(flaky_ffmpeg):
    """Each attempt has the whole timeout (a decoder hanging under load may finish the next time)."""
    from pipeline.io.media import DECODE_ATTEMPTS

    runs = flaky_ffmpeg(times=1, fault="exec sleep 30")
    assert len(decode_audio(JFK, DecodeLimits(timeout_s=2))) == 176000 and runs() == 2
    runs = flaky_ffmpeg(times=DECODE_ATTEMPTS + 1, fault="exec sleep 30")
    with pytest.raises(DecodeError) as err:
        decode_audio(JFK, DecodeLimits(timeout_s=0.5))
    assert (err.value.reason, err.value.transient) == (RejectReason.DECODE_TIMEOUT, True)
    assert runs() == DECODE_ATTEMPTS


def test_object_store_read_errors_are_tried_again(monkeypatch):
    """Read errors while looking the object up or copying it may pass; a location that cannot be opened will not."""
    import contextlib

    import pyarrow.fs as pafs

    from pipeline.io import media, storage

    failures = {"info": 0, "copy": 0}
    failing = {"info": 0, "copy": 0}

    def flaky(step):
        if failures[step] < failing[step]:
            failures[step] += 1
            raise OSError("connection reset by peer")

    def flaky_info(location):
        flaky("info")
        return pafs.FileInfo(location, type=pafs.FileType.File, size=1000)

    @contextlib.contextmanager
    def flaky_copy(location):
        flaky("copy")
        yield JFK

    monkeypatch.setattr(storage, "info", flaky_info)
    monkeypatch.setattr(storage, "local_copy", flaky_copy)
    monkeypatch.setattr(media, "RETRY_DELAY_S", 0.01)
    failing.update(info=1, copy=media.DECODE_ATTEMPTS - 1)
    assert len(decode_audio("s3://bucket/jfk.flac")) == 176000
    assert failures == {"info": 1, "copy": media.DECODE_ATTEMPTS - 1}
    for step in ("info", "copy"):
        failures.update(info=0, copy=0)
        failing.update(info=0, copy=0)
        failing[step] = 10
        with pytest.raises(DecodeError) as err:
            decode_audio("s3://bucket/jfk.flac")
        assert (err.value.reason, err.value.transient) == (RejectReason.AUDIO_NOT_FOUND, True)
        assert failures[step] == media.DECODE_ATTEMPTS

    def unopenable(location):
        failures["copy"] += 1
        raise storage.StorageError(f"cannot open {location!r}: unknown scheme")

    failures.update(info=0, copy=0)
    monkeypatch.setattr(storage, "local_copy", unopenable)
    with pytest.raises(DecodeError) as err:
        decode_audio("s3://bucket/jfk.flac")
    assert (err.value.reason, err.value.transient, failures["copy"]) == (RejectReason.AUDIO_NOT_FOUND, False, 1)


def test_decoding_stops_at_the_duration_cap(tmp_path):
    """Reading stops once the output passes the cap, whatever the input's timestamps say (``-t`` trusts them)."""
    from pipeline.io import media

    write_wav(tmp_path / "stereo.wav", 3.0, channels=2)
    for keep_channels in (False, True):
        with pytest.raises(DecodeError) as err:
            decode_audio(tmp_path / "stereo.wav", DecodeLimits(max_seconds=1), keep_channels=keep_channels)
        assert err.value.reason is RejectReason.AUDIO_TOO_LONG and not err.value.transient
    command = media.decode_command(tmp_path / "stereo.wav", DecodeLimits())
    cap = 2 * 16000  # a second of mono s16le
    done = media._run_ffmpeg([c for c in command if c != "-t" and not c.startswith("7201")], 30, lambda _: cap)
    assert done.cut_short and len(done.output) <= cap + (1 << 20)
    both = decode_audio(tmp_path / "stereo.wav", DecodeLimits(max_seconds=3), keep_channels=True)
    assert both.shape == (48000, 2) and np.array_equal(both[:, 0], both[:, 1])
