"""Decode each source's audio to 16 kHz mono PCM through ffmpeg (``pipeline.io.media``), or reject it; ``find_audio``
checks the file cheaply first."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.io import media
from pipeline.io.media import DecodeError, DecodeLimits
from pipeline.stage import Reject, map_rows

DecodeOptions = DecodeLimits
CHANNEL_MODES = ("mix", "split")


@dataclass(frozen=True)
class TrackDecodeOptions(DecodeLimits):
    """wspsr transcribe's [decode]: the limits, and what to do with a file's channels."""

    channels: str = "mix"  # "split": each channel of a multi-channel file is its own track (calls, interviews)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.channels not in CHANNEL_MODES:
            raise ValueError(f"channels must be one of {', '.join(CHANNEL_MODES)}, not {self.channels!r}")


def find_audio(batch: pa.Table, options: DecodeOptions) -> pa.Table:
    """Reject, before any audio work, sources whose audio is missing, empty, not a file or too large: a metadata call
    each, so such sources (common in crawled manifests) never wait in the small blocks that decoding runs in."""
    return map_rows(batch, lambda row: _find(row, options))


def _find(row: dict[str, Any], options: DecodeOptions) -> dict[str, Any] | Reject:
    try:
        media.check_audio_file(row["audio_path"], options)
    except DecodeError as err:
        return Reject(err.reason, err.detail)
    return row


def probe_rejected(batch: pa.Table) -> pa.Table:
    """Rows rejected before decoding (bad transcripts, duplicates, missing or too large files...) get ``duration_ms``
    from their audio container's header (``media.probe_duration_ms``: no decode), so the hours of every reject of a
    readable file are known. A plain function over rejected rows, not a stage (a stage sees only active rows)."""
    if batch.num_rows == 0:
        return batch
    # A discovery reject (no transcript beside the audio, a second source with the id) names its audio as `source`.
    paths = [path or source for path, source in zip(*(batch[c].to_pylist() if c in batch.column_names else [None] * batch.num_rows
                                                       for c in ("audio_path", "source")))]
    known = batch["duration_ms"].to_pylist() if "duration_ms" in batch.column_names else [None] * batch.num_rows
    durations = [ms if ms is not None or not path else media.probe_duration_ms(path) for ms, path in zip(known, paths)]
    column = pa.array(durations, pa.int64())
    if "duration_ms" in batch.column_names:
        return batch.set_column(batch.column_names.index("duration_ms"), "duration_ms", column)
    return batch.append_column("duration_ms", column)


def decode_audio(batch: pa.Table, options: DecodeOptions) -> pa.Table:
    return map_rows(batch, lambda row: _decode(row, options))


def decode_and_fingerprint(batch: pa.Table, options: DecodeOptions) -> pa.Table:
    """``decode_audio`` plus ``fingerprint``: the audio's Chromaprint fingerprint (raw little-endian uint32 items) from
    the same ffmpeg run, for the audio dedup step (``stages.audio_dedup``). Mono only (the corpus job's decode)."""
    return map_rows(batch, lambda row: _decode(row, options, fingerprint=True))


def _decode(row: dict[str, Any], options: DecodeOptions, fingerprint: bool = False) -> dict[str, Any] | Reject:
    """``pcm`` is 16 kHz mono; with ``channels = "split"`` a file of several channels keeps them interleaved in
    ``pcm``, and ``channels`` says how many (``segment_at_silences`` cuts each channel into its own windows)."""
    split = getattr(options, "channels", "mix") == "split"
    try:
        if fingerprint:
            pcm, items = media.decode_audio_and_fingerprint(row["audio_path"], options)
            return dict(row, pcm=pcm.tobytes(), duration_ms=media.duration_ms(pcm), fingerprint=items.tobytes())
        pcm = media.decode_audio(row["audio_path"], options, keep_channels=split)
    except DecodeError as err:
        return Reject(err.reason, err.detail)
    if not split:
        return dict(row, pcm=pcm.tobytes(), duration_ms=media.duration_ms(pcm))
    channels = pcm.shape[1]
    pcm = pcm[:, 0] if channels == 1 else pcm
    return dict(row, pcm=pcm.tobytes(), duration_ms=media.duration_ms(pcm[:, 0] if channels > 1 else pcm), channels=channels)
