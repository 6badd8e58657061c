"""Cut each decoded recording into windows of at most 30 s at silences, for mass transcription (``wspsr transcribe``).

Whisper reads 30 s at a time. Cutting blindly every 30 s splits words and hands it stretches of silence or noise,
where it is known to invent text; so voice activity detection finds the speech first and windows are cut between
utterances:

1. ``speech_regions``: every frame is judged speech or not, by Silero VAD (the ONNX model inside the faster-whisper
   wheel; 32 ms frames) or by frame energy against the recording's own noise floor (20 ms frames, no model). Both
   use hysteresis: speech starts at ``threshold`` and ends below a lower level (Silero's ``neg_threshold``, or
   6 dB under the energy threshold; the noise floor is the 5th percentile of the recording's frame levels).
   Silero's recurrent state is reset after ~5 s blocks without speech: left alone it drifts over long silence
   and under-scores the speech that follows (see ``silero_probabilities``). Pauses shorter than
   ``min_silence_ms`` do not end speech, runs shorter than ``min_speech_ms`` are ignored, and ``speech_pad_ms`` is
   kept around each region; when two regions are closer than two pads they meet in the middle of the pause
   (Silero's rule), so regions may touch but never overlap.
2. ``plan_windows``: consecutive regions are packed greedily into windows of at most ``max_window_ms``; a window
   spans its first region's start to its last region's end (pauses inside it are kept, up to
   ``max_pause_in_window_ms``: a longer one ends the window, so Whisper never reads long silence). A region
   longer than a window is cut at its quietest 30 ms (lowest energy) in the last third before the limit.
3. ``segment_at_silences`` (the stage) stores each window's exact PCM slice in ``speech_windows`` and drops the
   whole recording's ``pcm``. A recording without speech gets no windows; that is not a reject. A recording decoded
   with its channels apart (``channels`` > 1, interleaved) is cut channel by channel; its windows carry ``channel``.

Everything is vectorised over frames (numpy), so a recording costs one pass of the detector plus a few array
operations; the only Python loops are per region and per window.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.audio import MAX_WINDOW_MS, SAMPLE_RATE, SAMPLES_PER_MS, samples_to_ms
from pipeline.schema import SPEECH_WINDOW_TYPE

STAGE = "segment_at_silences"
METHODS = ("silero", "energy")

SILERO_FRAME = 512  # samples (32 ms): the frame the Silero model scores at 16 kHz
SILERO_CONTEXT = 64  # samples of the previous frame the model sees with each frame
SILERO_STATE = (1, 1, 128)  # the model's recurrent state (h, c)
SILERO_BLOCK_FRAMES = 156  # frames per ONNX call (~5 s): bounded memory, and where the state may be reset
SILERO_MODEL_FILE = "silero_vad_v6.onnx"  # in faster_whisper/assets

ENERGY_FRAME = 320  # samples (20 ms)
ENERGY_HYSTERESIS_DB = 6.0  # speech ends this much below the level where it starts (keeps fading word ends)
NOISE_FLOOR_PERCENTILE = 5.0  # the noise floor: this percentile of the frame levels (pauses exist even in busy speech)
SILENT_DBFS = -100.0  # the level of digital silence (avoids log(0))
CUT_FRAME_MS = 10  # resolution of the quietest-point search inside a too-long region
CHUNK_SAMPLES = SAMPLE_RATE * 600  # energy is computed 10 minutes at a time (bounded float copies)


@dataclass(frozen=True)
class VadOptions:
    method: str = "silero"  # "silero" (ONNX model in the faster-whisper wheel) or "energy" (frame energy, no model)
    max_window_ms: int = MAX_WINDOW_MS  # Whisper's input; shorter only for experiments
    min_speech_ms: int = 250  # shorter speech (after joining short pauses) is ignored
    min_silence_ms: int = 300  # pauses shorter than this do not split speech
    speech_pad_ms: int = 400  # audio kept before and after speech (faster-whisper's batched pipeline: 400; 200 cost ~0.8 WER points)
    threshold: float = 0.5  # silero: speech probability where speech starts
    neg_threshold: float | None = None  # silero: probability below which speech ends; None: threshold - 0.15
    energy_db_above_floor: float = 12.0  # energy: speech starts this many dB above the noise floor (ends 6 dB lower)
    energy_min_floor_dbfs: float = -70.0  # energy: the noise floor is never taken lower (digital silence, fades)
    max_pause_in_window_ms: int = 10_000  # a longer pause between regions ends the window (no long silence inside)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 1000 <= self.max_window_ms <= MAX_WINDOW_MS:
            raise ValueError(f"max_window_ms must be between 1000 and {MAX_WINDOW_MS}")
        for name in ("min_speech_ms", "min_silence_ms", "speech_pad_ms", "max_pause_in_window_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.speech_pad_ms * 3 > self.max_window_ms:
            raise ValueError("speech_pad_ms must be at most a third of max_window_ms")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("threshold must be between 0 and 1 (exclusive)")
        if self.neg_threshold is not None and not 0.0 < self.neg_threshold <= self.threshold:
            raise ValueError("neg_threshold must be above 0 and at most threshold")
        if self.energy_db_above_floor <= ENERGY_HYSTERESIS_DB:
            raise ValueError(f"energy_db_above_floor must be more than {ENERGY_HYSTERESIS_DB:g} dB")
        if not SILENT_DBFS < self.energy_min_floor_dbfs < 0.0:
            raise ValueError(f"energy_min_floor_dbfs must be between {SILENT_DBFS:g} and 0 dBFS")

    @property
    def silero_neg_threshold(self) -> float:
        """Silero's own default: 0.15 under the threshold (faster_whisper.vad.get_speech_timestamps)."""
        return self.neg_threshold if self.neg_threshold is not None else max(self.threshold - 0.15, 0.01)


