"""Held-out splits by source, never by window: windows of one recording share a speaker and a transcript style,
so a window-level split would leak them into the evaluation."""

from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CODE_SWITCHED = "code_switched"  # the group of every window of a source that switches language


def window_group(language: str | None, code_switched: bool | None) -> str:
    """The group a window is sampled and scored in: ``code_switched`` for a source that switches language, else
    its language (the Arrow form: ``group_of``)."""
    return CODE_SWITCHED if code_switched else (language or "?")


def group_of(language: pa.Array | pa.ChunkedArray, code_switched: pa.Array | pa.ChunkedArray) -> pa.Array:
    """``window_group`` over columns."""
    return pc.if_else(pc.fill_null(code_switched, False), pa.scalar(CODE_SWITCHED), pc.fill_null(language, "?"))


def source_position(source_id: str, seed: int = 0) -> float:
    """A source's place in [0, 1): the same on every machine and in every run."""
    digest = hashlib.sha256(f"{seed}:{source_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def held_out_threshold(source_ids: Iterable[str], fraction: float, seed: int = 0) -> float:
    """Sources whose position is below the threshold are held out: about ``fraction`` of them, at least one
    (when there are two or more) and never all."""
    return threshold_of_positions(np.array([source_position(s, seed) for s in set(source_ids)]), fraction)


def window_positions(source_ids: pa.ChunkedArray | pa.Array, seed: int = 0) -> np.ndarray:
    """Each window's source position (one hash per distinct source): 8 bytes a window, what a corpus of millions of
    windows is split by without a set of its ids."""
    encoded = pc.dictionary_encode(source_ids).combine_chunks() if isinstance(source_ids, pa.ChunkedArray) else pc.dictionary_encode(source_ids)
    positions = np.array([source_position(s, seed) for s in encoded.dictionary.to_pylist()], dtype=np.float64)
    return positions[encoded.indices.to_numpy(zero_copy_only=False)] if len(positions) else np.zeros(0)


def threshold_of_positions(positions: np.ndarray, fraction: float) -> float:
    """``held_out_threshold`` from the sources' positions (duplicates, one per window, allowed)."""
    positions = np.unique(positions)
    if fraction <= 0 or len(positions) < 2:
        return 0.0
    count = min(max(1, round(fraction * len(positions))), len(positions) - 1)
    return (positions[count - 1] + positions[count]) / 2


def select_split(batch: pa.Table, threshold: float, seed: int, held_out: bool) -> pa.Table:
    positions = pa.array([source_position(s, seed) for s in batch["source_id"].to_pylist()], pa.float64())
    mask = pc.less(positions, threshold)
    return batch.filter(mask if held_out else pc.invert(mask))
