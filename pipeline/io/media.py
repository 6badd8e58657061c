"""The only place that runs ffmpeg: decoding anything ffmpeg reads to 16 kHz mono PCM, safely.

Safety (docs/reliability.md): an argument list, never a shell; ``-nostdin``; the input named as
``file:<absolute path>`` with ``-protocol_whitelist file`` so a path can never act as a URL or ``concat:``;
a demuxer whitelist without playlist formats (the HLS-in-AVI local-file disclosure); a duration cap applied
while decoding (we never decode more than the limit); a wall-clock timeout.
"""

from __future__ import annotations

import functools
import io
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import ffmpeg
import numpy as np
import pyarrow.fs as pafs
import soundfile

from pipeline.io import storage
from pipeline.audio import SAMPLE_RATE, samples_to_ms
from pipeline.schema import RejectReason

# Container demuxers we accept (ffmpeg names; "mov" covers mp4/m4a, "matroska" covers webm).
DEFAULT_FORMATS = (
    "wav,w64,flac,mp3,ogg,matroska,webm,mov,aac,aiff,caf,au,amr,asf,avi,mpegts,wv,ape,tta,loas,latm"
)


@functools.lru_cache(maxsize=1)
def ffmpeg_binary() -> str:
    """``$WSPSR_FFMPEG``, else the system ffmpeg, else the static one that the imageio-ffmpeg wheel ships."""
    explicit = os.environ.get("WSPSR_FFMPEG")
    if explicit:
        return explicit
    system = shutil.which("ffmpeg")
    if system:
        return system
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


class DecodeError(Exception):
    def __init__(self, reason: RejectReason, detail: str):
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodeLimits:
    max_seconds: float = 7200.0  # longer recordings are refused (decoding stops just past the limit)
    timeout_s: float = 600.0  # wall clock per file
    max_file_mb: float = 4096.0
    formats: str = DEFAULT_FORMATS  # ffmpeg demuxers allowed to open a file

    def __post_init__(self) -> None:
        if self.max_seconds <= 0 or self.timeout_s <= 0 or self.max_file_mb <= 0:
            raise ValueError("max_seconds, timeout_s and max_file_mb must be positive")


_ADDRESS = re.compile(r" @ 0x[0-9a-f]+")
# Four-second frames after resampling (the samples are the same): a codec's 20 ms frames each cross ffmpeg's thread
# queues, which cost more system time than the decoding itself (10.8-minute Opus: 1.66 s of CPU -> 1.25 s), and a
# second output (the fingerprint) multiplies those crossings (BENCHMARKS.md, "Audio duplicates").
_BIG_FRAMES = f"asetnsamples=n={4 * SAMPLE_RATE}:p=0"
_NO_STREAM = re.compile(r"does not contain any stream|matches no streams|no audio stream", re.I)


def decode_command(path: Path, limits: DecodeLimits, keep_channels: bool = False, fingerprint_to: Path | None = None) -> list[str]:
    """ffmpeg's arguments: raw 16 kHz mono samples, or with ``keep_channels`` a WAV stream of every channel (its
    header says how many). With ``fingerprint_to``, the same run also writes the audio's Chromaprint fingerprint
    there (ffmpeg's ``chromaprint`` muxer, raw uint32, over the same 16 kHz mono), so fingerprinting costs no
    second decode."""
    stream = ffmpeg.input(
        f"file:{path}",
        protocol_whitelist="file",
        format_whitelist=limits.formats,
        t=f"{limits.max_seconds + 1:.3f}",
    )
    layout = {"format": "wav"} if keep_channels else {"format": "s16le", "ac": 1}
    if fingerprint_to is None and keep_channels:
        stream = stream.output("pipe:1", acodec="pcm_s16le", ar=SAMPLE_RATE, vn=None, sn=None, dn=None, threads=1, **layout)
    elif fingerprint_to is None:
        stream = stream.output("pipe:1", acodec="pcm_s16le", af=f"aresample={SAMPLE_RATE},aformat=channel_layouts=mono,{_BIG_FRAMES}",
                               vn=None, sn=None, dn=None, threads=1, format="s16le")
    elif keep_channels:  # every channel to the pipe, a mono mix to the fingerprint: two chains (asplit shares formats)
        audio = stream["a:0"]
        stream = ffmpeg.merge_outputs(
            audio.output("pipe:1", acodec="pcm_s16le", ar=SAMPLE_RATE, threads=1, **layout),
            audio.output(f"file:{fingerprint_to}", format="chromaprint", fp_format="raw", ac=1, ar=SAMPLE_RATE),
        )
    else:
        # One resampling for both outputs (the PCM is byte for byte what the plain decode gives): a second
        # resampling chain cost about 20 points more CPU than this on Opus (BENCHMARKS.md, "Audio duplicates").
        split = (stream["a:0"].filter("aresample", SAMPLE_RATE).filter("aformat", channel_layouts="mono")
                 .filter("asetnsamples", n=4 * SAMPLE_RATE, p=0).filter_multi_output("asplit", 2))
        stream = ffmpeg.merge_outputs(
            split[0].output("pipe:1", acodec="pcm_s16le", format="s16le", threads=1),
            split[1].output(f"file:{fingerprint_to}", format="chromaprint", fp_format="raw"),
        )
    command = stream.compile(cmd=ffmpeg_binary())
    return [command[0], "-nostdin", "-hide_banner", "-nostats", "-loglevel", "error", *command[1:]]


