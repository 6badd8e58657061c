"""Fuzzy transcript deduplication with MinHash LSH (Whisper paper §2.1: "fuzzy de-duping of transcript texts").

All four phases live here (as DataTrove splits them), each a plain function; ``find_duplicates`` composes 2-4
on whatever plan it is given (the job passes the Ray runner's, which partitions rows by key across the cluster),
and the same step finds sources that share an id:

1. ``compute_signatures`` (a stage, per block): normalised text -> shingles -> a MinHash signature of ``num_perm``
   uint32 values, the same values ``datasketch.MinHash(num_perm, seed)`` gives for the same shingles, computed for
   a whole block at once with numpy; plus ``dedup_quality``, a sortable key that says which copy to keep.
2. ``key_rows`` (per block): 16-byte (key, ref) rows, one per LSH band of each signed row and one for its id; the
   plan brings back only keys two or more rows share, and ``candidate_pairs`` turns them into ref pairs.
3. ``_verified`` (on the driver, over the candidates' signatures read back): pairs whose estimated Jaccard
   similarity (share of equal signature values) reaches the threshold become edges.
4. ``resolve_arrays`` (on the driver, in NumPy over the edges only): connected components; each keeps its best copy.
   ``mark_duplicates`` (a stage) then rejects the others as ``duplicate``, or as ``eval_overlap`` when their
   cluster holds an evaluation text (``exclusion_rows`` turns the evaluation file into rows that go through
   phases 1-3 like sources). ``replace_copies`` turns the later of two sources with one id into its reject.

Text is compared after NFKC, case folding and removal of punctuation and symbols, so copies that differ only in
punctuation or case are the same text. Scripts written with spaces are shingled into word n-grams (Korean too),
scripts without spaces (Chinese, Japanese, Thai, Lao, Khmer, Myanmar) into character n-grams. Texts with fewer
than ``min_tokens`` words (characters) are too short to judge and are never deduplicated.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.io.storage import is_uri
from pipeline.schema import CUE_TYPE, RejectReason
from pipeline.stage import Reject, active_rows, map_rows
from pipeline.text import casing_class, has_punctuation, is_spaceless, normalize_for_comparison

log = logging.getLogger("wspsr")

EVAL_PREFIX = "eval:"
SIGNATURE_DTYPE = np.dtype("<u4")  # datasketch's default scheme ("affine32") keeps uint32 hash values
_PERMUTE_BYTES = 1 << 20  # permuted hash values per slice: 2048 shingles x 128 (stays in cache: 5x faster than 64k)
_ALL_PAIRS_MAX = 64  # buckets up to this size: every pair is compared
_HEADS = 16  # larger buckets: every member against the first 16 (by source id)

@dataclass(frozen=True)
class DedupOptions:
    enabled: bool = True
    threshold: float = 0.7  # Jaccard similarity of shingle sets at or above which two transcripts are near-duplicates
    num_perm: int = 128  # MinHash permutations (signature length)
    ngram_words: int = 3  # word shingles for scripts written with spaces
    ngram_chars: int = 5  # character shingles for scripts written without spaces (Chinese, Japanese, Thai, ...)
    min_tokens: int = 8  # fewer words (characters without spaces): too little evidence, never deduplicated
    seed: int = 1  # of the MinHash permutations (datasketch's seed)
    # Weight of missed pairs against spurious candidates when datasketch's optimal-parameter search picks LSH
    # (bands, rows). Candidates are verified against the threshold, so a spurious one costs a comparison and a
    # missed one is a kept duplicate: 0.9 gives 20 bands x 6 rows at 0.7/128 (recall 92 % at Jaccard 0.7;
    # 0.5, datasketch's default, gives 14 x 9 and 44 %).
    false_negative_weight: float = 0.9
    # File of evaluation transcripts (one per line, or .jsonl with "text"): sources matching one are removed as
    # eval_overlap. Similarity is over whole texts: give one line per evaluation recording, not per sentence.
    exclude_texts: str | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError("threshold must be in (0, 1]")
        if not 16 <= self.num_perm <= 4096:
            raise ValueError("num_perm must be between 16 and 4096")
        if self.ngram_words < 1 or self.ngram_chars < 1:
            raise ValueError("ngram_words and ngram_chars must be at least 1")
        if self.min_tokens < max(self.ngram_words, self.ngram_chars):
            raise ValueError("min_tokens must be at least ngram_words and ngram_chars (a text needs one whole shingle)")
        if not 0 <= self.seed < 2**32:
            raise ValueError("seed must be in [0, 2**32)")
        if not 0.0 < self.false_negative_weight < 1.0:
            raise ValueError("false_negative_weight must be in (0, 1)")


_NO_IDS = pa.array([], pa.string())


@dataclass(frozen=True, eq=False)
class DuplicateDecisions:
    """What the global step decided, as ``mark_duplicates``' options: the duplicate source ids (sorted) and their
    keepers, as Arrow arrays (a few bytes an id, no Python object per duplicate), and the sources whose id an earlier
    one took (ref, their reject row as JSON)."""

    duplicates: pa.Array = field(default_factory=lambda: _NO_IDS)
    keepers: pa.Array = field(default_factory=lambda: _NO_IDS)
    threshold: float = 0.7  # for the reject detail
    exclude_texts: str | None = None  # the evaluation file, named in eval_overlap details
    same_id: tuple[tuple[int, str], ...] = ()

    @classmethod
    def from_arrays(cls, duplicates: pa.Array, keepers: pa.Array, options: DedupOptions, same_id: dict[int, dict[str, Any]] | None = None) -> DuplicateDecisions:
        order = pc.sort_indices(duplicates)
        copies = tuple(sorted((ref, json.dumps(row, sort_keys=True)) for ref, row in (same_id or {}).items()))
        return cls(duplicates.take(order), keepers.take(order), options.threshold, options.exclude_texts, copies)

    @classmethod
    def from_mapping(cls, duplicate_of: dict[str, str], options: DedupOptions, same_id: dict[int, dict[str, Any]] | None = None) -> DuplicateDecisions:
        return cls.from_arrays(pa.array(list(duplicate_of), pa.string()), pa.array(list(duplicate_of.values()), pa.string()), options, same_id)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DuplicateDecisions):
            return NotImplemented
        return (self.duplicates.equals(other.duplicates) and self.keepers.equals(other.keepers)
                and (self.threshold, self.exclude_texts, self.same_id) == (other.threshold, other.exclude_texts, other.same_id))

    def __len__(self) -> int:
        return len(self.duplicates)

    @functools.cached_property
    def keeper(self) -> dict[str, str]:
        """duplicate -> keeper as a dict (for tests and reports; the stage looks ids up in the arrays)."""
        return dict(zip(self.duplicates.to_pylist(), self.keepers.to_pylist()))

    @functools.cached_property
    def copies(self) -> dict[int, dict[str, Any]]:
        return {ref: json.loads(row) for ref, row in self.same_id}


# --- text -> shingles --------------------------------------------------------------------------------------


def shingles(text: str, options: DedupOptions) -> list[str] | None:
    """The text's distinct shingles in order of first occurrence; None when it has fewer than min_tokens tokens."""
    pieces = shingle_bytes(text, options)
    return None if pieces is None else [piece.decode("utf-8") for piece in dict.fromkeys(pieces)]