# --- frame scores ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def silero_model():
    """The Silero VAD ONNX model of the faster-whisper wheel, loaded once per process (no network: it is a file
    inside the installed package). One intra-op thread, as faster-whisper configures it: a worker is one CPU."""
    from faster_whisper.utils import get_assets_path
    from faster_whisper.vad import SileroVADModel

    path = os.path.join(get_assets_path(), SILERO_MODEL_FILE)
    if not os.path.isfile(path):
        raise RuntimeError(f"the Silero VAD model is missing from the faster-whisper package: {path}")
    return SileroVADModel(path)


def silero_probabilities(
    pcm: np.ndarray, reset_below: float | None = None, block_frames: int = SILERO_BLOCK_FRAMES
) -> np.ndarray:
    """Speech probability of every 32 ms frame (the last one zero-padded), float32.

    The computation of ``faster_whisper.vad.SileroVADModel.__call__`` (each frame with the last 64 samples of the
    one before; the recurrent state carried from block to block), streamed ``block_frames`` at a time so a long
    recording never exists as one float copy, and without its in-place write into the caller's array.

    ``reset_below``: the model's recurrent state drifts over long non-speech, and speech after a minute of silence
    then scores far lower (JFK's first phrase after 45 s of quiet noise: 0.3-0.5 instead of 0.7-0.8; silero-vad
    issue #725). With a level given, the state is reset at the start of every block after a block in which no
    frame reached that level, so speech is always judged by a state at most two blocks (~10 s) into silence.
    ``None`` never resets (identical to faster-whisper's ``get_speech_timestamps``).
    """
    session = silero_model().session
    n_frames = -(-len(pcm) // SILERO_FRAME)
    probs = np.empty(n_frames, dtype=np.float32)
    zeros = np.zeros(SILERO_STATE, dtype=np.float32)
    h, c = zeros, zeros
    tail = np.zeros(SILERO_CONTEXT, dtype=np.float32)
    rows = np.empty((block_frames, SILERO_CONTEXT + SILERO_FRAME), dtype=np.float32)
    for first in range(0, n_frames, block_frames):
        last = min(n_frames, first + block_frames)
        if reset_below is not None and first and probs[first - block_frames : first].max() < reset_below:
            h, c = zeros, zeros
        piece = pcm[first * SILERO_FRAME : last * SILERO_FRAME]
        block = rows[: last - first]
        frames = block[:, SILERO_CONTEXT:]
        flat = np.zeros((last - first) * SILERO_FRAME, dtype=np.float32)
        np.multiply(piece, np.float32(1 / 32768), out=flat[: len(piece)], casting="unsafe")
        frames[:] = flat.reshape(-1, SILERO_FRAME)
        block[0, :SILERO_CONTEXT] = tail
        block[1:, :SILERO_CONTEXT] = frames[:-1, -SILERO_CONTEXT:]
        tail = frames[-1, -SILERO_CONTEXT:].copy()
        out, h, c = session.run(None, {"input": block, "h": h, "c": c})
        probs[first:last] = np.asarray(out, dtype=np.float32).reshape(-1)
    return probs


def frame_levels_db(pcm: np.ndarray, frame: int) -> np.ndarray:
    """Mean power of every whole ``frame``-sample frame in dB relative to full scale (digital silence: -100)."""
    n_frames = len(pcm) // frame
    levels = np.empty(n_frames, dtype=np.float64)
    step = max(1, CHUNK_SAMPLES // frame)
    for first in range(0, n_frames, step):
        last = min(n_frames, first + step)
        x = pcm[first * frame : last * frame].astype(np.float32).reshape(-1, frame)
        levels[first:last] = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    levels /= frame * 32768.0**2
    return 10.0 * np.log10(np.maximum(levels, 10.0 ** (SILENT_DBFS / 10.0)))


def hysteresis(values: np.ndarray, on: float, off: float) -> np.ndarray:
    """Speech from the first value >= ``on`` until the first value < ``off``; values between keep the state."""
    decided = np.full(len(values), -1, dtype=np.int8)
    decided[values >= on] = 1
    decided[values < off] = 0
    last = np.where(decided >= 0, np.arange(len(values)), -1)
    np.maximum.accumulate(last, out=last)
    return (last >= 0) & (decided[np.maximum(last, 0)] == 1)


def speech_frames(pcm: np.ndarray, options: VadOptions) -> tuple[np.ndarray, int]:
    """(speech flag of every frame, frame length in ms) by the chosen method."""
    if options.method == "silero":
        probs = silero_probabilities(pcm, reset_below=options.silero_neg_threshold)
        return hysteresis(probs, options.threshold, options.silero_neg_threshold), SILERO_FRAME // SAMPLES_PER_MS
    levels = frame_levels_db(pcm, ENERGY_FRAME)
    if not len(levels):
        return np.zeros(0, dtype=bool), ENERGY_FRAME // SAMPLES_PER_MS
    floor = max(float(np.percentile(levels, NOISE_FLOOR_PERCENTILE)), options.energy_min_floor_dbfs)
    on = floor + options.energy_db_above_floor
    return hysteresis(levels, on, on - ENERGY_HYSTERESIS_DB), ENERGY_FRAME // SAMPLES_PER_MS


# --- regions ----------------------------------------------------------------------------------------------------


def regions_from_frames(
    speech: np.ndarray, frame_ms: int, duration_ms: int, options: VadOptions
) -> list[tuple[int, int]]:
    """Runs of speech frames -> padded regions in ms: short pauses joined, short runs dropped, pads meeting halfway."""
    edges = np.diff(np.concatenate(([0], speech.astype(np.int8), [0])))
    starts = np.flatnonzero(edges == 1).astype(np.int64) * frame_ms
    ends = np.minimum(np.flatnonzero(edges == -1).astype(np.int64) * frame_ms, duration_ms)
    if not len(starts):
        return []
    breaks = np.flatnonzero(starts[1:] - ends[:-1] >= options.min_silence_ms)
    starts, ends = starts[np.concatenate(([0], breaks + 1))], ends[np.concatenate((breaks, [len(ends) - 1]))]
    keep = ends - starts >= max(options.min_speech_ms, 1)
    starts, ends = starts[keep], ends[keep]
    if not len(starts):
        return []
    pad = options.speech_pad_ms
    gaps = starts[1:] - ends[:-1]
    meet = gaps < 2 * pad
    middle = ends[:-1] + gaps // 2
    new_ends = ends.copy()
    new_starts = starts.copy()
    new_ends[:-1] = np.where(meet, middle, ends[:-1] + pad)
    new_starts[1:] = np.where(meet, middle, starts[1:] - pad)
    new_starts[0] = starts[0] - pad
    new_ends[-1] = ends[-1] + pad
    new_starts = np.clip(new_starts, 0, duration_ms)
    new_ends = np.clip(new_ends, 0, duration_ms)
    return [(int(a), int(b)) for a, b in zip(new_starts, new_ends) if b > a]


def speech_regions(pcm: np.ndarray, options: VadOptions) -> list[tuple[int, int]]:
    """Sorted, non-overlapping (start_ms, end_ms) speech regions of int16 16 kHz mono audio (they may touch)."""
    pcm = np.asarray(pcm)
    if pcm.dtype != np.int16:
        raise TypeError(f"expected int16 PCM, got {pcm.dtype}")
    duration_ms = samples_to_ms(len(pcm))
    if duration_ms == 0:
        return []
    speech, frame_ms = speech_frames(pcm, options)
    return regions_from_frames(speech, frame_ms, duration_ms, options)


# --- windows ----------------------------------------------------------------------------------------------------


def quietest_point_ms(pcm: np.ndarray, lo_ms: int, hi_ms: int) -> int:
    """The middle of the quietest 30 ms (three 10 ms frames) inside [lo_ms, hi_ms); the latest one on ties.
    Always strictly between ``lo_ms`` and ``hi_ms``; ``hi_ms`` itself when the range is too short to search."""
    step = CUT_FRAME_MS * SAMPLES_PER_MS
    piece = pcm[lo_ms * SAMPLES_PER_MS : hi_ms * SAMPLES_PER_MS]
    n = len(piece) // step
    if n < 3:
        return hi_ms
    x = piece[: n * step].astype(np.float32).reshape(n, step)
    energy = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    smooth = energy[:-2] + energy[1:-1] + energy[2:]  # centred on frames 1 .. n-2
    k = len(smooth) - 1 - int(np.argmin(smooth[::-1])) + 1
    return lo_ms + k * CUT_FRAME_MS + CUT_FRAME_MS // 2


def plan_windows(
    regions: list[tuple[int, int]], duration_ms: int, options: VadOptions, pcm: np.ndarray | None = None
) -> list[tuple[int, int]]:
    """Pack sorted, non-overlapping speech regions greedily into windows of at most ``max_window_ms``.

    A window spans its first region's start to its last region's end; the next region joins it while the window
    stays within the maximum and the pause before the region is at most ``max_pause_in_window_ms``. A region
    longer than the maximum is first cut into pieces: at the quietest point of ``pcm`` in the last third before
    each limit (exactly at the limit when no ``pcm`` is given). Windows never overlap (consecutive ones may touch).
    """
    longest = options.max_window_ms
    pieces: list[tuple[int, int]] = []
    previous_end = 0
    for start, end in regions:
        if start < previous_end or end < start:
            raise ValueError(f"regions must be sorted and non-overlapping: ({start}, {end}) after {previous_end}")
        previous_end = end
        start, end = max(start, 0), min(end, duration_ms)
        while end - start > longest:
            limit = start + longest
            cut = limit if pcm is None else quietest_point_ms(pcm, limit - longest // 3, limit)
            pieces.append((start, cut))
            start = cut
        if end > start:
            pieces.append((start, end))
    windows: list[tuple[int, int]] = []
    for start, end in pieces:
        if windows:
            first, last = windows[-1]
            if end - first <= longest and start - last <= options.max_pause_in_window_ms:
                windows[-1] = (first, end)
                continue
        windows.append((start, end))
    return windows


def recording_windows(pcm: np.ndarray, options: VadOptions) -> list[tuple[int, int]]:
    """The windows of one recording (``speech_regions`` then ``plan_windows``)."""
    return plan_windows(speech_regions(pcm, options), samples_to_ms(len(pcm)), options, pcm)


# --- the stage --------------------------------------------------------------------------------------------------


def _pcm_of(scalar: pa.Scalar, source_id: object) -> np.ndarray:
    if not scalar.is_valid:
        raise ValueError(f"{STAGE}: source {source_id} has no decoded audio (pcm is null)")
    buffer = scalar.as_buffer()  # no copy: the array reads Arrow's memory
    return np.frombuffer(buffer, dtype="<i2", count=buffer.size // 2)


def segment_at_silences(batch: pa.Table, options: VadOptions) -> pa.Table:
    """Stage: ``speech_windows`` (list of {window_index, start_ms, end_ms, pcm}) for every row; ``pcm`` dropped.

    Each window's ``pcm`` is the int16 little-endian samples ``[start_ms * 16, end_ms * 16)`` of the recording,
    byte for byte. A recording without speech gets an empty list.
    """
    scalars = (scalar for chunk in batch.column("pcm").chunks for scalar in chunk)  # no copy of the batch's audio
    ids = batch.column("source_id").to_pylist() if "source_id" in batch.column_names else [None] * batch.num_rows
    counts = batch.column("channels").to_pylist() if "channels" in batch.column_names else [None] * batch.num_rows
    list_offsets = [0]
    indices: list[int] = []
    channel_of: list[int | None] = []
    starts: list[int] = []
    ends: list[int] = []
    slices: list[np.ndarray] = []
    for source_id, scalar, channels in zip(ids, scalars, counts, strict=True):
        pcm = _pcm_of(scalar, source_id)
        # with decode.channels = "split": each channel is a track of its own, cut on its own speech
        tracks = [(None, pcm)] if not channels or channels < 2 else [
            (c, np.ascontiguousarray(pcm[: len(pcm) - len(pcm) % channels].reshape(-1, channels)[:, c])) for c in range(channels)]
        index = 0
        for channel, track in tracks:
            for start, end in recording_windows(track, options):
                indices.append(index)
                channel_of.append(channel)
                starts.append(start)
                ends.append(end)
                slices.append(track[start * SAMPLES_PER_MS : end * SAMPLES_PER_MS])
                index += 1
        list_offsets.append(len(indices))
    windows = _windows_array(list_offsets, indices, channel_of, starts, ends, slices)
    out = batch.drop_columns(["pcm"])
    if "speech_windows" in out.column_names:
        return out.set_column(out.column_names.index("speech_windows"), "speech_windows", windows)
    return out.append_column("speech_windows", windows)


def _windows_array(
    list_offsets: list[int], indices: list[int], channels: list[int | None], starts: list[int], ends: list[int], slices: list[np.ndarray]
) -> pa.Array:
    """The ``speech_windows`` column built from buffers: the PCM of all windows is copied once, into Arrow."""
    lengths = np.array([len(s) * 2 for s in slices], dtype=np.int64)
    byte_offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    data = np.concatenate(slices).astype("<i2", copy=False) if slices else np.zeros(0, dtype="<i2")
    pcm = pa.LargeBinaryArray.from_buffers(
        pa.large_binary(), len(slices), [None, pa.py_buffer(byte_offsets), pa.py_buffer(data)]
    )
    children = {
        "window_index": pa.array(indices, type=pa.int32()),
        "channel": pa.array(channels, type=pa.int32()),
        "start_ms": pa.array(starts, type=pa.int64()),
        "end_ms": pa.array(ends, type=pa.int64()),
        "pcm": pcm,
    }
    fields = list(SPEECH_WINDOW_TYPE)
    struct = pa.StructArray.from_arrays([children[f.name].cast(f.type) for f in fields], fields=fields)
    return pa.ListArray.from_arrays(pa.array(list_offsets, type=pa.int32()), struct, type=pa.list_(SPEECH_WINDOW_TYPE))
