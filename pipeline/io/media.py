"""The only place that runs ffmpeg: decoding anything ffmpeg reads to 16 kHz mono PCM, safely.

Safety (docs/reliability.md): an argument list, never a shell; ``-nostdin``; the input named as
``file:<absolute path>`` with ``-protocol_whitelist file`` so a path can never act as a URL or ``concat:``;
a demuxer whitelist without playlist formats (the HLS-in-AVI local-file disclosure); a duration cap applied
while decoding (we never decode more than the limit); a wall-clock timeout. The header probe of rejected rows runs
under the same rules.

Memory: ffmpeg's output is read as it comes into one buffer that becomes the PCM, and reading stops (ffmpeg is
killed) once it passes the duration cap, so a worker holds the PCM once plus a fixed overhead. Faults that say
nothing about the file (ffmpeg killed from outside, a timeout under load, an object-store read error) are retried
(``pipeline.retry``; the timeout applies to each attempt) and, if they persist, raised as transient.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import ffmpeg
import numpy as np
import pyarrow.fs as pafs
import soundfile

from pipeline.io import storage
from pipeline.audio import SAMPLE_RATE, samples_to_ms
from pipeline.retry import ATTEMPTS, BASE_DELAY_S, retry_transient
from pipeline.schema import RejectReason

T = TypeVar("T")
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
    """A reject reason for a file; ``transient`` when the fault says nothing about the file (a rerun may pass)."""

    def __init__(self, reason: RejectReason, detail: str, transient: bool = False):
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.transient = transient


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
        found = _retried(lambda: _object_store_call(path, lambda: storage.info(str(path))))
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
DECODE_ATTEMPTS = ATTEMPTS
RETRY_DELAY_S = BASE_DELAY_S
KEPT_ERROR_BYTES = 4096  # ffmpeg's first error lines are the reject's detail; the rest is drained and dropped
_READ_BYTES = 1 << 20
_WAV_HEADER_MAX = 64 * 1024  # ffmpeg's WAV header (RIFF, fmt, LIST) is under 200 bytes
# A signal from outside (the OOM killer, a shutdown) says nothing about the file; a crash on it does.
_CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGABRT, signal.SIGSYS}


@dataclass
class _Finished:
    output: bytearray
    returncode: int
    errors: str
    timed_out: bool
    cut_short: bool  # stopped by us: the output passed its cap


def _run_ffmpeg(command: list[str], timeout_s: float, output_cap: Callable[[bytearray], int] | None = None,
                kept_error_bytes: int = KEPT_ERROR_BYTES) -> _Finished:
    """Run ffmpeg reading its stdout as it comes into one growing buffer (never a second copy of it), stderr drained by
    a thread that keeps only its first ``kept_error_bytes``; ffmpeg is killed at the wall-clock timeout, or as soon as
    its output is longer than ``output_cap(output)`` bytes."""
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    errors = bytearray()
    timed_out = threading.Event()

    def drain_errors() -> None:
        while chunk := os.read(process.stderr.fileno(), 65536):
            errors.extend(chunk[: max(0, kept_error_bytes - len(errors))])

    def expire() -> None:
        if process.poll() is None:
            timed_out.set()
            process.kill()

    drainer = threading.Thread(target=drain_errors, name="ffmpeg-stderr", daemon=True)
    timer = threading.Timer(timeout_s, expire)
    timer.daemon = True
    drainer.start()
    timer.start()
    output, cut_short, read_to_the_end = bytearray(), False, False
    try:
        while chunk := os.read(process.stdout.fileno(), _READ_BYTES):
            output += chunk
            if output_cap is not None and len(output) > output_cap(output):
                cut_short = True
                break
        read_to_the_end = not cut_short
    finally:
        if not read_to_the_end:
            process.kill()
        returncode = process.wait()  # the timer stays armed: ffmpeg hanging after closing its stdout is killed too
        timer.cancel()
        drainer.join(timeout=5)
        process.stdout.close()
        process.stderr.close()
    # Drop ffmpeg's object addresses ("[mp3 @ 0x5623...]") so reject details are the same on every run.
    text = _ADDRESS.sub("", errors.decode("utf-8", "replace")).strip()
    return _Finished(output, returncode, text, timed_out.is_set() and returncode != 0, cut_short)


def _wav_layout(data: bytearray) -> tuple[int, int] | None:
    """Where the samples start in the WAV stream ffmpeg writes to a pipe, and how many channels it has; None while
    the header has not all arrived. A pipe cannot be rewound, so the header's sizes are placeholders: the data chunk
    is whatever follows its header."""
    if len(data) >= 12 and (data[:4] != b"RIFF" or data[8:12] != b"WAVE"):
        raise DecodeError(RejectReason.BAD_AUDIO, "ffmpeg wrote no WAV header")
    position, channels = 12, 0
    while position + 8 <= len(data):
        chunk, size = bytes(data[position : position + 4]), int.from_bytes(data[position + 4 : position + 8], "little")
        if chunk == b"data":
            if not 1 <= channels <= MAX_CHANNELS:
                raise DecodeError(RejectReason.BAD_AUDIO, f"{channels} channels (at most {MAX_CHANNELS} are read)")
            return position + 8, channels
        if position + 8 + size > len(data):
            return None
        if chunk == b"fmt ":
            channels = int.from_bytes(data[position + 10 : position + 12], "little")
        position += 8 + size + size % 2
    return None


def _wav_cap(max_frames: int) -> Callable[[bytearray], int]:
    """The most bytes a WAV stream of ``max_frames`` frames takes, once its header says how many channels."""
    layout: tuple[int, int] | None = None

    def cap(output: bytearray) -> int:
        nonlocal layout
        layout = layout or _wav_layout(output)
        return _WAV_HEADER_MAX if layout is None else layout[0] + max_frames * 2 * layout[1]

    return cap


def _pcm(output: bytearray, keep_channels: bool) -> np.ndarray:
    """The samples as a view of ffmpeg's output buffer (no copy): int16 mono, or (frames, channels) from WAV."""
    if not keep_channels:
        return np.frombuffer(output, dtype="<i2", count=len(output) // 2)
    if len(output) < 12:
        raise DecodeError(RejectReason.BAD_AUDIO, "ffmpeg wrote no WAV header")
    layout = _wav_layout(output)
    if layout is None:
        raise DecodeError(RejectReason.BAD_AUDIO, "ffmpeg wrote no audio data")
    offset, channels = layout
    frames = (len(output) - offset) // (2 * channels)
    if frames == 0:
        return np.zeros((0, channels), dtype="<i2")
    return np.frombuffer(output, dtype="<i2", count=frames * channels, offset=offset).reshape(frames, channels)


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
    """Each attempt has the whole ``limits.timeout_s``: a file takes at most ``DECODE_ATTEMPTS`` timeouts plus the
    retry delays before it is rejected."""
    check_audio_file(path, limits)
    return _retried(lambda: _decode_once(path, limits, keep_channels, fingerprint))


def _retried(call: Callable[[], T]) -> T:
    return retry_transient(call, _is_transient, attempts=DECODE_ATTEMPTS, base_delay_s=RETRY_DELAY_S)


def _is_transient(error: BaseException) -> bool:
    return isinstance(error, DecodeError) and error.transient


def _object_store_call(uri: str | Path, call: Callable[[], T]) -> T:
    """An object-store read error may pass (``DecodeError``, transient); a location pyarrow cannot open at all (no
    bucket, an unknown scheme, bad settings: ``StorageError``) will not."""
    try:
        return call()
    except storage.StorageError as exc:
        raise DecodeError(RejectReason.AUDIO_NOT_FOUND, str(exc)) from None
    except OSError as exc:
        raise DecodeError(RejectReason.AUDIO_NOT_FOUND, f"cannot read {uri}: {exc}", transient=True) from None


def _decode_once(path: str | Path, limits: DecodeLimits, keep_channels: bool,
                 fingerprint: bool) -> tuple[np.ndarray, np.ndarray | None]:
    if storage.is_uri(path):
        with contextlib.ExitStack() as stack:
            local = _object_store_call(path, lambda: stack.enter_context(storage.local_copy(str(path))))
            return _decode_once(local, limits, keep_channels, fingerprint)
    if not fingerprint:
        return _decode_local(Path(path), limits, keep_channels), None
    with tempfile.TemporaryDirectory(prefix="wspsr-fp-") as folder:
        target = Path(folder) / "fingerprint.raw"
        pcm = _decode_local(Path(path), limits, keep_channels, target)
        return pcm, np.fromfile(target, dtype="<u4") if target.exists() else np.zeros(0, "<u4")


def _decode_local(path: Path, limits: DecodeLimits, keep_channels: bool, fingerprint_to: Path | None = None) -> np.ndarray:
    command = decode_command(path.resolve(), limits, keep_channels, fingerprint_to)
    max_frames = int(limits.max_seconds * SAMPLE_RATE)
    cap = _wav_cap(max_frames) if keep_channels else lambda _: 2 * max_frames
    done = _run_ffmpeg(command, limits.timeout_s, cap)
    first_error = done.errors.splitlines()[0] if done.errors else ""
    if done.cut_short:
        raise DecodeError(RejectReason.AUDIO_TOO_LONG, f"longer than the limit of {limits.max_seconds:g} s")
    if done.timed_out:
        raise DecodeError(RejectReason.DECODE_TIMEOUT, f"ffmpeg did not finish within {limits.timeout_s:g} s",
                          transient=True)
    if done.returncode < 0:
        name = _signal_name(-done.returncode)
        if -done.returncode in _CRASH_SIGNALS:
            detail = f"ffmpeg crashed ({name})"
            raise DecodeError(RejectReason.BAD_AUDIO, f"{detail}: {first_error}" if first_error else detail)
        raise DecodeError(RejectReason.BAD_AUDIO, f"ffmpeg was killed by {name}", transient=True)
    if done.returncode != 0:
        if _NO_STREAM.search(done.errors):
            raise DecodeError(RejectReason.NO_AUDIO_STREAM, first_error or "no audio stream")
        raise DecodeError(RejectReason.BAD_AUDIO, first_error or f"ffmpeg exited with {done.returncode}")
    pcm = _pcm(done.output, keep_channels)
    if pcm.size == 0:
        raise DecodeError(RejectReason.BAD_AUDIO, first_error or "no audio decoded")
    return pcm


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")
_AUDIO_RATE = re.compile(r"Stream #[^\n]*?: Audio: [^\n]*?(\d+) Hz")
PLAUSIBLE_RATES_HZ = (1_000, 384_000)
PROBE_TIMEOUT_S = 10.0
PROBE_KEPT_BYTES = 64 * 1024  # the input's report; Duration follows the container's tags
# libsndfile's formats and the ffmpeg demuxer that reads each: its header is trusted only where the decoder would open
# the file (``DecodeLimits.formats``).
_DEMUXER_OF = {"WAV": "wav", "WAVEX": "wav", "RF64": "wav", "W64": "w64", "AIFF": "aiff", "AU": "au", "CAF": "caf",
               "FLAC": "flac", "OGG": "ogg", "MP3": "mp3"}
_UNCOMPRESSED_CONTAINERS = {"WAV", "WAVEX", "RF64", "W64", "AIFF", "AU", "CAF"}
_PCM_SAMPLE_BYTES = {"PCM_S8": 1, "PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8,
                     "ULAW": 1, "ALAW": 1}


def probe_duration_ms(path: str | Path, limits: DecodeLimits = DecodeLimits()) -> int | None:
    """How long a local audio file is, from its container's header, without decoding it. libsndfile's header read
    (WAV, FLAC, Ogg Opus/Vorbis, MP3: a few ms, no process) when it is plausible, else ffmpeg's report of the input
    under the decoder's rules (``-nostdin``, ``file:`` only, the demuxer whitelist, a timeout) when that is.
    Plausible: a sample rate real audio uses, for PCM no more samples than the file's bytes hold, and no longer than
    ``limits.max_seconds`` (the decoder refuses longer audio: a header must not count hours it never would). None
    when neither can tell (not a local regular file, no audio, a header that lies or has no duration)."""
    if storage.is_uri(path):
        return None
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        return None
    if not path.is_file():
        return None
    header = _header_ms(path, size, limits)
    return header if header is not None else _reported_ms(path, limits)


def _plausible_ms(seconds: float, rate_hz: float, limits: DecodeLimits) -> int | None:
    if not PLAUSIBLE_RATES_HZ[0] <= rate_hz <= PLAUSIBLE_RATES_HZ[1] or not 0 < seconds <= limits.max_seconds:
        return None
    return round(seconds * 1000)


def _header_ms(path: Path, size: int, limits: DecodeLimits) -> int | None:
    try:
        info = soundfile.info(str(path))
    except Exception:  # a format libsndfile does not read, or a broken file
        return None
    if _DEMUXER_OF.get(info.format) not in {name.strip() for name in limits.formats.split(",")}:
        return None
    sample_bytes = _PCM_SAMPLE_BYTES.get(info.subtype, 0) if info.format in _UNCOMPRESSED_CONTAINERS else 0
    if info.samplerate <= 0 or info.frames * info.channels * sample_bytes > size:
        return None
    return _plausible_ms(info.frames / info.samplerate, info.samplerate, limits)


def _reported_ms(path: Path, limits: DecodeLimits) -> int | None:
    command = [ffmpeg_binary(), "-nostdin", "-hide_banner", "-nostats", "-protocol_whitelist", "file",
               "-format_whitelist", limits.formats, "-i", f"file:{path.resolve()}"]
    try:
        done = _run_ffmpeg(command, min(PROBE_TIMEOUT_S, limits.timeout_s), kept_error_bytes=PROBE_KEPT_BYTES)
    except OSError:
        return None
    duration, rate = _DURATION.search(done.errors), _AUDIO_RATE.search(done.errors)
    if done.timed_out or not duration or not rate:
        return None
    hours, minutes, seconds = duration.groups()
    return _plausible_ms(int(hours) * 3600 + int(minutes) * 60 + float(seconds), int(rate.group(1)), limits)


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