def shingle_bytes(text: str, options: DedupOptions) -> list[bytes] | None:
    """The UTF-8 bytes of ``shingles(text)`` (the same set, repeats not removed), as hashed: word n-grams are
    cut out of the encoded text by byte offsets instead of being joined word by word."""
    normalized = normalize_for_comparison(text)
    if is_spaceless(normalized):
        chars = normalized.replace(" ", "")
        if len(chars) < options.min_tokens:
            return None
        n = options.ngram_chars
        return [chars[i : i + n].encode("utf-8") for i in range(len(chars) - n + 1)]
    words = normalized.split(" ") if normalized else []
    if len(words) < options.min_tokens:
        return None
    encoded = normalized.encode("utf-8")
    widths = map(len, words) if len(encoded) == len(normalized) else (len(w.encode("utf-8")) for w in words)
    offsets = [0, *accumulate(width + 1 for width in widths)]  # word k: encoded[offsets[k] : offsets[k + 1] - 1]
    return [encoded[start : end - 1] for start, end in zip(offsets, offsets[options.ngram_words :])]


# --- MinHash ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's own permutation parameters (a, b) for the default "affine32" scheme."""
    from datasketch import MinHash

    a, b = MinHash(num_perm=num_perm, seed=seed).permutations
    return np.ascontiguousarray(a, dtype=np.uint32), np.ascontiguousarray(b, dtype=np.uint32)


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, as datasketch pre-mixes input hashes (uint32 arithmetic wraps)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _sha1_hash32(items: list[bytes]) -> np.ndarray:
    """datasketch's default hashfunc (first 4 bytes of SHA-1, little-endian) of each item, as one array."""
    sha1 = hashlib.sha1
    digests = np.frombuffer(b"".join([sha1(item).digest() for item in items]), dtype=SIGNATURE_DTYPE)
    return digests[::5].copy()  # 20-byte digests: every fifth uint32 is a digest's first four bytes


