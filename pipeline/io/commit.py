"""Output commit: shards are written under temporary names, renamed into place, then confirmed by a marker.

Only shards with a marker exist for readers and for the summary: ``committed_files`` and ``read_committed`` are
the one way anything (jobs, eval, the report, tests) reads a wspsr output folder. A marker names its files, its row
counts, the config fingerprint and the inputs it accounts for (their ids and keys: what each input is, so a rerun
skips exactly the committed ones whatever else changed). Before a shard writes, replaces or retires files a pending
record names them; the next start removes what a crash left of them, and nothing else (``finish_pending``). Shard
names derive from the source ids they hold, so a retried task rewrites the same files instead of adding new ones.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import faults
from pipeline.io import lifecycle
from pipeline.io.lifecycle import RUN_FILE, OutputError
from pipeline.schema import METADATA_FINGERPRINT, METADATA_SCHEMA_VERSION, REJECTS_SCHEMA, SCHEMA_VERSION
from pipeline.io.storage import TMP_PREFIX, Store, atomic_file, join, resolve, write_atomically

MARKERS = "_commits"
PENDING = f"{MARKERS}/_pending"  # what a shard is about to write, replace or remove: the crash cleanup's only list
_TEMPORARY = re.compile(rf"^{re.escape(TMP_PREFIX)}.+\.[A-Za-z0-9_]{{8}}$")  # atomic_file's names (mkstemp suffix)


@dataclass(frozen=True)
class OutputOptions:
    max_shard_mb: float = 256.0  # a corpus Parquet file holds at most about this much audio
    row_group_rows: int = 64  # windows per Parquet row group (about 30 MB of audio at most)
    compression: str = "zstd"

    def __post_init__(self) -> None:
        if self.max_shard_mb <= 0 or self.row_group_rows <= 0:
            raise ValueError("max_shard_mb and row_group_rows must be positive")


def shard_id(source_ids: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(source_ids)).encode("utf-8")).hexdigest()[:20]


def json_bytes(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def write_json_atomically(location: str | Path, doc: Any) -> None:
    """A JSON document (run.json, summary.json, metrics.json...), written whole or not at all."""
    write_atomically(location, json_bytes(doc))


def marker_names(store: Store) -> list[str]:
    """The commit markers of an output folder (file names under ``_commits/``), in order."""
    return [name for name in store.list(MARKERS) if name.endswith(".json") and not name.startswith(TMP_PREFIX)]


def input_keys(marker: dict[str, Any]) -> np.ndarray:
    """The keys (``pipeline.io.sources.source_key``) of the inputs a marker accounts for, as int64."""
    return np.asarray(marker.get("inputs", {}).get("keys", []), dtype=np.int64)


def inputs_of(ids: list[str], keys: list[int]) -> dict[str, list[Any]]:
    """A marker's ``inputs``: the ids and keys of the inputs it accounts for, in one order (by id)."""
    if len(ids) != len(keys):
        raise ValueError(f"{len(ids)} input ids but {len(keys)} keys")
    pairs = sorted(zip(ids, keys))
    return {"ids": [i for i, _ in pairs], "keys": [int(k) for _, k in pairs]}


def safe_relative(name: str) -> str:
    """A file name under a folder the job writes, refused if it could lead anywhere else."""
    normal = posixpath.normpath(name)
    if not name or name.startswith("/") or normal.startswith("..") or normal != name.replace("//", "/").rstrip("/") or "\x00" in name:
        raise OutputError(f"refusing to write {name!r}: an output name must stay inside the output folder")
    return normal


