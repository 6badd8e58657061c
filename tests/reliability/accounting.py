"""The invariant every reliability case asserts: each input source ends in exactly one place, the output (as the
parent of at least one row) or the rejects table (one source-level row), and the summary says so."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq


def _markers(out: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in (out / "_commits").glob("*.json")]


def committed_rows(out: Path, table: str) -> list[dict]:
    """Rows of the shards that have a marker, the only ones a reader may trust."""
    files = [out / table / name for marker in _markers(out) for name in marker["files"].get(table, [])]
    return [row for path in sorted(files) for row in pq.read_table(path).to_pylist()]


def assert_accounted(out: Path, output_table: str) -> dict:
    """Check the invariant from the files themselves (not only the summary); return the summary."""
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
    named = {f"{t}/{n}" for m in _markers(out) for t, ns in m["files"].items() for n in ns}
    on_disk = {p.relative_to(out).as_posix() for p in out.glob("*/*.parquet")}
    assert on_disk <= named, f"uncommitted files: {on_disk - named}"
    return summary