def minhash_signatures(docs: list[list[bytes]], num_perm: int, seed: int) -> np.ndarray:
    """MinHash signatures of non-empty lists of shingles (bytes), shape (len(docs), num_perm) uint32.

    Equal to ``MinHash(num_perm=num_perm, seed=seed)`` updated with each shingle, but the
    shingles of all documents are hashed in one pass and permuted in cache-sized slices of one flat array
    (a slice may cover many short documents or part of a long one).
    """
    a, b = _permutations(num_perm, seed)
    out = np.full((len(docs), num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
    if not docs:
        return out
    lengths = np.fromiter((len(doc) for doc in docs), dtype=np.int64, count=len(docs))
    if lengths.min() < 1:
        raise ValueError("every document needs at least one shingle")
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    hashes = _fmix32(_sha1_hash32([s for doc in docs for s in doc]))
    rows = max(1, _PERMUTE_BYTES // (num_perm * 4))
    buffer = np.empty((rows, num_perm), dtype=np.uint32)
    for lo in range(0, len(hashes), rows):
        hi = min(lo + rows, len(hashes))
        permuted = buffer[: hi - lo]
        np.multiply(hashes[lo:hi, None], a, out=permuted)  # a * h + b mod 2^32 (uint32 wraps)
        np.add(permuted, b, out=permuted)
        first = int(np.searchsorted(starts, lo, side="right")) - 1  # documents overlapping [lo, hi)
        last = int(np.searchsorted(starts, hi, side="left"))
        local = np.maximum(starts[first:last] - lo, 0)
        np.minimum(out[first:last], np.minimum.reduceat(permuted, local, axis=0), out=out[first:last])
    return out


# --- which copy to keep ------------------------------------------------------------------------------------


CASING_RANK = {"mixed": 2, "uncased": 1, "upper": 0, "lower": 0}


# Containers and codecs that hold audio without loss: a copy in one of these is the original, not a re-encode.
LOSSLESS_SUFFIXES = frozenset({".flac", ".wav", ".wave", ".aif", ".aiff", ".w64", ".wv", ".ape", ".tta"})


def quality_key(text: str, audio_ms: int, timing: int = 0, lossless: bool = False, bytes_per_s: int = 0) -> str:
    """Sortable (greater is better): punctuated, then cased (mixed case over all-lower/all-upper; texts of scripts
    without case, or mostly without, rank between the two), then longer audio, then longer text; then, for copies
    that tie on all of that, finer cue timing (``timing_ranks``), lossless audio over lossy, and more bytes per
    second of audio (a higher bit rate, or a higher sample rate for lossless files)."""
    punctuated = 1 if has_punctuation(text) else 0
    cased = CASING_RANK[casing_class(text)]
    return (f"{punctuated}{cased}:{max(0, min(int(audio_ms), 10**13 - 1)):013d}:{min(len(text), 10**10 - 1):010d}"
            f":{timing}{int(lossless)}:{max(0, min(int(bytes_per_s), 10**10 - 1)):010d}")


def timing_ranks(times: np.ndarray, rows: np.ndarray, num_rows: int) -> np.ndarray:
    """How finely each row's transcript is timed, from its cue times (``rows[i]`` is the row of ``times[i]``):
    3 to the millisecond, 2 to 10-100 ms (frames, Whisper's 20 ms grid), 1 to whole seconds, 0 untimed."""
    timed = np.bincount(rows, minlength=num_rows) > 0
    off_seconds = np.bincount(rows, weights=times % 1000 != 0, minlength=num_rows) > 0
    off_frames = np.bincount(rows, weights=times % 10 != 0, minlength=num_rows) > 0
    return np.where(off_frames, 3, np.where(off_seconds, 2, np.where(timed, 1, 0))).astype(np.int64)


def _audio_facts(batch: pa.Table, spans: np.ndarray) -> tuple[list[bool], list[int]]:
    """Lossless or not (by the file's suffix), and bytes per second of cue span (one ``stat`` of a local file;
    0 for object-store URIs, where a request per source would cost more than the choice is worth)."""
    paths = batch["audio_path"].to_pylist() if "audio_path" in batch.column_names else [None] * batch.num_rows
    lossless, rates = [], []
    for path, span in zip(paths, spans.tolist()):
        lossless.append(bool(path) and Path(path).suffix.lower() in LOSSLESS_SUFFIXES)
        size = 0
        if path and not is_uri(path):
            try:
                size = Path(path).stat().st_size
            except OSError:
                size = 0
        rates.append(size * 1000 // span if span > 0 else 0)
    return lossless, rates


def _cue_facts(batch: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Per row, from the cues flattened once: the last cue end minus the first cue start (the audio-length proxy; 0
    for untimed transcripts) and how finely the cues are timed (``timing_ranks``)."""
    spans = np.zeros(batch.num_rows, dtype=np.int64)
    timing = np.zeros(batch.num_rows, dtype=np.int64)
    if "cues" not in batch.column_names or batch.num_rows == 0:
        return spans, timing
    cues = batch["cues"].combine_chunks()
    if not (pa.types.is_list(cues.type) or pa.types.is_large_list(cues.type)):
        return spans, timing
    lengths = pc.fill_null(pc.list_value_length(cues), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    nonempty = np.flatnonzero(lengths)
    if not len(nonempty):
        return spans, timing
    flat = pc.list_flatten(cues)
    starts = pc.fill_null(pc.struct_field(flat, "start_ms"), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    ends = pc.fill_null(pc.struct_field(flat, "end_ms"), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths[nonempty])[:-1]])
    spans[nonempty] = np.maximum(np.maximum.reduceat(ends, offsets) - np.minimum.reduceat(starts, offsets), 0)
    rows = np.repeat(np.arange(batch.num_rows), lengths)
    timing = timing_ranks(np.concatenate([starts, ends]), np.concatenate([rows, rows]), batch.num_rows)
    return spans, timing


# --- phase 1: signatures (stage) ---------------------------------------------------------------------------


def compute_signatures(batch: pa.Table, options: DedupOptions) -> pa.Table:
    """Adds ``minhash`` (num_perm little-endian uint32 values as bytes; null for texts too short to judge)
    and ``dedup_quality`` (see ``quality_key``)."""
    texts = batch["transcript_text"].to_pylist()
    shingled = [shingle_bytes(text, options) if text else None for text in texts]
    signed = [i for i, doc in enumerate(shingled) if doc]
    signatures = minhash_signatures([shingled[i] for i in signed], options.num_perm, options.seed)
    width = options.num_perm * SIGNATURE_DTYPE.itemsize
    valid = np.zeros(len(texts), dtype=bool)
    valid[signed] = True
    data = np.zeros((len(texts), options.num_perm), dtype=SIGNATURE_DTYPE)
    data[signed] = signatures
    minhash = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(width), len(texts), [pa.array(valid).buffers()[1] if not valid.all() else None, pa.py_buffer(data.tobytes())],
        null_count=int((~valid).sum()),
    ).cast(pa.binary())
    spans, timing = _cue_facts(batch)
    lossless, rates = _audio_facts(batch, spans)
    quality = pa.array(
        [quality_key(text or "", span, fineness, lossy_or_not, rate)
         for text, span, fineness, lossy_or_not, rate in zip(texts, spans.tolist(), timing.tolist(), lossless, rates)],
        pa.string(),
    )
    out = batch
    for name, column in (("minhash", minhash), ("dedup_quality", quality)):
        if name in out.column_names:
            out = out.set_column(out.column_names.index(name), name, column)
        else:
            out = out.append_column(name, column)
    return out


# --- phase 2: band keys ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _optimal_param(threshold: float, num_perm: int, false_negative_weight: float) -> tuple[int, int]:
    from datasketch.lsh import _optimal_param as optimal

    return optimal(threshold, num_perm, 1.0 - false_negative_weight, false_negative_weight)


def lsh_params(options: DedupOptions) -> tuple[int, int]:
    """(bands, rows) from datasketch's optimal-parameter search (0.7/128 with weight 0.9: 20 x 6)."""
    return _optimal_param(options.threshold, options.num_perm, options.false_negative_weight)


def _signature_matrix(column: pa.ChunkedArray | pa.Array, num_perm: int) -> np.ndarray:
    return _signatures_of(column.to_pylist(), num_perm)


def _signatures_of(values: list[bytes], num_perm: int) -> np.ndarray:
    width = num_perm * SIGNATURE_DTYPE.itemsize
    if any(len(v) != width for v in values):
        raise ValueError(f"minhash values must be {width} bytes (num_perm={num_perm}); computed with other options?")
    return np.frombuffer(b"".join(values), dtype=SIGNATURE_DTYPE).reshape(len(values), num_perm)


# --- phase 4: clusters (driver) ----------------------------------------------------------------------------


def _eval_order(source_id: str) -> tuple[int, str]:
    suffix = source_id[len(EVAL_PREFIX) :]
    return (int(suffix) if suffix.isdigit() else 2**62, source_id)


def resolve_duplicates(edges: Iterable[tuple[str, str]], quality: dict[str, Any]) -> dict[str, str]:
    """``resolve_arrays`` over Python edges and a quality dict: duplicate -> keeper, sorted by duplicate."""
    edges = list(edges)
    a = pa.array([e[0] for e in edges], pa.string())
    b = pa.array([e[1] for e in edges], pa.string())
    qa = pa.array([quality.get(e[0]) for e in edges], pa.string())
    qb = pa.array([quality.get(e[1]) for e in edges], pa.string())
    duplicates, keepers = resolve_arrays(a, b, qa, qb)
    return dict(sorted(zip(duplicates.to_pylist(), keepers.to_pylist())))


def resolve_arrays(a_ids: pa.Array, b_ids: pa.Array, a_quality: pa.Array, b_quality: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Clusters of the edges (a_ids[i], b_ids[i]) and who each keeps: (duplicates, their keepers), in NumPy over
    integer codes, so the driver holds a few integers per member and no Python object per edge.

    Clusters are connected components. A cluster keeps its member with the greatest quality key (unknown quality
    ranks last; ties: the smallest source id). A cluster with an evaluation member ("eval:..." ids) keeps none: each
    of its sources maps to the first evaluation member by line. Evaluation members are never in the result. The
    result depends on the set of edges only, not on their order (a member's quality is the same on every edge).
    """
    ids = pa.concat_arrays([_plain(a_ids), _plain(b_ids)])
    if len(ids) == 0:
        return _NO_IDS, _NO_IDS
    encoded = pc.dictionary_encode(ids)
    names = encoded.dictionary
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    n, half = len(names), len(a_ids)
    u, v = codes[:half], codes[half:]
    labels = np.arange(n, dtype=np.int64)
    while True:  # every edge pulls both ends down to the smaller label; then labels jump to their label's label
        before = labels
        low = np.minimum(labels[u], labels[v])
        labels = labels.copy()
        np.minimum.at(labels, u, low)
        np.minimum.at(labels, v, low)
        labels = labels[labels]
        if np.array_equal(labels, before):
            break
    first = np.unique(codes, return_index=True)[1]  # each member's first edge end, for its quality
    quality_of = pa.concat_arrays([_plain(a_quality), _plain(b_quality)]).take(pa.array(first))
    known = quality_of.is_valid().to_numpy(zero_copy_only=False).astype(bool)
    quality_rank = np.zeros(n, dtype=np.int64)
    if known.any():
        quality_rank[known] = pc.rank(quality_of.filter(pa.array(known)), sort_keys="ascending", tiebreaker="dense").to_numpy()
    id_rank = pc.rank(names, sort_keys="ascending", tiebreaker="dense").to_numpy().astype(np.int64)
    is_eval = pc.starts_with(names, EVAL_PREFIX).to_numpy(zero_copy_only=False).astype(bool)
    eval_line = np.full(n, 2**62, dtype=np.int64)
    for code in np.flatnonzero(is_eval).tolist():  # evaluation texts: as many as its lines, not sources
        eval_line[code] = _eval_order(names[code].as_py())[0]
    # Per cluster (label, the primary key, last), the keeper first: evaluation members by line, then known quality,
    # greatest quality, smallest id.
    order = np.lexsort((id_rank, -quality_rank, ~known, eval_line, ~is_eval, labels))
    sorted_labels = labels[order]
    heads = order[np.r_[True, sorted_labels[1:] != sorted_labels[:-1]]]
    keeper_of_label = np.empty(n, dtype=np.int64)
    keeper_of_label[labels[heads]] = heads
    keeper = keeper_of_label[labels]
    dropped = np.flatnonzero((keeper != np.arange(n)) & ~is_eval)
    return names.take(pa.array(dropped)), names.take(pa.array(keeper[dropped]))


def _plain(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


# --- phases 2-4 over a whole dataset -------------------------------------------------------------------------


class GroupingPlan(Protocol):
    """What the global step needs from a runner (the Ray plan, or an in-process one in tests)."""

    def by_key(self, dataset: Any, explode: Callable[[pa.Table], pa.Table], reduce: Callable[[pa.Table], pa.Table],
               extra: pa.Table | None = None, expected_rows: int = 0, distinct_by: str | None = None) -> pa.Table:
        """``reduce`` over each partition of the exploded rows (all rows of a key in one partition), collected
        (with ``distinct_by``: each distinct row once)."""
        ...

    def gather(self, dataset: Any, column: str, values: np.ndarray, columns: list[str], reduce: Callable[..., pa.Table], *args: Any) -> pa.Table:
        """``reduce(rows, *args)`` over the rows whose ``column`` is one of ``values``, all in one task, collected."""
        ...


KEYED_SCHEMA = pa.schema([("key", pa.int64()), ("ref", pa.int64())])  # the 64-bit key as a signed int: what every shuffle sorts
_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB))


def _mix64(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser (uint64 arithmetic wraps)."""
    h = (h ^ (h >> np.uint64(30))) * _MIX[1]
    h = (h ^ (h >> np.uint64(27))) * _MIX[2]
    return h ^ (h >> np.uint64(31))


def id_keys(source_ids: list[str]) -> np.ndarray:
    """A 64-bit key per source id (equal ids, equal keys; a rare collision only adds a candidate)."""
    digest = b"".join(hashlib.blake2b(i.encode("utf-8"), digest_size=8, person=b"wspsr-id").digest() for i in source_ids)
    return np.frombuffer(digest, dtype="<u8").copy()


def band_hashes(signatures: np.ndarray, options: DedupOptions) -> np.ndarray:
    """(rows, bands) 64-bit keys of each LSH band (the band's index mixed in): rows sharing a band value share its key."""
    bands, rows = lsh_params(options)
    values = signatures[:, : bands * rows].reshape(len(signatures), bands, rows).astype(np.uint64)
    with np.errstate(over="ignore"):
        h = _mix64(np.arange(1, bands + 1, dtype=np.uint64) * _MIX[0])[None, :].repeat(len(signatures), axis=0)
        for k in range(rows):
            h = _mix64(h ^ (values[:, :, k] + _MIX[0]))
    return h


def key_rows(batch: pa.Table, options: DedupOptions | None) -> pa.Table:
    """Phase 2, slim (16 bytes a row): every row's id key, and, with ``options``, one key per LSH band of each row no
    stage rejected that has a signature. Rows sharing a key are candidates: of one source id, or of a near-duplicate."""
    if batch.num_rows == 0:
        return KEYED_SCHEMA.empty_table()
    keys = [id_keys(batch["source_id"].to_pylist())]
    refs = [batch["ref"].to_numpy(zero_copy_only=False)]
    if options is not None and "minhash" in batch.column_names:
        signed = active_rows(batch)
        signed = signed.filter(pc.is_valid(signed["minhash"])) if signed.num_rows else signed
        if signed.num_rows:
            bands = band_hashes(_signature_matrix(signed["minhash"], options.num_perm), options)
            keys.append(bands.reshape(-1))
            refs.append(np.repeat(signed["ref"].to_numpy(zero_copy_only=False), bands.shape[1]))
    return pa.table([pa.array(np.concatenate(keys).view(np.int64)), pa.array(np.concatenate(refs), pa.int64())], schema=KEYED_SCHEMA)


MEMBER_COLUMNS = ["ref", "source_id", "source", "manifest", "manifest_line", "reject_reason", "minhash", "dedup_quality"]


PAIR_SCHEMA = pa.schema([("a", pa.int64()), ("b", pa.int64())])


def partition_pairs(keyed: pa.Table) -> pa.Table:
    """Phase 2's reducer, per partition of (key, ref) rows: the candidate pairs it holds, as a table."""
    pairs = candidate_pairs(keyed)
    return pa.table([pa.array(pairs[:, 0]), pa.array(pairs[:, 1])], schema=PAIR_SCHEMA)


def candidate_pairs(shared: pa.Table) -> np.ndarray:
    """(a, b) ref pairs (a < b, each pair once) of rows sharing a key: the pair of a two-row key straight from the
    sorted keys; a larger group all its pairs up to 64 members, else each member with the first 16 (by ref)."""
    if shared.num_rows < 2:
        return np.zeros((0, 2), dtype=np.int64)
    keys, refs = shared["key"].to_numpy(zero_copy_only=False), shared["ref"].to_numpy(zero_copy_only=False)
    order = np.lexsort((refs, keys))
    keys, refs = keys[order], refs[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    sizes = np.diff(np.r_[starts, len(keys)])
    if not (sizes > 1).any():
        return np.zeros((0, 2), dtype=np.int64)
    twos = starts[sizes == 2]
    pairs = [np.stack([refs[twos], refs[twos + 1]], axis=1)]
    for start, size in zip(starts[sizes > 2].tolist(), sizes[sizes > 2].tolist()):
        members = refs[start : start + size]
        if size <= _ALL_PAIRS_MAX:
            a, b = np.triu_indices(size, 1)
        else:
            a = np.concatenate([np.full(size - h - 1, h) for h in range(_HEADS)])
            b = np.concatenate([np.arange(h + 1, size) for h in range(_HEADS)])
        pairs.append(np.stack([members[a], members[b]], axis=1))
    found = np.concatenate(pairs)
    return np.unique(found[found[:, 0] != found[:, 1]], axis=0)


def _signature_rows(column: pa.ChunkedArray | pa.Array, num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    """(matrix of every row's signature, which rows have one), without a Python object per row."""
    values = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    width = num_perm * SIGNATURE_DTYPE.itemsize
    fixed = values.cast(pa.binary(width))
    valid = fixed.is_valid().to_numpy(zero_copy_only=False)
    if not valid.any():
        return np.zeros((len(fixed), num_perm), dtype=SIGNATURE_DTYPE), valid
    data = np.frombuffer(fixed.buffers()[1], dtype=SIGNATURE_DTYPE, count=(fixed.offset + len(fixed)) * num_perm)
    return data[fixed.offset * num_perm :].reshape(len(fixed), num_perm), valid


def _verified(signatures: np.ndarray, a: np.ndarray, b: np.ndarray, options: DedupOptions, chunk: int = 16_384) -> np.ndarray:
    """Which (row a, row b) pairs reach the threshold on their signatures (share of equal values), in chunks."""
    needed = math.ceil(options.threshold * options.num_perm - 1e-9)
    keep = np.zeros(len(a), dtype=bool)
    for start in range(0, len(a), chunk):
        part = slice(start, start + chunk)
        keep[part] = (signatures[a[part]] == signatures[b[part]]).sum(axis=1) >= needed
    return keep


JUDGED_SCHEMA = pa.schema([("a", pa.int64()), ("b", pa.int64()), ("same_id", pa.bool_()), ("a_id", pa.string()), ("b_id", pa.string()),
                           ("a_quality", pa.string()), ("b_quality", pa.string())])


def judge_pairs(found: pa.Table, pairs: np.ndarray, extra: pa.Table, options: DedupOptions | None) -> pa.Table:
    """Phase 3, in one worker over the candidates' rows: the pairs whose rows share a source id, and (with
    ``options``) the pairs of distinct ids whose signatures reach the threshold, both rows usable (no stage rejected
    them, both signed, neither the later copy of an id); with what phase 4 needs (ids, quality keys)."""
    members = _member_table(found, extra)
    refs = members["ref"].to_numpy(zero_copy_only=False)
    keep = np.isin(pairs[:, 0], refs) & np.isin(pairs[:, 1], refs)
    pairs, at = pairs[keep], np.searchsorted(refs, pairs[keep])
    ids = members["source_id"]
    if len(at) == 0:
        return JUDGED_SCHEMA.empty_table()
    same = pc.equal(ids.take(pa.array(at[:, 0])), ids.take(pa.array(at[:, 1]))).to_numpy(zero_copy_only=False).astype(bool)
    chosen = np.flatnonzero(same)
    if options is not None:
        involved = np.unique(at[same])  # later copies of an id (and their firsts) take no part as near-duplicates
        first_of = {}
        for index, ref in zip(involved.tolist(), refs[involved].tolist()):
            first_of.setdefault(ids[index].as_py(), ref)
        later = np.array(sorted(refs[i] for i in involved.tolist() if refs[i] != first_of[ids[i].as_py()]), dtype=np.int64)
        signatures, signed = _signature_rows(members["minhash"], options.num_perm)
        usable = signed & pc.is_null(members["reject_reason"]).to_numpy(zero_copy_only=False) & ~np.isin(refs, later)
        candidates = np.flatnonzero(~same & usable[at[:, 0]] & usable[at[:, 1]])
        near = candidates[_verified(signatures, at[candidates, 0], at[candidates, 1], options)]
        chosen = np.concatenate([chosen, near])
    take_a, take_b = pa.array(at[chosen, 0]), pa.array(at[chosen, 1])
    return pa.table([pa.array(pairs[chosen, 0]), pa.array(pairs[chosen, 1]), pa.array(same[chosen]), ids.take(take_a), ids.take(take_b),
                     members["dedup_quality"].take(take_a), members["dedup_quality"].take(take_b)], schema=JUDGED_SCHEMA)


def copy_rows(found: pa.Table) -> pa.Table:
    """The rows of the sources that share an id (what ``duplicate_reject`` names them by)."""
    return found


def find_duplicates(plan: GroupingPlan, dataset: Any, options: DedupOptions, duplicate_reject: Callable[[dict, dict], dict], rows_hint: int = 0) -> DuplicateDecisions:
    """The global step over the dataset of signed rows (phase 1 done), on the driver only what is bounded by the
    duplicates, and there only as arrays: (key, ref) rows partitioned by key across the cluster become candidate
    pairs in each partition; the driver keeps each pair once; one worker reads the candidates' rows and judges the
    pairs (same source id, or near-duplicate on the signatures: phase 3); the driver resolves the verdicts: of
    sources with one id the first by ``ref`` stays and the others become ``duplicate_reject(row, first)``, and
    near-duplicate edges form clusters that keep their best copy (phase 4). With ``options.enabled`` false only
    ids are compared. Evaluation texts (``exclude_texts``) take part as rows with negative refs. ``rows_hint``: the
    number of rows, which sizes the all-to-all step."""
    dedup = options if options.enabled else None
    extra = exclusion_rows(options) if dedup else EXCLUSION_SCHEMA.empty_table()
    if extra.num_rows:
        extra = compute_signatures(extra, options).append_column("ref", pa.array([-int(i.removeprefix(EVAL_PREFIX)) for i in extra["source_id"].to_pylist()], pa.int64()))
    explode = functools.partial(key_rows, options=dedup)
    extra_keys = key_rows(extra, dedup).filter(pc.less(pc.field("ref"), 0)) if extra.num_rows else None  # eval texts: band keys only
    bands = lsh_params(options)[0] if dedup else 0
    found_pairs = plan.by_key(dataset, explode, partition_pairs, extra_keys, rows_hint * (1 + bands), distinct_by="a")
    pairs = np.unique(np.stack([found_pairs["a"].to_numpy(zero_copy_only=False), found_pairs["b"].to_numpy(zero_copy_only=False)], axis=1), axis=0) \
        if found_pairs.num_rows else np.zeros((0, 2), dtype=np.int64)
    del found_pairs
    refs = np.unique(pairs)
    available = dataset_columns(plan, dataset)
    columns = [c for c in MEMBER_COLUMNS if c in available]
    judged = plan.gather(dataset, "ref", refs[refs >= 0], columns, judge_pairs, pairs, extra, dedup) if len(pairs) else None
    judged = judged if judged is not None and judged.num_rows else JUDGED_SCHEMA.empty_table()

    same_id: dict[int, dict[str, Any]] = {}  # ref -> its duplicate_source reject row
    copies = judged.filter(judged["same_id"])
    if copies.num_rows:
        involved = np.unique(np.concatenate([copies["a"].to_numpy(), copies["b"].to_numpy()]))
        rows: dict[str, list[dict[str, Any]]] = {}
        for row in plan.gather(dataset, "ref", involved, [c for c in ("ref", "key", "source_id", "source", "manifest", "manifest_line") if c in available], copy_rows).to_pylist():
            rows.setdefault(row["source_id"], []).append(row)
        for group in rows.values():
            group.sort(key=lambda r: r["ref"])
            for row in group[1:]:
                same_id[row["ref"]] = duplicate_reject(row, group[0])
    near = judged.filter(pc.invert(judged["same_id"]))
    duplicates, keepers = resolve_arrays(near["a_id"], near["b_id"], near["a_quality"], near["b_quality"])
    log.info("dedup: %d sources share an id with an earlier one; %d similar pairs, %d sources are near-duplicates or match evaluation texts",
             len(same_id), near.num_rows, len(duplicates))
    return DuplicateDecisions.from_arrays(duplicates, keepers, options, same_id)


MEMBER_TYPES = {"ref": pa.int64(), "source_id": pa.string(), "source": pa.string(), "manifest": pa.string(), "manifest_line": pa.int64(),
                "reject_reason": pa.string(), "minhash": pa.binary(), "dedup_quality": pa.string()}


def _member_table(found: pa.Table, extra: pa.Table) -> pa.Table:
    """The candidates' rows (and the evaluation texts'), every member column present, sorted by ref."""
    parts = [found]
    if extra.num_rows:
        parts.append(pa.table({c: extra[c] if c in extra.column_names else pa.nulls(extra.num_rows, t) for c, t in MEMBER_TYPES.items() if c in found.column_names or c in extra.column_names}))
    table = pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else found
    for name, type_ in MEMBER_TYPES.items():
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, type_))
    return table.sort_by("ref")


def dataset_columns(plan: Any, dataset: Any) -> list[str]:
    return plan.columns(dataset) if hasattr(plan, "columns") else MEMBER_COLUMNS


# --- evaluation texts --------------------------------------------------------------------------------------

EXCLUSION_SCHEMA = pa.schema(
    [("source_id", pa.string()), ("transcript_text", pa.string()), ("transcript_format", pa.string()), ("cues", pa.list_(CUE_TYPE))]
)


def exclusion_rows(options: DedupOptions) -> pa.Table:
    """The evaluation texts as source-like rows (``eval:<line number>``), empty without ``exclude_texts``."""
    if not options.exclude_texts:
        return EXCLUSION_SCHEMA.empty_table()
    path = Path(options.exclude_texts)
    is_jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    ids, texts = [], []
    with path.open(encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if is_jsonl:
                try:
                    text = json.loads(line)["text"]
                except (ValueError, KeyError, TypeError) as err:
                    raise ValueError(f"{path}:{number}: expected a JSON object with a \"text\" string ({err})") from None
                if not isinstance(text, str):
                    raise ValueError(f"{path}:{number}: \"text\" must be a string")
            else:
                text = line.rstrip("\r\n")
            ids.append(f"{EVAL_PREFIX}{number}")
            texts.append(text)
    n = len(ids)
    return pa.table(
        [pa.array(ids, pa.string()), pa.array(texts, pa.string()), pa.array(["txt"] * n, pa.string()), pa.nulls(n, pa.list_(CUE_TYPE))],
        schema=EXCLUSION_SCHEMA,
    )


# --- marking (stage) ---------------------------------------------------------------------------------------


def mark_duplicates(batch: pa.Table, decisions: DuplicateDecisions) -> pa.Table:
    """Rejects the sources that are not their cluster's keeper (``duplicate``, or ``eval_overlap`` when the
    cluster holds an evaluation text), with ``duplicate_of``; drops the ``minhash`` column."""
    if "minhash" in batch.column_names:
        batch = batch.drop_columns(["minhash"])
    if not len(decisions) or batch.num_rows == 0:
        return batch
    at = pc.index_in(batch["source_id"], value_set=decisions.duplicates)
    if at.null_count == batch.num_rows:
        return batch
    hits = pc.is_valid(at)
    keeper = dict(zip(pc.filter(batch["source_id"], hits).to_pylist(), decisions.keepers.take(pc.filter(at, hits)).to_pylist()))  # this batch's only
    where = f" of {Path(decisions.exclude_texts).name}" if decisions.exclude_texts else ""

    def mark(row: dict[str, Any]) -> dict[str, Any] | Reject:
        kept = keeper.get(row["source_id"])
        if kept is None:
            return row
        if kept.startswith(EVAL_PREFIX):
            line = kept[len(EVAL_PREFIX) :]
            detail = f"transcript matches evaluation text on line {line}{where} (Jaccard ≥ {decisions.threshold:g})"
            return Reject(RejectReason.EVAL_OVERLAP, detail, duplicate_of=kept)
        return Reject(RejectReason.DUPLICATE, f"near-duplicate of {kept} (Jaccard ≥ {decisions.threshold:g})", duplicate_of=kept)

    return map_rows(batch, mark)


def replace_copies(batch: pa.Table, decisions: DuplicateDecisions) -> pa.Table:
    """Rows whose source id an earlier row took become that decision's reject (``duplicate_source``, named by their
    manifest line or their source), whatever stage they reached: what discovery in one process would have made of
    them. A plain function over every row, rejected or not (not a stage, which sees only active rows)."""
    copies = decisions.copies
    if not copies or "ref" not in batch.column_names:
        return batch
    refs = batch["ref"].to_pylist()
    hit = [i for i, ref in enumerate(refs) if ref in copies]
    if not hit:
        return batch
    rows = batch.to_pylist()
    for i in hit:
        replacement = copies[refs[i]]
        rows[i] = {name: None for name in rows[i]} | {"ref": refs[i], **{k: v for k, v in replacement.items() if k in rows[i]}}
    return pa.Table.from_pylist(rows, schema=batch.schema)
