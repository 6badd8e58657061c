"""Output commit: shards are written under temporary names, renamed into place, then confirmed by a marker.

Only shards with a marker exist for readers and for the summary. A marker names its files, its row counts,
the config fingerprint and the source ids it accounts for, so a rerun skips those sources, and files left by
a crash (temporary names, shards without a marker) are removed at the next start. Shard names derive from the
source ids they hold, so a retried task rewrites the same files instead of adding new ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import faults
from pipeline.schema import METADATA_FINGERPRINT, METADATA_SCHEMA_VERSION, REJECTS_SCHEMA, SCHEMA_VERSION

MARKERS = "_commits"
RUN_FILE = "run.json"
TMP_PREFIX = ".tmp-"


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


def _fsync_replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, final)


def write_json_atomically(path: Path, doc: Any) -> None:
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    _fsync_replace(tmp, path)


class OutputDir:
    """One job's output folder: ``<table>/part-*.parquet`` files, ``_commits/*.json`` markers, ``run.json``."""

    def __init__(self, root: str | Path, tables: tuple[str, ...], fingerprint: str, file_dir: str | None = None):
        self.root = Path(root)
        self.tables = tables
        self.fingerprint = fingerprint
        self.file_dir = file_dir  # a folder of per-source files (subtitles), committed with the shards that write them

    @property
    def markers_dir(self) -> Path:
        return self.root / MARKERS

    def prepare(self, run_doc: dict[str, Any], overwrite: bool) -> None:
        """Refuse a folder written with another config (unless ``overwrite``), then clear crash leftovers."""
        run_file = self.root / RUN_FILE
        if run_file.exists():
            previous = json.loads(run_file.read_text(encoding="utf-8")).get("fingerprint")
            if previous != self.fingerprint:
                if not overwrite:
                    raise OutputError(
                        f"{self.root} holds output of a different config (fingerprint {previous}, this run "
                        f"{self.fingerprint}); pass --overwrite to replace it or choose another --out"
                    )
                self.clear()
        elif overwrite:
            self.clear()
        for name in (*self.tables, MARKERS):
            (self.root / name).mkdir(parents=True, exist_ok=True)
        write_json_atomically(run_file, dict(run_doc, fingerprint=self.fingerprint))
        self.remove_uncommitted()

    def clear(self) -> None:
        for name in (*self.tables, MARKERS, *([self.file_dir] if self.file_dir else [])):
            shutil.rmtree(self.root / name, ignore_errors=True)
        for name in (RUN_FILE, "summary.json"):
            (self.root / name).unlink(missing_ok=True)

    def markers(self) -> list[dict[str, Any]]:
        found = []
        for path in sorted(self.markers_dir.glob("*.json")):
            marker = json.loads(path.read_text(encoding="utf-8"))
            if marker.get("fingerprint") != self.fingerprint:
                raise OutputError(f"marker {path} belongs to another config ({marker.get('fingerprint')})")
            found.append(marker)
        return found

    def remove_uncommitted(self) -> list[Path]:
        """Delete temporary files and data files that no marker names (a crash between write and commit)."""
        committed = {
            f"{table}/{name}" for marker in self.markers() for table, names in marker["files"].items() for name in names
        }
        removed = []
        for directory in (self.root, self.markers_dir, *(self.root / t for t in self.tables)):
            for path in directory.glob(f"{TMP_PREFIX}*"):
                path.unlink(missing_ok=True)
                removed.append(path)
        for table in self.tables:
            for path in (self.root / table).glob("*.parquet"):
                if f"{table}/{path.name}" not in committed:
                    path.unlink(missing_ok=True)
                    removed.append(path)
        if self.file_dir and (self.root / self.file_dir).is_dir():
            for path in sorted((self.root / self.file_dir).rglob("*")):
                name = path.relative_to(self.root / self.file_dir).as_posix()
                if path.is_file() and (path.name.startswith(TMP_PREFIX) or f"{self.file_dir}/{name}" not in committed):
                    path.unlink(missing_ok=True)
                    removed.append(path)
        return removed

    def committed_sources(self) -> set[str]:
        done: set[str] = set()
        for marker in self.markers():
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
    ) -> dict[str, Any]:
        """Write each table's files and the extra files (path under ``file_dir`` -> text), then the marker.
        Idempotent: the same shard rewrites the same files."""
        files: dict[str, list[str]] = {}
        rows: dict[str, int] = {}
        for table_name, parts in tables.items():
            files[table_name] = []
            rows[table_name] = 0
            for k, part in enumerate(p for p in parts if p.num_rows):
                name = f"part-{shard}-{k:03d}.parquet"
                self._write_parquet(part, self.root / table_name / name, options)
                files[table_name].append(name)
                rows[table_name] += part.num_rows
        if extra_files:
            assert self.file_dir, "extra files need a file_dir"
            files[self.file_dir] = []
            for name, text in sorted(extra_files.items()):
                final = self.root / self.file_dir / name
                final.parent.mkdir(parents=True, exist_ok=True)
                tmp = final.with_name(f"{TMP_PREFIX}{final.name}")
                tmp.write_text(text, encoding="utf-8")
                _fsync_replace(tmp, final)
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
        write_json_atomically(self.markers_dir / f"{shard}.json", marker)
        return marker

    def _write_parquet(self, table: pa.Table, final: Path, options: OutputOptions) -> None:
        metadata = dict(table.schema.metadata or {})
        metadata[METADATA_SCHEMA_VERSION] = SCHEMA_VERSION.encode()
        metadata[METADATA_FINGERPRINT] = self.fingerprint.encode()
        table = table.replace_schema_metadata(metadata)
        tmp = final.with_name(f"{TMP_PREFIX}{final.name}")
        try:
            pq.write_table(table, tmp, row_group_size=options.row_group_rows, compression=options.compression)
            _fsync_replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

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

    def committed_files(self, table: str) -> list[Path]:
        return sorted(self.root / table / name for marker in self.markers() for name in marker["files"].get(table, []))


def read_committed_files(root: str | Path, table: str) -> list[Path]:
    """The files of ``table`` that the markers of a wspsr output folder confirm: what a reader may read while a
    job is still running, or after one crashed (files without a marker are not data yet)."""
    root = Path(root)
    markers = sorted((root / MARKERS).glob("*.json"))
    if not markers:
        raise FileNotFoundError(f"{root} is not a wspsr output folder with committed shards (no {MARKERS}/*.json)")
    files = []
    for path in markers:
        names = json.loads(path.read_text(encoding="utf-8"))["files"].get(table, [])
        files += [root / table / name for name in names]
    return sorted(files)


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
