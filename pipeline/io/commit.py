"""Output commit: shards are written under temporary names, renamed into place, then confirmed by a marker.

Only shards with a marker exist for readers and for the summary: ``committed_files`` and ``read_committed`` are
the one way anything (jobs, eval, the report, tests) reads a wspsr output folder. A marker names its files, its row counts,
the config fingerprint and the source ids it accounts for, so a rerun skips those sources, and files left by
a crash (temporary names, shards without a marker) are removed at the next start. Shard names derive from the
source ids they hold, so a retried task rewrites the same files instead of adding new ones.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import faults
from pipeline.schema import METADATA_FINGERPRINT, METADATA_SCHEMA_VERSION, REJECTS_SCHEMA, SCHEMA_VERSION
from pipeline.io.storage import TMP_PREFIX, Store, atomic_file, join, resolve, write_atomically

MARKERS = "_commits"
RUN_FILE = "run.json"


class OutputError(RuntimeError):
    pass


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


class OutputDir:
    """One job's output folder (a local path or a URI such as ``s3://bucket/prefix``): ``<table>/part-*.parquet``
    files, ``_commits/*.json`` markers, ``run.json``."""

    def __init__(self, root: str | Path, tables: tuple[str, ...], fingerprint: str, file_dir: str | None = None, side_files: tuple[str, ...] = ()):
        self.store = Store(root)
        self.location = self.store.uri()  # how messages name the folder
        self.root = Path(self.store.base) if self.store.local else None  # jobs that need local files (fetch) use this
        self.tables = tables
        self.fingerprint = fingerprint
        self.file_dir = file_dir  # a folder of per-source files (subtitles), committed with the shards that write them
        self.side_files = side_files  # files of the whole run beside the tables (written by write_side_table)

    def read_json(self, relative: str) -> Any:
        return json.loads(self.store.read_bytes(relative).decode("utf-8"))

    def write_json(self, relative: str, doc: Any) -> None:
        self.store.write_bytes(relative, json_bytes(doc))

    def prepare(self, run_doc: dict[str, Any], overwrite: bool) -> None:
        """Refuse a folder written with another config (unless ``overwrite``), then clear crash leftovers."""
        if self.store.exists(RUN_FILE):
            previous = self.read_json(RUN_FILE).get("fingerprint")
            if previous != self.fingerprint:
                if not overwrite:
                    raise OutputError(
                        f"{self.location} holds output of a different config (fingerprint {previous}, this run "
                        f"{self.fingerprint}); pass --overwrite to replace it or choose another --out"
                    )
                self.clear()
        elif overwrite:
            self.clear()
        for name in (*self.tables, MARKERS):
            self.store.make_dirs(name)
        self.write_json(RUN_FILE, dict(run_doc, fingerprint=self.fingerprint))
        self.remove_uncommitted()

    def clear(self) -> None:
        for name in (*self.tables, MARKERS, *([self.file_dir] if self.file_dir else [])):
            self.store.delete_dir(name)
        for name in (RUN_FILE, "summary.json", *self.side_files):
            self.store.delete(name)

    def markers(self) -> list[dict[str, Any]]:
        return list(self.iter_markers())

    def iter_markers(self) -> Iterator[dict[str, Any]]:
        """The committed markers one at a time (checked against this run's fingerprint): never all in memory."""
        for name in marker_names(self.store):
            marker = self.read_json(f"{MARKERS}/{name}")
            if marker.get("fingerprint") != self.fingerprint:
                raise OutputError(f"marker {join(self.location, MARKERS, name)} belongs to another config ({marker.get('fingerprint')})")
            yield marker

    def committed_refs(self) -> np.ndarray:
        """The refs (``pipeline.io.sources``) of every committed source, sorted: 8 bytes a source, the compact index
        a rerun skips committed work by."""
        parts = [np.asarray(marker.get("refs", []), dtype=np.int64) for marker in self.iter_markers()]
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

    def remove_uncommitted(self) -> list[str]:
        """Delete temporary files and data files that no marker names (a crash between write and commit)."""
        committed = {
            f"{table}/{name}" for marker in self.iter_markers() for table, names in marker["files"].items() for name in names
        }
        removed = []
        for directory in ("", MARKERS, *self.tables):
            for name in self.store.list(directory):
                if name.startswith(TMP_PREFIX):
                    removed.append(posixpath.join(directory, name))
        for table in self.tables:
            for name in self.store.list(table):
                if name.endswith(".parquet") and not name.startswith(TMP_PREFIX) and f"{table}/{name}" not in committed:
                    removed.append(f"{table}/{name}")
        if self.file_dir:
            for name in self.store.list(self.file_dir, recursive=True):
                if posixpath.basename(name).startswith(TMP_PREFIX) or f"{self.file_dir}/{name}" not in committed:
                    removed.append(f"{self.file_dir}/{name}")
        for relative in removed:
            self.store.delete(relative)
        return removed

    def committed_sources(self) -> set[str]:
        done: set[str] = set()
        for marker in self.iter_markers():
            for ids in marker["sources"].values():
                done.update(ids)
        return done

    def commit_shard(
        self,
        shard: str,
        tables: dict[str, list[pa.Table]],
        sources: dict[str, list[str]],
        stats: dict[str, Any],
        options: OutputOptions,
        extra_files: dict[str, str] | None = None,
        refs: list[int] | None = None,
        marker_fields: dict[str, Any] | None = None,
        version: str | None = None,
    ) -> dict[str, Any]:
        """Write each table's files and the extra files (path under ``file_dir`` -> text), then the marker (with the
        sources' ``refs`` when given, and ``marker_fields``). Idempotent: the same shard rewrites the same files.
        A ``version`` (a shard rewritten after the run: ``replace_shard``) goes into the file names and the marker's
        ``version``, so the new files never overwrite the ones the current marker names."""
        files: dict[str, list[str]] = {}
        rows: dict[str, int] = {}
        for table_name, parts in tables.items():
            files[table_name] = []
            rows[table_name] = 0
            for k, part in enumerate(p for p in parts if p.num_rows):
                name = f"part-{shard}-{version + '-' if version else ''}{k:03d}.parquet"
                self._write_parquet(part, f"{table_name}/{name}", options)
                files[table_name].append(name)
                rows[table_name] += part.num_rows
        if extra_files:
            assert self.file_dir, "extra files need a file_dir"
            files[self.file_dir] = []
            for name, text in sorted(extra_files.items()):
                self.store.write_bytes(f"{self.file_dir}/{name}", text.encode("utf-8"))
                files[self.file_dir].append(name)
        faults.inject("commit")  # data written, marker not yet: the window a crash leaves files without a commit
        marker = {
            "shard": shard,
            "fingerprint": self.fingerprint,
            "schema_version": SCHEMA_VERSION,
            "files": files,
            "rows": rows,
            "sources": {kind: sorted(ids) for kind, ids in sources.items()},
            "stats": stats,
        }
        if refs is not None:
            marker["refs"] = sorted(refs)
        if version:
            marker["version"] = version
        marker.update(marker_fields or {})
        self.write_json(f"{MARKERS}/{shard}.json", marker)
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
        the old shard whole (the new files are unnamed leftovers); after it, the old files are (both are removed at
        the next start)."""
        marker = self.commit_shard(old["shard"], tables, sources, stats, options, refs=old.get("refs"), marker_fields=marker_fields, version=version)
        for table, names in old["files"].items():
            for name in set(names) - set(marker["files"].get(table, [])):
                self.store.delete(f"{table}/{name}")
        return marker

    def _write_parquet(self, table: pa.Table, relative: str, options: OutputOptions) -> None:
        metadata = dict(table.schema.metadata or {})
        metadata[METADATA_SCHEMA_VERSION] = SCHEMA_VERSION.encode()
        metadata[METADATA_FINGERPRINT] = self.fingerprint.encode()
        table = table.replace_schema_metadata(metadata)
        with atomic_file(self.store.uri(relative)) as handle:
            pq.write_table(table, handle, row_group_size=options.row_group_rows, compression=options.compression)

    def start(
        self,
        sources: list[dict[str, Any]],
        rejects: list[dict[str, Any]],
        run_doc: dict[str, Any],
        overwrite: bool,
        options: OutputOptions,
    ) -> tuple[set[str], set[str], list[dict[str, Any]]]:
        """Prepare the folder for a run over discovered sources and rejects: commit the discovery rejects (once),
        and return (every source id, those already committed, the source rows still to process)."""
        expected = {r["source_id"] for r in sources} | {r["source_id"] for r in rejects}
        self.prepare(run_doc, overwrite)
        done = self.committed_sources()
        if rejects and not {r["source_id"] for r in rejects} <= done:
            ids = [r["source_id"] for r in rejects]
            stats = {"rejected": {}, "ms_rejected": {}}
            for r in rejects:
                stats["rejected"][r["reason"]] = stats["rejected"].get(r["reason"], 0) + 1
                stats["ms_rejected"][r["reason"]] = 0  # never decoded, no transcript read: duration unknown
            table = pa.Table.from_pylist(rejects, schema=REJECTS_SCHEMA)
            self.commit_shard(shard_id(ids), {"rejects": [table]}, {"kept": [], "rejected": ids}, stats, options)
        return expected, done, [r for r in sources if r["source_id"] not in done]

    def committed_files(self, table: str) -> list[str]:
        """The committed files of ``table``, spelled like the folder (checked against this run's fingerprint)."""
        return _files_of(self.store, self.iter_markers(), table)

    def read_committed(self, table: str, schema: pa.Schema | None = None, columns: list[str] | None = None) -> pa.Table | None:
        return _read(self.store, self.committed_files(table), schema, columns)


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


def without_refs(batch: pa.Table, refs: np.ndarray) -> pa.Table:
    """The rows whose ``ref`` is not among the sorted ``refs`` (committed work a rerun skips)."""
    if len(refs) == 0 or batch.num_rows == 0:
        return batch
    data = batch["ref"].to_numpy(zero_copy_only=False)
    at = np.minimum(np.searchsorted(refs, data), len(refs) - 1)
    return batch.filter(pa.array(refs[at] != data))


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
