"""Reading what a job committed, the way a user must: only shards a marker names (``pipeline.io.commit``), and the
accounting invariant checked from the files themselves."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.io.commit import read_committed


def committed_rows(out: Path, table: str, sort: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Rows of the shards that have a marker, the only ones a reader may trust; sorted by ``sort`` columns."""
    found = read_committed(out, table)
    if found is None:
        return []
    rows = found.to_pylist()
    return sorted(rows, key=lambda r: tuple("" if r[c] is None else r[c] for c in sort)) if sort else rows


def committed_table(out: Path, table: str, columns: list[str] | None = None) -> pa.Table:
    found = read_committed(out, table, columns=columns)
    assert found is not None, f"{out} has no committed {table} rows"
    return found


def corpus_rows(out: Path) -> list[dict[str, Any]]:
    return committed_rows(out, "corpus", ("segment_id",))


def reject_rows(out: Path) -> list[dict[str, Any]]:
    return sorted(committed_rows(out, "rejects"), key=lambda r: (r["source_id"], r["reason"], r["start_ms"] or 0))


def reasons_of(table: pa.Table) -> dict[str, str | None]:
    """``{source_id: reject_reason}`` of a stage's output batch."""
    return {r["source_id"]: r.get("reject_reason") for r in table.to_pylist()}


def markers(out: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted((out / "_commits").glob("*.json")) if not path.name.startswith(".tmp-")]


def assert_accounted(out: Path, output_table: str, foreign: set[str] = frozenset()) -> dict:
    """Check the invariant from the files themselves (not only the summary); return the summary. ``foreign``: files
    (relative paths) a user put into the folder, which the job must leave alone."""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["accounting"]["ok"], summary["accounting"]
    kept = {row["source_id"] for row in committed_rows(out, output_table)}
    rejected = Counter(row["source_id"] for row in committed_rows(out, "rejects") if row["scope"] == "source")
    assert all(n == 1 for n in rejected.values()), f"sources rejected twice: {[k for k, n in rejected.items() if n > 1]}"
    assert not kept & set(rejected), f"sources both kept and rejected: {kept & set(rejected)}"
    counts = summary["inputs"]  # every job's summary has the same shape
    assert len(rejected) == counts["rejected"]
    assert counts["in"] == len(set(rejected)) + counts["kept"]
    if output_table == "corpus":
        assert len(kept) == counts["kept"]
    assert not list(out.rglob(".tmp-*")), "temporary files left behind"
    # every data file on disk is named by a marker (nothing half-committed is visible)
    named = {f"{t}/{n}" for m in markers(out) for t, ns in m["files"].items() for n in ns}
    on_disk = {p.relative_to(out).as_posix() for p in out.glob("*/*.parquet")} - set(foreign)
    assert on_disk <= named, f"uncommitted files: {on_disk - named}"
    return summary
