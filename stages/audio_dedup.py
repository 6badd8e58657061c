"""Audio duplicates: the same recording under other captions (mirrors, re-encodes, clips of a longer talk), found by
acoustic fingerprint, whatever the transcripts say.

A source's fingerprint is Chromaprint's (ffmpeg's ``chromaprint`` muxer in the run that decodes it,
``pipeline.io.media.decode_audio_and_fingerprint``): a uint32 per 0.124 s, each bit a sign of a filtered chroma
feature, so a re-encode or a resample flips a few bits and a different recording about half.

- ``fingerprint_keys``: sub-hashes for finding candidates across a run without comparing every pair: the top
  ``key_bits`` bits of ``key_items`` consecutive items (robust bits of a short stretch), sampled by their own hash
  (one in ``key_sample``), so two copies of a stretch keep the same keys wherever it sits in each file.
- ``match``: verification of a candidate pair at any offset: offsets voted by equal top bits, then the bit error
  rate (the share of differing bits) over the overlap at the best of them. A pair is a duplicate when it is at most
  ``max_bit_error_rate`` over at least ``min_overlap_s`` of audio that is not a stationary sound (silence, a tone:
  identical items in a row carry no evidence) that covers most of the shorter (``min_overlap_share``: two
  recordings that only share a stretch, one ending as the other begins, each hold audio of their own); the shorter
  is ``contained`` in the longer when the overlap covers nearly all of it.

Calibrated on real speech (``tests/test_audio_dedup.py``: JFK's 11 s): re-encoded to MP3 32 kbit/s 0.014,
Opus 16 kbit/s 0.038, resampled to 8 kHz 0.000, telephone band + Opus 12 kbit/s 0.086, cut 2.3 s at the start
0.074, and inside a longer recording 0.027; different recordings 0.38-0.40 at their best offset (the same text
read by other voices included).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.stage import active_rows
from stages.dedup import KEYED_SCHEMA, GroupingPlan, dataset_columns, resolve_arrays

ITEMS_PER_SECOND = 11025 / 1365  # Chromaprint: 11,025 Hz, a frame every 1,365 samples (4096-sample frames, 2/3 overlap)


@dataclass(frozen=True)
class AudioDedupOptions:
    enabled: bool = True
    max_bit_error_rate: float = 0.2  # at or below: the same recording (re-encodes measured 0.00-0.09, others 0.38+)
    min_overlap_s: float = 5.0  # the shortest shared stretch judged (a 5 s jingle shared by two podcasts is not enough)
    contained_share: float = 0.9  # the overlap covers this much of the shorter: a clip contained in the longer
    # Less of the shorter than this shared: recordings that only share a stretch (one ends as the other begins, a
    # quoted clip), each with audio of its own; not duplicates (dropping either would lose what only it holds).
    min_overlap_share: float = 0.8
    max_stationary_share: float = 0.5  # more of the overlap than this in repeated items (silence, a tone): no evidence
    key_bits: int = 12  # top bits of an item that go into a key (the ones a re-encode flips least)
    key_items: int = 3  # consecutive items per key
    key_sample: int = 4  # one key in this many is kept (by its hash: the same ones in every copy)
    min_shared_keys: int = 2  # keys two sources share before they are compared (different speech shared 0-2 here)
    vote_bits: int = 16  # top bits compared when voting for an offset

    def __post_init__(self) -> None:
        if not 0.0 < self.max_bit_error_rate < 0.5:
            raise ValueError("max_bit_error_rate must be in (0, 0.5): unrelated audio sits near 0.5")
        if self.min_overlap_s <= 0 or not 0 < self.contained_share <= 1 or not 0 <= self.max_stationary_share <= 1 or not 0 < self.min_overlap_share <= 1:
            raise ValueError("min_overlap_s must be positive; contained_share, min_overlap_share and max_stationary_share in (0, 1]")
        if not 1 <= self.key_bits * self.key_items <= 60 or min(self.key_sample, self.min_shared_keys) < 1 or not 1 <= self.vote_bits <= 32:
            raise ValueError("key_bits x key_items must be 1-60 bits, key_sample at least 1, vote_bits 1-32")

    @property
    def min_overlap_items(self) -> int:
        return max(1, round(self.min_overlap_s * ITEMS_PER_SECOND))


@dataclass(frozen=True)
class AudioMatch:
    """How two fingerprints line up: ``b`` item ``i + offset`` is ``a`` item ``i``."""

    offset: int
    overlap: int  # items
    bit_error_rate: float
    stationary_share: float

    @property
    def offset_s(self) -> float:
        return self.offset / ITEMS_PER_SECOND

    @property
    def overlap_s(self) -> float:
        return self.overlap / ITEMS_PER_SECOND


def as_fingerprint(data: bytes | np.ndarray) -> np.ndarray:
    return np.frombuffer(data, dtype="<u4") if isinstance(data, (bytes, bytearray, memoryview)) else np.asarray(data, dtype="<u4")


_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9))


def _mix64(h: np.ndarray) -> np.ndarray:
    h = (h ^ (h >> np.uint64(31))) * _MIX[0]
    h = (h ^ (h >> np.uint64(29))) * _MIX[1]
    return h ^ (h >> np.uint64(32))


def fingerprint_keys(fingerprint: np.ndarray, options: AudioDedupOptions) -> np.ndarray:
    """The distinct sampled sub-hash keys of a fingerprint (uint64), for grouping candidates across a run."""
    fp = as_fingerprint(fingerprint)
    n = len(fp) - options.key_items + 1
    if n <= 0:
        return np.zeros(0, np.uint64)
    top = (fp >> np.uint32(32 - options.key_bits)).astype(np.uint64)
    key = np.zeros(n, np.uint64)
    moving = np.zeros(n, bool)  # a stretch whose items repeat (silence, a held tone) is no evidence of a recording
    for k in range(options.key_items):
        key = (key << np.uint64(options.key_bits)) | top[k : k + n]
        if k:
            moving |= fp[k : k + n] != fp[k - 1 : k - 1 + n]
    with np.errstate(over="ignore"):
        mixed = _mix64(key[moving])
    kept = mixed[mixed % np.uint64(options.key_sample) == 0]
    return np.unique(kept)


def _bit_error_rate(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.bitwise_count(a ^ b).sum()) / (32 * len(a))


def _overlap(a: np.ndarray, b: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray]:
    i0, j0 = max(0, -offset), max(0, offset)
    n = max(0, min(len(a) - i0, len(b) - j0))
    return a[i0 : i0 + n], b[j0 : j0 + n]


def candidate_offsets(a: np.ndarray, b: np.ndarray, options: AudioDedupOptions, top: int = 4) -> list[int]:
    """Offsets at which many items of ``a`` and ``b`` agree in their top ``vote_bits`` bits, best first (and their
    neighbours: a cut that is not on Chromaprint's frame grid lands between two offsets)."""
    shift = np.uint32(32 - options.vote_bits)
    ta, tb = a >> shift, b >> shift
    order = np.argsort(ta, kind="stable")
    sorted_a = ta[order]
    left, right = np.searchsorted(sorted_a, tb, "left"), np.searchsorted(sorted_a, tb, "right")
    counts = right - left
    if counts.sum() == 0:
        return []
    if counts.sum() > 4_000_000:  # a stationary sound matching everything: no useful vote
        return []
    j = np.repeat(np.arange(len(b)), counts)
    starts = np.repeat(left, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
    offsets = j - order[starts]
    values, votes = np.unique(offsets, return_counts=True)
    best = values[np.argsort(-votes, kind="stable")[:top]]
    found: list[int] = []
    for offset in best.tolist():
        for candidate in (offset, offset - 1, offset + 1):
            if candidate not in found:
                found.append(candidate)
    return found


def match(a: np.ndarray | bytes, b: np.ndarray | bytes, options: AudioDedupOptions = AudioDedupOptions()) -> AudioMatch | None:
    """The best alignment of two fingerprints over at least ``min_overlap_s``, or None when no offset gives one."""
    a, b = as_fingerprint(a), as_fingerprint(b)
    best: AudioMatch | None = None
    for offset in candidate_offsets(a, b, options):
        x, y = _overlap(a, b, offset)
        if len(x) < options.min_overlap_items:
            continue
        found = AudioMatch(offset, len(x), _bit_error_rate(x, y), float(np.mean(x[1:] == x[:-1])) if len(x) > 1 else 1.0)
        if best is None or found.bit_error_rate < best.bit_error_rate:
            best = found
    return best


def is_duplicate(found: AudioMatch | None, options: AudioDedupOptions, shorter_items: int | None = None) -> bool:
    """The same recording: few differing bits over an overlap that is no stationary sound and, given the shorter
    fingerprint's length, covers most of it (``min_overlap_share``)."""
    return (
        found is not None
        and found.bit_error_rate <= options.max_bit_error_rate
        and found.stationary_share <= options.max_stationary_share
        and (shorter_items is None or found.overlap >= options.min_overlap_share * shorter_items)
    )


def containment(found: AudioMatch, len_a: int, len_b: int, options: AudioDedupOptions) -> str | None:
    """``"a_in_b"`` / ``"b_in_a"`` when the overlap covers nearly all of the shorter and the longer is clearly
    longer; None for two copies of the same length."""
    shorter, longer = min(len_a, len_b), max(len_a, len_b)
    if found.overlap < options.contained_share * shorter or shorter >= options.contained_share * longer:
        return None
    return "a_in_b" if len_a < len_b else "b_in_a"


# --- the global step: candidates by shared keys across the run, verified in one worker ------------------------

SHARED_SCHEMA = pa.schema([("a", pa.int64()), ("b", pa.int64()), ("shared", pa.int64())])
EDGE_SCHEMA = pa.schema([
    ("a", pa.int64()), ("b", pa.int64()), ("a_id", pa.string()), ("b_id", pa.string()), ("bit_error_rate", pa.float64()),
    ("offset_s", pa.float64()), ("overlap_s", pa.float64()), ("contained", pa.string()),
    ("a_quality", pa.string()), ("b_quality", pa.string()),  # dedup_quality of each side (which copy to keep)
])
_MAX_GROUP = 64  # a key more than this many sources share is a common sound, not a recording: no pairs from it


def audio_key_rows(batch: pa.Table, options: AudioDedupOptions) -> pa.Table:
    """(key, ref) rows, one per sampled key of each row no stage rejected that has a fingerprint."""
    rows = active_rows(batch) if batch.num_rows else batch
    rows = rows.filter(pc.is_valid(rows["fingerprint"])) if rows.num_rows else rows
    if rows.num_rows == 0:
        return KEYED_SCHEMA.empty_table()
    keys, refs = [], []
    for ref, data in zip(rows["ref"].to_numpy(zero_copy_only=False).tolist(), rows["fingerprint"].to_pylist()):
        found = fingerprint_keys(as_fingerprint(data), options)
        keys.append(found)
        refs.append(np.full(len(found), ref, np.int64))
    return pa.table([pa.array(np.concatenate(keys).view(np.int64)), pa.array(np.concatenate(refs))], schema=KEYED_SCHEMA)


def shared_key_pairs(keyed: pa.Table) -> pa.Table:
    """Per partition of (key, ref) rows: each pair of refs that share keys here, with how many (groups larger than
    ``_MAX_GROUP`` are left out: a key that common names a sound, not a recording)."""
    if keyed.num_rows < 2:
        return SHARED_SCHEMA.empty_table()
    keys, refs = keyed["key"].to_numpy(zero_copy_only=False), keyed["ref"].to_numpy(zero_copy_only=False)
    order = np.lexsort((refs, keys))
    keys, refs = keys[order], refs[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    sizes = np.diff(np.r_[starts, len(keys)])
    pairs = []
    for start, size in zip(starts[(sizes > 1) & (sizes <= _MAX_GROUP)].tolist(), sizes[(sizes > 1) & (sizes <= _MAX_GROUP)].tolist()):
        members = np.unique(refs[start : start + size])
        if len(members) > 1:
            a, b = np.triu_indices(len(members), 1)
            pairs.append(np.stack([members[a], members[b]], axis=1))
    if not pairs:
        return SHARED_SCHEMA.empty_table()
    found, counts = np.unique(np.concatenate(pairs), axis=0, return_counts=True)
    return pa.table([pa.array(found[:, 0]), pa.array(found[:, 1]), pa.array(counts.astype(np.int64))], schema=SHARED_SCHEMA)


def judge_audio_pairs(rows: pa.Table, pairs: np.ndarray, options: AudioDedupOptions) -> pa.Table:
    """In one worker over the candidates' rows (ref, source_id, fingerprint): the pairs that are the same recording,
    with how they line up."""
    if rows.num_rows == 0 or len(pairs) == 0:
        return EDGE_SCHEMA.empty_table()
    rows = rows.sort_by("ref")
    refs = rows["ref"].to_numpy(zero_copy_only=False)
    ids, prints = rows["source_id"].to_pylist(), rows["fingerprint"].to_pylist()
    quality = rows["dedup_quality"].to_pylist() if "dedup_quality" in rows.column_names else [None] * rows.num_rows
    out: dict[str, list] = {name: [] for name in EDGE_SCHEMA.names}
    for a, b in pairs.tolist():
        i, j = np.searchsorted(refs, a), np.searchsorted(refs, b)
        if i >= len(refs) or j >= len(refs) or refs[i] != a or refs[j] != b:
            continue
        x, y = as_fingerprint(prints[i]), as_fingerprint(prints[j])
        found = match(x, y, options)
        if not is_duplicate(found, options, min(len(x), len(y))):
            continue
        for name, value in (("a", a), ("b", b), ("a_id", ids[i]), ("b_id", ids[j]), ("bit_error_rate", round(found.bit_error_rate, 4)),
                            ("offset_s", round(found.offset_s, 2)), ("overlap_s", round(found.overlap_s, 2)),
                            ("contained", containment(found, len(x), len(y), options)), ("a_quality", quality[i]), ("b_quality", quality[j])):
            out[name].append(value)
    return pa.table(out, schema=EDGE_SCHEMA)


def find_audio_duplicates(plan: GroupingPlan, dataset: Any, options: AudioDedupOptions, rows_hint: int = 0, keys_per_row: int = 64) -> pa.Table:
    """The audio step over a dataset of rows with ``ref``, ``source_id`` and ``fingerprint``: sampled keys
    partitioned by key across the cluster give pairs with their shared-key counts per partition; the driver sums them
    (arrays only, bounded by the candidates) and keeps pairs sharing ``min_shared_keys``; one worker reads those
    rows' fingerprints and verifies each pair at any offset. Returns the verified edges (``EDGE_SCHEMA``)."""
    explode = lambda batch: audio_key_rows(batch, options)  # noqa: E731
    found = plan.by_key(dataset, explode, shared_key_pairs, None, rows_hint * keys_per_row)
    if found.num_rows == 0:
        return EDGE_SCHEMA.empty_table()
    both = np.stack([found["a"].to_numpy(zero_copy_only=False), found["b"].to_numpy(zero_copy_only=False)], axis=1)
    pairs, where = np.unique(both, axis=0, return_inverse=True)
    shared = np.bincount(where.reshape(-1), weights=found["shared"].to_numpy(zero_copy_only=False), minlength=len(pairs))
    del found, both
    pairs = pairs[shared >= options.min_shared_keys]
    if len(pairs) == 0:
        return EDGE_SCHEMA.empty_table()
    columns = ["ref", "source_id", "fingerprint", *(["dedup_quality"] if "dedup_quality" in dataset_columns(plan, dataset) else [])]
    return plan.gather(dataset, "ref", np.unique(pairs), columns, judge_audio_pairs, pairs, options)


# --- one decision per cluster ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class AudioDuplicateDecisions:
    """What the audio step decided, as the corpus sink's publishing options, in Arrow arrays aligned with ``dropped``
    (the dropped source ids, sorted): ``keepers`` (the source each cluster kept: its ``cluster_id``) and ``matches``
    (the edge each dropped source is reported by: ``other``, ``bit_error_rate``, ``overlap_s``, ``at_s`` (where its
    start falls in the other's time), ``role``), so the driver holds numbers and ids, and each shard formats the
    details of its own rows (``detail``). ``version`` names this set of decisions (a published shard's marker
    records it)."""

    dropped: pa.Array
    keepers: pa.Array
    matches: pa.Table
    version: str
    clusters: int = 0  # clusters of two or more sources
    contained: int = 0  # dropped sources that are clips of a longer recording kept

    def __len__(self) -> int:
        return len(self.dropped)

    def detail(self, i: int) -> str:
        m = {name: self.matches[name][i].as_py() for name in self.matches.column_names}
        how = {"contained in": "a clip contained in it", "contains": "contains it"}.get(m["role"], "the same recording")
        text = (f"same audio as {m['other']} ({how}): bit error rate {m['bit_error_rate']:.3f} over {m['overlap_s']:.1f} s, "
                f"starting at {m['at_s'] + 0.0:+.2f} s of it")
        keeper = self.keepers[i].as_py()
        return text if m["other"] == keeper else f"{text}; its cluster keeps {keeper}"


MATCH_SCHEMA = pa.schema([("other", pa.string()), ("bit_error_rate", pa.float64()), ("overlap_s", pa.float64()), ("at_s", pa.float64()),
                          ("role", pa.string())])


def resolve_audio_duplicates(edges: pa.Table) -> AudioDuplicateDecisions:
    """Clusters of the verified edges (connected components, ``stages.dedup.resolve_arrays``: the same quality rule
    as text duplicates: punctuated, then cased captions, then the longer recording, then finer cue timing, lossless
    audio, bit rate, and the smallest id), so a clip contained in a longer recording is dropped for it unless its
    captions are better. Each dropped source is reported by its edge to its keeper (or else its closest match). In
    Arrow arrays over the edges: nothing per source in Python objects."""
    if edges.num_rows == 0:
        empty = pa.array([], pa.string())
        return AudioDuplicateDecisions(empty, empty, MATCH_SCHEMA.empty_table(), _version(empty, empty, MATCH_SCHEMA.empty_table()))
    dropped, keepers = resolve_arrays(edges["a_id"], edges["b_id"], edges["a_quality"], edges["b_quality"])
    order = pc.sort_indices(dropped)
    dropped, keepers = dropped.take(order), keepers.take(order)
    # Each edge seen from both ends; keep the dropped ends, then per dropped source its keeper's edge, else the closest.
    a_id, b_id = edges["a_id"].combine_chunks(), edges["b_id"].combine_chunks()
    offset, contained = edges["offset_s"].combine_chunks(), edges["contained"].combine_chunks()
    ber, overlap = edges["bit_error_rate"].combine_chunks(), edges["overlap_s"].combine_chunks()
    inside = pc.if_else(pc.equal(contained, "a_in_b"), a_id, pc.if_else(pc.equal(contained, "b_in_a"), b_id, pa.scalar(None, pa.string())))
    mine = pa.concat_arrays([a_id, b_id])
    half = pa.table({
        "mine": mine, "other": pa.concat_arrays([b_id, a_id]), "bit_error_rate": pa.concat_arrays([ber, ber]),
        "overlap_s": pa.concat_arrays([overlap, overlap]), "at_s": pa.concat_arrays([offset, pc.negate(offset)]),
        "role": pc.if_else(pc.is_null(pa.concat_arrays([inside, inside])), pa.scalar(None, pa.string()),
                           pc.if_else(pc.equal(pa.concat_arrays([inside, inside]), mine), "contained in", "contains")),
    })
    at = pc.index_in(half["mine"], value_set=dropped)
    half = half.filter(pc.is_valid(at)).append_column("at", at.filter(pc.is_valid(at)))
    half = half.append_column("not_keeper", pc.not_equal(half["other"], keepers.take(half["at"])))
    half = half.sort_by([("at", "ascending"), ("not_keeper", "ascending"), ("bit_error_rate", "ascending"), ("other", "ascending")])
    position = half["at"].to_numpy()
    first = np.flatnonzero(np.r_[True, position[1:] != position[:-1]])
    matches = half.take(pa.array(first)).select(MATCH_SCHEMA.names).cast(MATCH_SCHEMA)
    contained_count = int(pc.sum(pc.equal(matches["role"], "contained in")).as_py() or 0)
    return AudioDuplicateDecisions(dropped, keepers, matches, _version(dropped, keepers, matches), len(pc.unique(keepers)), contained_count)


def _version(dropped: pa.Array, keepers: pa.Array, matches: pa.Table, chunk: int = 65_536) -> str:
    """A digest of the decisions (the same edges give the same one), read a chunk of rows at a time."""
    digest = hashlib.sha256()
    for column in (dropped, keepers, *matches.columns):
        for start in range(0, len(column), chunk):
            digest.update("\0".join(map(str, column.slice(start, chunk).to_pylist())).encode("utf-8") + b"\1")
        digest.update(b"\2")
    return digest.hexdigest()[:16]