def check_audio_file(path: str | Path, limits: DecodeLimits = DecodeLimits()) -> None:
    """What can be told of an audio file without decoding it (there, a regular file, not empty, within the size
    limit); ``DecodeError`` with the reject reason otherwise. Costs one metadata call."""
    if storage.is_uri(path):
        found = storage.info(str(path))
        if found.type != pafs.FileType.File:
            raise DecodeError(RejectReason.AUDIO_NOT_FOUND, "no such object" if found.type == pafs.FileType.NotFound else "not a file")
        if found.size > limits.max_file_mb * 1024 * 1024:  # refused before downloading it
            raise DecodeError(RejectReason.FILE_TOO_LARGE, f"{found.size} bytes > limit of {limits.max_file_mb:g} MB")
        return
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DecodeError(RejectReason.AUDIO_NOT_FOUND, f"{exc.strerror or exc}") from None
    if not path.is_file():
        raise DecodeError(RejectReason.BAD_AUDIO, "not a regular file")
    if size > limits.max_file_mb * 1024 * 1024:
        raise DecodeError(RejectReason.FILE_TOO_LARGE, f"{size} bytes > limit of {limits.max_file_mb:g} MB")
    if size == 0:
        raise DecodeError(RejectReason.BAD_AUDIO, "empty file (0 bytes)")


MAX_CHANNELS = 16