class OutputDir:
    """One job's output folder (a local path or a URI such as ``s3://bucket/prefix``): ``<table>/part-*.parquet``
    files, ``_commits/*.json`` markers, ``run.json``; its lifecycle is ``pipeline.io.lifecycle``'s."""

    def __init__(self, root: str | Path, tables: tuple[str, ...], fingerprint: str, file_dir: str | None = None, side_files: tuple[str, ...] = ()):
        self.store = Store(root)
        self.location = self.store.uri()  # how messages name the folder
        self.root = Path(self.store.base) if self.store.local else None  # jobs that need local files (fetch) use this
        self.tables = tables
        self.fingerprint = fingerprint
        self.file_dir = file_dir  # a folder of per-source files (subtitles), committed with the shards that write them
        self.side_files = side_files  # files of the whole run beside the tables (written by write_side_table)
        self.prepared = False

    def read_json(self, relative: str) -> Any:
        return json.loads(self.store.read_bytes(relative).decode("utf-8"))

    def write_json(self, relative: str, doc: Any) -> None:
        self.store.write_bytes(relative, json_bytes(doc))

    def prepare(self, run_doc: dict[str, Any], overwrite: bool) -> None:
        """Claim the folder for this run (``lifecycle.claim``: a folder of something else is refused untouched, and
        a second run at once too), refuse one written with another config unless ``overwrite`` (which removes only
        what this job's records name), then finish what a crash left half done. Once per run."""
        if self.prepared:
            return
        previous = lifecycle.claim(self.store, run_doc.get("job", "?"))
        if previous is not None:
            other_config = previous.get("fingerprint") != self.fingerprint
            if other_config and not overwrite and not marker_names(self.store):  # nothing committed: nothing to protect
                overwrite = True
            if other_config and not overwrite:
                raise OutputError(
                    f"{self.location} holds output of a different config (fingerprint {previous.get('fingerprint')}, this run "
                    f"{self.fingerprint}); pass --overwrite to replace it or choose another --out"
                )
            if overwrite:
                self.clear()
        self.write_json(RUN_FILE, dict(run_doc, fingerprint=self.fingerprint))
        for name in (*self.tables, MARKERS):
            self.store.make_dirs(name)
        self.finish_pending()
        self.prepared = True

    def clear(self) -> None:
        """Remove this job's own records: every file a marker or a pending record names, the markers, the side files
        and the run's documents. Nothing else in the folder (a file the job did not write) is touched."""
        self.finish_pending()
        for name in marker_names(self.store):
            marker = self.read_json(f"{MARKERS}/{name}")
            self.store.delete(f"{MARKERS}/{name}")
            for relative in _named_files(marker):
                self.store.delete(relative)
        for name in (*self.side_files, "summary.json", RUN_FILE):
            self.store.delete(name)
        for name in (*self.tables, *([self.file_dir] if self.file_dir else []), PENDING, MARKERS):
            self.store.remove_empty_dirs(name)

    def markers(self) -> list[dict[str, Any]]:
        return list(self.iter_markers())

    def iter_markers(self) -> Iterator[dict[str, Any]]:
        """The committed markers one at a time (checked against this run's fingerprint): never all in memory."""
        for name in marker_names(self.store):
            marker = self.read_json(f"{MARKERS}/{name}")
            if marker.get("fingerprint") != self.fingerprint:
                raise OutputError(f"marker {join(self.location, MARKERS, name)} belongs to another config ({marker.get('fingerprint')})")
            yield marker

    def committed_keys(self) -> np.ndarray:
        """The keys of every committed input, sorted, repeats kept (8 bytes an input): what a rerun compares with the
        inputs it finds."""
        parts = [input_keys(marker) for marker in self.iter_markers()]
        keys = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        keys.sort()
        return keys

    def shards_holding(self, keys: np.ndarray) -> list[str]:
        """The committed shards that account for any of the sorted ``keys``."""
        if len(keys) == 0:
            return []
        return [marker["shard"] for marker in self.iter_markers() if _any_in(input_keys(marker), keys)]

    def transient_shards(self) -> list[str]:
        """The committed shards holding rejects of faults that may pass (read errors, killed decoders, timeouts):
        what ``--retry-transient`` takes back."""
        return [marker["shard"] for marker in self.iter_markers() if marker.get("transient")]

    def retire(self, shards: Iterable[str]) -> int:
        """Take committed shards back (their inputs are processed again): a pending record names their files, then
        the marker goes (the shard stops counting at once), then the files. Returns how many were retired."""
        retired = 0
        for shard in shards:
            if not self.store.exists(f"{MARKERS}/{shard}.json"):
                continue
            marker = self.read_marker(shard)
            self.write_json(f"{PENDING}/{shard}.json", {"shard": shard, "files": _named_files(marker)})
            self.store.delete(f"{MARKERS}/{shard}.json")
            self._finish_one(shard)
            retired += 1
        return retired

    def finish_pending(self) -> list[str]:
        """Complete what a crash interrupted: each pending record's files that its shard's marker does not name
        (written before a marker that never came, or replaced or retired after it) are removed, with the
        temporary files of an interrupted write. Nothing is listed or removed that no record names."""
        removed: list[str] = []
        for name in self.store.list(PENDING):
            if name.endswith(".json") and not name.startswith(TMP_PREFIX):
                removed += self._finish_one(name[: -len(".json")])
        for directory in ("", MARKERS, PENDING, *self.tables):
            for name in self.store.list(directory):
                if _TEMPORARY.match(name):
                    self.store.delete(posixpath.join(directory, name))
                    removed.append(posixpath.join(directory, name))
        return removed

    def _finish_one(self, shard: str) -> list[str]:
        record = f"{PENDING}/{shard}.json"
        try:
            files = self.read_json(record).get("files", [])
        except (OSError, ValueError):
            files = []
        marker = f"{MARKERS}/{shard}.json"
        named = set(_named_files(self.read_json(marker))) if self.store.exists(marker) else set()
        removed = []
        for relative in files:
            removed += self.store.delete_temporaries_of(relative)
            if relative not in named:
                self.store.delete(relative)
                removed.append(relative)
        self.store.delete(record)
        return removed

    def commit_shard(
        self,
        shard: str,
        tables: dict[str, list[pa.Table]],
        sources: dict[str, list[str]],
        stats: dict[str, Any],
        options: OutputOptions,
        extra_files: dict[str, str] | None = None,
        inputs: dict[str, list[Any]] | None = None,
        marker_fields: dict[str, Any] | None = None,
        version: str | None = None,
        replacing: list[str] | None = None,
    ) -> dict[str, Any]:
        """Write each table's files and the extra files (path under ``file_dir`` -> text), then the marker (with the
        ``inputs`` it accounts for: ``inputs_of(ids, keys)``, and ``marker_fields``). Idempotent: the same shard
        rewrites the same files. A pending record names the files first, so a crash before the marker leaves nothing
        the next start cannot find. A ``version`` (a shard rewritten after the run: ``replace_shard``) goes into the
        file names and the marker's ``version``, so the new files never overwrite the ones the current marker names;
        ``replacing`` lists the files the new marker no longer names (removed after it)."""
        planned: dict[str, list[str]] = {}
        for table_name, parts in tables.items():
            count_parts = sum(1 for p in parts if p.num_rows)
            planned[table_name] = [f"part-{shard}-{version + '-' if version else ''}{k:03d}.parquet" for k in range(count_parts)]
        if extra_files:
            assert self.file_dir, "extra files need a file_dir"
            planned[self.file_dir] = [safe_relative(name) for name in sorted(extra_files)]
        writing = [f"{table}/{name}" for table, names in planned.items() for name in names]
        self.write_json(f"{PENDING}/{shard}.json", {"shard": shard, "files": sorted(set(writing) | set(replacing or []))})
        rows: dict[str, int] = {}
        for table_name, parts in tables.items():
            rows[table_name] = 0
            for name, part in zip(planned[table_name], (p for p in parts if p.num_rows)):
                self._write_parquet(part, f"{table_name}/{name}", options)
                rows[table_name] += part.num_rows
        for name in planned.get(self.file_dir or "", []) if extra_files else []:
            self.store.write_bytes(f"{self.file_dir}/{name}", extra_files[name].encode("utf-8"))
        faults.inject("commit")  # data written, marker not yet: the window a crash leaves files without a commit
        marker = {
            "shard": shard,
            "fingerprint": self.fingerprint,
            "schema_version": SCHEMA_VERSION,
            "files": planned,
            "rows": rows,
            "sources": {kind: sorted(ids) for kind, ids in sources.items()},
            "stats": stats,
        }
        if inputs is not None:
            marker["inputs"] = inputs
        if version:
            marker["version"] = version
        marker.update(marker_fields or {})
        self.write_json(f"{MARKERS}/{shard}.json", marker)
        for relative in replacing or []:
            if relative not in writing:
                self.store.delete(relative)
        self.store.delete(f"{PENDING}/{shard}.json")
        return marker

    def write_side_table(self, relative: str, table: pa.Table, options: OutputOptions) -> None:
        """A Parquet file of the whole run beside the tables (one of ``side_files``), written whole or not at all."""
        assert relative in self.side_files, relative
        self._write_parquet(table, relative, options)

    def read_side_table(self, relative: str) -> pa.Table | None:
        """A side table this config wrote (None when it is missing or another config's)."""
        if not self.store.exists(relative):
            return None
        table = pq.read_table(self.store.path(relative), filesystem=self.store.fs)
        return table if (table.schema.metadata or {}).get(METADATA_FINGERPRINT, b"").decode() == self.fingerprint else None

    def read_marker(self, shard: str) -> dict[str, Any]:
        return self.read_json(f"{MARKERS}/{shard}.json")

    def read_shard(self, marker: dict[str, Any], table: str, schema: pa.Schema) -> pa.Table:
        """One committed shard's rows of ``table`` (empty when it wrote none)."""
        found = _read(self.store, _files_of(self.store, [marker], table), schema, None)
        return found if found is not None else schema.empty_table()

    def replace_shard(self, old: dict[str, Any], version: str, tables: dict[str, list[pa.Table]], sources: dict[str, list[str]],
                      stats: dict[str, Any], options: OutputOptions, marker_fields: dict[str, Any] | None = None) -> dict[str, Any]:
        """A committed shard rewritten (decisions made after the run, such as audio duplicates): the new files under
        new names, then the marker in one atomic write, then the old files deleted. A crash before the marker leaves
        the old shard whole; after it, the old files go at the next start (the pending record names both)."""
        return self.commit_shard(old["shard"], tables, sources, stats, options, inputs=old.get("inputs"), marker_fields=marker_fields,
                                 version=version, replacing=_named_files(old))

    def _write_parquet(self, table: pa.Table, relative: str, options: OutputOptions) -> None:
        metadata = dict(table.schema.metadata or {})
        metadata[METADATA_SCHEMA_VERSION] = SCHEMA_VERSION.encode()
        metadata[METADATA_FINGERPRINT] = self.fingerprint.encode()
        table = table.replace_schema_metadata(metadata)
        with atomic_file(self.store.uri(self.store.checked(relative))) as handle:
            pq.write_table(table, handle, row_group_size=options.row_group_rows, compression=options.compression)

    def start(
        self,
        sources: list[dict[str, Any]],
        rejects: list[dict[str, Any]],
        run_doc: dict[str, Any],
        overwrite: bool,
        options: OutputOptions,
    ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Prepare the folder for a run over discovered sources and rejects (small inputs, held by the caller):
        shards of inputs no longer found (or changed) are retired, the discovery rejects committed (once), and the
        result is (every input's key, sorted, and the source rows still to process)."""
        for row in (*sources, *rejects):
            row.setdefault("key", source_key_of(row))
        found = np.sort(np.asarray([row["key"] for row in (*sources, *rejects)], dtype=np.int64))
        self.prepare(run_doc, overwrite)
        self.retire(self.shards_holding(stale_keys(found, self.committed_keys())))
        done = self.committed_keys()
        waiting = [r for r in rejects if not _any_in(np.asarray([r["key"]], np.int64), done)]
        if waiting:
            ids = [r["source_id"] for r in waiting]
            stats = {"rejected": {}, "ms_rejected": {}}
            for r in waiting:
                stats["rejected"][r["reason"]] = stats["rejected"].get(r["reason"], 0) + 1
                stats["ms_rejected"][r["reason"]] = 0  # never decoded, no transcript read: duration unknown
            table = pa.Table.from_pylist(waiting, schema=REJECTS_SCHEMA)
            self.commit_shard(shard_id(ids), {"rejects": [table]}, {"kept": [], "rejected": ids}, stats, options,
                              inputs=inputs_of(ids, [r["key"] for r in waiting]))
            done = self.committed_keys()
        return found, [r for r in sources if not _any_in(np.asarray([r["key"]], np.int64), done)]

    def committed_files(self, table: str) -> list[str]:
        """The committed files of ``table``, spelled like the folder (checked against this run's fingerprint)."""
        return _files_of(self.store, self.iter_markers(), table)

    def read_committed(self, table: str, schema: pa.Schema | None = None, columns: list[str] | None = None) -> pa.Table | None:
        return _read(self.store, self.committed_files(table), schema, columns)


def source_key_of(row: dict[str, Any]) -> int:
    """The key of an input row that discovery did not give one (a URL of ``wspsr fetch``): from its id alone."""
    from pipeline.io.sources import source_key

    return source_key(row["source_id"], "")


def _named_files(marker: dict[str, Any]) -> list[str]:
    return sorted(f"{table}/{name}" for table, names in marker.get("files", {}).items() for name in names)


def _any_in(values: np.ndarray, sorted_keys: np.ndarray) -> bool:
    if len(values) == 0 or len(sorted_keys) == 0:
        return False
    at = np.minimum(np.searchsorted(sorted_keys, values), len(sorted_keys) - 1)
    return bool(np.any(sorted_keys[at] == values))


def key_counts(found: np.ndarray, committed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(every distinct key, how often the inputs have it, how often the committed shards name it)."""
    keys = np.union1d(found, committed)
    f_keys, f_counts = np.unique(found, return_counts=True)
    c_keys, c_counts = np.unique(committed, return_counts=True)
    in_found = np.zeros(len(keys), dtype=np.int64)
    in_committed = np.zeros(len(keys), dtype=np.int64)
    in_found[np.searchsorted(keys, f_keys)] = f_counts
    in_committed[np.searchsorted(keys, c_keys)] = c_counts
    return keys, in_found, in_committed


def stale_keys(found: np.ndarray, committed: np.ndarray) -> np.ndarray:
    """The committed keys whose shards must be taken back, sorted: inputs no longer found (removed, or changed, which
    gives them another key), and inputs committed a different number of times than they are found (an interrupted
    run over repeated inputs)."""
    keys, in_found, in_committed = key_counts(found, committed)
    return keys[(in_committed > 0) & (in_committed != in_found)]


def _files_of(store: Store, markers: Iterable[dict[str, Any]], table: str) -> list[str]:
    return sorted(store.uri(f"{table}/{name}") for marker in markers for name in marker["files"].get(table, []))


def _read(store: Store, files: list[str], schema: pa.Schema | None, columns: list[str] | None) -> pa.Table | None:
    if not files:
        return None
    paths = [file if store.local else resolve(file)[1] for file in files]
    return pq.read_table(paths, filesystem=store.fs, schema=schema, columns=columns)


def _store_with_markers(root: str | Path) -> tuple[Store, Iterator[dict[str, Any]]]:
    """The folder and its markers, read one at a time as the caller goes (only file names are kept)."""
    store = Store(root)
    names = marker_names(store)
    if not names:
        raise FileNotFoundError(f"{store.uri()} is not a wspsr output folder with committed shards (no {MARKERS}/*.json)")
    return store, (json.loads(store.read_bytes(f"{MARKERS}/{name}").decode("utf-8")) for name in names)


def committed_markers(root: str | Path) -> Iterator[dict[str, Any]]:
    """The markers of a wspsr output folder, read one at a time (``FileNotFoundError`` when it has none)."""
    return _store_with_markers(root)[1]


def iter_committed(root: str | Path, table: str, columns: list[str] | None = None, batch_rows: int = 65_536) -> Iterator[pa.RecordBatch]:
    """The committed rows of ``table`` in record batches, one file at a time: for scans that must not hold the
    table (a report over millions of rows)."""
    store, markers = _store_with_markers(root)
    for file in _files_of(store, markers, table):
        path = file if store.local else resolve(file)[1]
        with store.fs.open_input_file(path) as handle:
            yield from pq.ParquetFile(handle).iter_batches(batch_size=batch_rows, columns=columns)


def committed_files(root: str | Path, table: str) -> list[str]:
    """The files of ``table`` that the markers of a wspsr output folder (a path or a URI) confirm, spelled like the
    folder: what a reader may read while a job is still running, or after one crashed (files without a marker
    are not data yet, and ``.tmp-`` files never are)."""
    store, markers = _store_with_markers(root)
    return _files_of(store, markers, table)


def load_corpus(root: str | Path, streaming: bool = False, decode_audio: bool | None = None) -> Any:
    """The committed windows of a ``wspsr corpus`` folder (a path or a URI) as a Hugging Face ``datasets``
    dataset (a ``datasets.Dataset``; with ``streaming`` an ``IterableDataset`` read file by file): only the files
    the markers name, whatever else the folder holds. The files carry their features, so ``audio`` is an ``Audio``
    column at 16 kHz. ``datasets`` decodes audio with ``torchcodec``; without it (``decode_audio`` None and
    torchcodec missing, or False) the column is ``Audio(decode=False)``: ``{"bytes": FLAC, "path": ...}``, which
    ``soundfile.read(io.BytesIO(row["audio"]["bytes"]))`` decodes. ``datasets`` is not a dependency of wspsr:
    ``pip install datasets``."""
    import importlib.util

    try:
        import datasets
    except ImportError as exc:
        raise ImportError("load_corpus needs Hugging Face datasets: pip install datasets (the file list alone: "
                          "committed_files(folder, 'corpus'))") from exc
    files = committed_files(root, "corpus")
    if not files:
        raise FileNotFoundError(f"{root} has no committed corpus files")
    loaded = datasets.load_dataset("parquet", data_files=files, split="train", streaming=streaming)
    if decode_audio is None:
        decode_audio = importlib.util.find_spec("torchcodec") is not None
    return loaded if decode_audio else loaded.cast_column("audio", datasets.Audio(sampling_rate=16000, decode=False))


def read_committed(root: str | Path, table: str, columns: list[str] | None = None, schema: pa.Schema | None = None) -> pa.Table | None:
    """The committed rows of ``table`` in a wspsr output folder as one table (None when no shard holds any)."""
    store, markers = _store_with_markers(root)
    return _read(store, _files_of(store, markers, table), schema, columns)


def without_keys(batch: pa.Table, keys: np.ndarray) -> pa.Table:
    """The rows whose ``key`` is not among the sorted ``keys`` (committed work a rerun skips)."""
    if len(keys) == 0 or batch.num_rows == 0:
        return batch
    data = batch["key"].to_numpy(zero_copy_only=False)
    at = np.minimum(np.searchsorted(keys, data), len(keys) - 1)
    return batch.filter(pa.array(keys[at] != data))


def split_by_bytes(table: pa.Table, sizes: list[int], max_bytes: int) -> list[pa.Table]:
    """Consecutive slices of ``table`` of at most ``max_bytes`` each by the given row sizes (at least one row)."""
    if table.num_rows == 0:
        return [table]
    parts, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        if i > start and total + size > max_bytes:
            parts.append(table.slice(start, i - start))
            start, total = i, 0
        total += size
    parts.append(table.slice(start))
    return parts
