"""Decode each source's audio to 16 kHz mono PCM through ffmpeg (``pipeline.io.media``), or reject it; ``find_audio``
checks the file cheaply first."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.io import media, storage
from pipeline.io.media import DecodeError, DecodeLimits
from pipeline.schema import RejectReason
from pipeline.stage import Reject, map_rows

DecodeOptions = DecodeLimits
CHANNEL_MODES = ("mix", "split")
DISCOVERY_STAGE = "discover_sources"


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
        return Reject(err.reason, err.detail, transient=err.transient)
    return row


def probe_rejected(batch: pa.Table, options: DecodeOptions = DecodeOptions()) -> pa.Table:
    """Rows rejected before decoding (bad transcripts, duplicates, missing or too large files...) get ``duration_ms``
    from their audio container's header (``media.probe_duration_ms`` under the decoder's limits: no decode), so the
    hours of every reject of a readable file are known. A plain function over rejected rows, not a stage (a stage
    sees only active rows). Only audio discovery accepted is probed (``_probed_audio``)."""
    if batch.num_rows == 0:
        return batch
    wanted = ("audio_path", "source", "reject_stage", "reject_reason", "duration_ms")
    columns = [name for name in wanted if name in batch.column_names]
    rows = batch.select(columns).to_pylist()
    durations = [row.get("duration_ms") if row.get("duration_ms") is not None else _probe(_probed_audio(row), options)
                 for row in rows]
    column = pa.array(durations, pa.int64())
    if "duration_ms" in batch.column_names:
        return batch.set_column(batch.column_names.index("duration_ms"), "duration_ms", column)
    return batch.append_column("duration_ms", column)


def _probe(path: str | None, options: DecodeOptions) -> int | None:
    return media.probe_duration_ms(path, options) if path else None


def _probed_audio(row: dict[str, Any]) -> str | None:
    """The audio a reject's hours are read from: the ``audio_path`` discovery accepted, never a path it refused.
    A discovery reject has none; of those only a folder's audio without a transcript (``missing_transcript``, which
    names the audio as ``source``) is probed, and only when no symlink is on its path, so it is the very file inside
    the folder. Its other rejects (unsafe paths, duplicate ids, manifest lines, transcripts without audio) get no
    hours."""
    if row.get("reject_reason") == RejectReason.UNSAFE_PATH.value:
        return None
    if row.get("reject_stage") != DISCOVERY_STAGE:
        return row.get("audio_path")
    source = row.get("source")
    if row.get("reject_reason") != RejectReason.MISSING_TRANSCRIPT.value or not source or storage.is_uri(source):
        return None
    return source if os.path.realpath(source) == os.path.abspath(source) else None


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
            return dict(row, pcm=_bytes_of(pcm), duration_ms=media.duration_ms(pcm), fingerprint=items.tobytes())
        pcm = media.decode_audio(row["audio_path"], options, keep_channels=split)
    except DecodeError as err:
        return Reject(err.reason, err.detail, transient=err.transient)
    if not split:
        return dict(row, pcm=_bytes_of(pcm), duration_ms=media.duration_ms(pcm))
    channels = pcm.shape[1]
    pcm = pcm[:, 0] if channels == 1 else pcm
    return dict(row, pcm=_bytes_of(pcm), duration_ms=media.duration_ms(pcm[:, 0] if channels > 1 else pcm),
                channels=channels)


def _bytes_of(pcm: np.ndarray) -> memoryview:
    """The samples' bytes without a copy: Arrow copies them once when the batch is built."""
    return memoryview(np.ascontiguousarray(pcm)).cast("B")
