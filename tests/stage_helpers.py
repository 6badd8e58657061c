"""Small helpers for reading stage outputs in tests."""

import pyarrow as pa


def reasons_of(table: pa.Table) -> dict[str, str | None]:
    rows = table.to_pylist()
    return {r["source_id"]: r.get("reject_reason") for r in rows}