def _wav_samples(data: bytes) -> np.ndarray:
    """The samples of the WAV stream ffmpeg writes to a pipe, shaped (frames, channels). A pipe cannot be rewound, so
    the header's sizes are placeholders: the data chunk is whatever follows its header."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise DecodeError(RejectReason.BAD_AUDIO, "ffmpeg wrote no WAV header")
    position, channels = 12, 0
    while position + 8 <= len(data):
        chunk, size = data[position : position + 4], int.from_bytes(data[position + 4 : position + 8], "little")
        if chunk == b"fmt ":
            channels = int.from_bytes(data[position + 10 : position + 12], "little")
        elif chunk == b"data":
            if not 1 <= channels <= MAX_CHANNELS:
                raise DecodeError(RejectReason.BAD_AUDIO, f"{channels} channels (at most {MAX_CHANNELS} are read)")
            body = data[position + 8 :]
            body = body[: len(body) - len(body) % (2 * channels)]
            return np.frombuffer(body, dtype="<i2").reshape(-1, channels)
        position += 8 + size + size % 2
    raise DecodeError(RejectReason.BAD_AUDIO, "ffmpeg wrote no audio data")


def decode_audio(path: str | Path, limits: DecodeLimits = DecodeLimits(), keep_channels: bool = False) -> np.ndarray:
    """Decode to int16 16 kHz mono (with ``keep_channels``: shape (frames, channels), every channel of the file);
    raise ``DecodeError`` with a reject reason for anything unusable. A URI (``s3://...``) is copied to a local
    temporary file first: ffmpeg only ever reads local files."""
    return _decode(path, limits, keep_channels, fingerprint=False)[0]


def decode_audio_and_fingerprint(path: str | Path, limits: DecodeLimits = DecodeLimits(), keep_channels: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``decode_audio`` and, from the same ffmpeg run, the audio's Chromaprint fingerprint (uint32 items, about 8 per
    second of audio; empty for audio too short to fingerprint)."""
    pcm, fingerprint = _decode(path, limits, keep_channels, fingerprint=True)
    return pcm, fingerprint


def _decode(path: str | Path, limits: DecodeLimits, keep_channels: bool, fingerprint: bool) -> tuple[np.ndarray, np.ndarray | None]:
    check_audio_file(path, limits)
    if storage.is_uri(path):
        try:
            with storage.local_copy(str(path)) as local:
                return _decode(local, limits, keep_channels, fingerprint)
        except OSError as exc:
            raise DecodeError(RejectReason.AUDIO_NOT_FOUND, f"cannot read {path}: {exc}") from None
    if not fingerprint:
        return _decode_local(Path(path), limits, keep_channels), None
    import tempfile

    with tempfile.TemporaryDirectory(prefix="wspsr-fp-") as folder:
        target = Path(folder) / "fingerprint.raw"
        pcm = _decode_local(Path(path), limits, keep_channels, target)
        return pcm, np.fromfile(target, dtype="<u4") if target.exists() else np.zeros(0, "<u4")


def _decode_local(path: Path, limits: DecodeLimits, keep_channels: bool, fingerprint_to: Path | None = None) -> np.ndarray:
    command = decode_command(path.resolve(), limits, keep_channels, fingerprint_to)
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=limits.timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise DecodeError(RejectReason.DECODE_TIMEOUT, f"ffmpeg did not finish within {limits.timeout_s:g} s") from None
    # Drop ffmpeg's object addresses ("[mp3 @ 0x5623...]") so reject details are the same on every run.
    errors = _ADDRESS.sub("", done.stderr.decode("utf-8", "replace")).strip()
    first_error = errors.splitlines()[0] if errors else ""
    if done.returncode != 0:
        if _NO_STREAM.search(errors):
            raise DecodeError(RejectReason.NO_AUDIO_STREAM, first_error or "no audio stream")
        raise DecodeError(RejectReason.BAD_AUDIO, first_error or f"ffmpeg exited with {done.returncode}")
    pcm = _wav_samples(done.stdout) if keep_channels else np.frombuffer(done.stdout, dtype="<i2")
    if pcm.size == 0:
        raise DecodeError(RejectReason.BAD_AUDIO, first_error or "no audio decoded")
    if len(pcm) > limits.max_seconds * SAMPLE_RATE:
        raise DecodeError(RejectReason.AUDIO_TOO_LONG, f"longer than the limit of {limits.max_seconds:g} s")
    return pcm


_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")


def probe_duration_ms(path: str | Path, timeout_s: float = 10.0) -> int | None:
    """How long a local audio file is, from its container's header, without decoding it: libsndfile's header read
    (WAV, FLAC, Ogg/Opus/Vorbis, MP3: well under a millisecond to a few ms), else ffmpeg's report of the input
    (WebM, M4A, MP4...: one process start, about 50 ms). None when it cannot tell (not a file, an object-store URI,
    no audio, a header without a duration)."""
    if storage.is_uri(path):
        return None
    path = Path(path)
    if not path.is_file():
        return None
    try:
        info = soundfile.info(str(path))
        if info.frames > 0 and info.samplerate > 0:
            return round(info.frames * 1000 / info.samplerate)
    except Exception:  # a format libsndfile does not read (or a broken file): ask ffmpeg
        pass
    try:
        done = subprocess.run([ffmpeg_binary(), "-nostdin", "-hide_banner", "-i", f"file:{path.resolve()}"], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = _DURATION.search(done.stderr.decode("utf-8", "replace"))
    if not found or b"Audio:" not in done.stderr:
        return None
    hours, minutes, seconds = found.groups()
    return round((int(hours) * 3600 + int(minutes) * 60 + float(seconds)) * 1000)


def duration_ms(pcm: np.ndarray) -> int:
    return samples_to_ms(len(pcm))


def encode_flac(pcm: np.ndarray) -> bytes:
    """16-bit FLAC in memory (libsndfile in-process: no ffmpeg start per window)."""
    buffer = io.BytesIO()
    soundfile.write(buffer, pcm, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def decode_flac(data: bytes) -> np.ndarray:
    pcm, rate = soundfile.read(io.BytesIO(data), dtype="int16")
    if rate != SAMPLE_RATE:
        raise ValueError(f"expected {SAMPLE_RATE} Hz, got {rate}")
    return pcm


def decoded_ahead(chunks: list[list[bytes]]) -> Iterator[list[np.ndarray]]:
    """Each chunk of FLAC windows decoded, the next one in a background thread while the caller runs the model on
    this one (libsndfile releases the GIL): decoding stays off the model's critical path."""
    from concurrent.futures import ThreadPoolExecutor

    if not chunks:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="flac") as pool:
        pending = pool.submit(lambda c: [decode_flac(d) for d in c], chunks[0])
        for following in chunks[1:] + [None]:
            ready = pending.result()
            if following is not None:
                pending = pool.submit(lambda c: [decode_flac(d) for d in c], following)
            yield ready
