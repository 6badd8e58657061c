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


def test_limits(tmp_path):
    with pytest.raises(DecodeError) as err:
        decode_audio(JFK, DecodeLimits(max_seconds=5))
    assert err.value.reason is RejectReason.AUDIO_TOO_LONG
    with pytest.raises(DecodeError) as err:
        decode_audio(JFK, DecodeLimits(max_file_mb=0.5))
    assert err.value.reason is RejectReason.FILE_TOO_LARGE
    with pytest.raises(DecodeError) as err:
        decode_audio(JFK, DecodeLimits(timeout_s=0.001))
    assert err.value.reason is RejectReason.DECODE_TIMEOUT
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


def test_the_header_probe_gives_the_length_without_decoding():
    """Rejects made before decoding get their hours from the container (issue 23): libsndfile's header for WAV, FLAC,
    Ogg Opus and MP3, ffmpeg's report of the input for WebM and M4A; within 10 ms of the decoded length."""
    from pipeline.io.media import decode_audio, duration_ms, probe_duration_ms
    from pipeline.schema import table_from_rows
    from stages.decode_audio import probe_rejected

    sample = Path(__file__).resolve().parent.parent / "sample"
    for name in ("sources/en/en_long.opus", "sources/en/en_mp3_vtt.mp3", "sources/es/es_webm_srt.webm", "sources/ru/ru_m4a_vtt.m4a",
                 "sources/it/it_wav8k_txt.wav", "sources/de/de_flac_txt.flac"):
        probed, decoded = probe_duration_ms(sample / name), duration_ms(decode_audio(sample / name))
        assert probed is not None and abs(probed - decoded) <= 10, (name, probed, decoded)
    for unreadable in ("media/ru-video-no-audio.mp4", "no/such/file.opus"):
        assert probe_duration_ms(sample / unreadable) is None
    assert probe_duration_ms("s3://bucket/a.opus") is None
    rows = table_from_rows([
        {"source_id": "a", "audio_path": str(sample / "sources/en/en_mp3_vtt.mp3"), "duration_ms": None, "reject_reason": "all_lowercase"},
        {"source_id": "b", "audio_path": None, "duration_ms": None, "reject_reason": "missing_audio"},
        {"source_id": "c", "audio_path": str(sample / "sources/en/en_mp3_vtt.mp3"), "duration_ms": 5, "reject_reason": "x"},
        {"source_id": "d", "source": str(sample / "sources/it/it_wav8k_txt.wav"), "reject_reason": "missing_transcript"},  # discovery's
        {"source_id": "e", "source": str(sample / "manifest.jsonl") + ":17", "reject_reason": "bad_manifest_line"},
    ])
    assert probe_rejected(rows)["duration_ms"].to_pylist() == [6123, None, 5, 7274, None]
