"""Decode each source's audio to 16 kHz mono PCM through ffmpeg (``pipeline.io.media``), or reject it; ``find_audio``
checks the file cheaply first."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from pipeline.io import media
from pipeline.io.media import DecodeError, DecodeLimits
from pipeline.stage import Reject, map_rows

DecodeOptions = DecodeLimits


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


def decode_audio(batch: pa.Table, options: DecodeOptions) -> pa.Table:
    return map_rows(batch, lambda row: _decode(row, options))


def _decode(row: dict[str, Any], options: DecodeOptions) -> dict[str, Any] | Reject:
    try:
        pcm = media.decode_audio(row["audio_path"], options)
    except DecodeError as err:
        return Reject(err.reason, err.detail)
    return dict(row, pcm=pcm.tobytes(), duration_ms=media.duration_ms(pcm))
