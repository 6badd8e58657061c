"""The stage contract.

A stage is a plain function ``fn(batch, options) -> batch`` over a ``pyarrow.Table`` of source rows, with a
frozen dataclass of options. It sees only rows that no earlier stage rejected; it may add columns, and it
rejects a row by setting ``reject_reason``/``reject_detail`` on it (``map_rows`` does this from a returned
``Reject``). Model stages also have ``setup(options) -> state``, run once per worker; their ``fn`` then takes
``(batch, options, state)``. Stages never import Ray: ``pipeline.run.runner`` decides where they run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import faults
from pipeline.limits import TimeLimitExceeded, time_limit
from pipeline.schema import STREAM_COLUMNS, RejectReason, table_from_rows


@dataclass(frozen=True)
class Reject:
    reason: RejectReason
    detail: str
    duplicate_of: str | None = None
    transient: bool = False  # a fault that may pass (I/O error, a killed decoder, a timeout under load): retried first


@dataclass(frozen=True)
class Stage:
    """A stage as the runner sees it: the function, its options, and what it needs to run."""

    name: str
    fn: Callable[..., pa.Table]
    options: Any
    setup: Callable[[Any], Any] | None = None  # model stages: load once per worker
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    concurrency: int | None = None  # model stages: number of actors; task stages: most tasks at once (None: Ray decides)
    batch_size: int | None = None  # rows per call; None: a whole block
    memory_gb: float | None = None  # memory a model actor (or a task of a task stage) reserves; None: the runner's default
    timeout_s: float | None = None  # wall clock per row (a batch gets its rows' share); None: no limit

    @property
    def is_model_stage(self) -> bool:
        return self.setup is not None


def map_rows(batch: pa.Table, fn: Callable[[dict[str, Any]], dict[str, Any] | Reject]) -> pa.Table:
    """Apply a per-row function; a returned ``Reject`` marks that row rejected (its other columns unchanged), and so
    does an exception the function raises on a row (``internal_error``: a bug or a library's limit met by one input
    is that input's reject, the other rows go on). Recordings (``large_binary`` columns such as ``pcm``) reach the
    function as read-only views of the batch's own buffers and leave it without a copy: a stage that passes a
    recording on, or reads it, costs no memory of its size."""
    recordings = [field.name for field in batch.schema if pa.types.is_large_binary(field.type)]
    given = {name: _views(batch[name]) for name in recordings}
    rows = []
    for i, row in enumerate(batch.drop_columns(recordings).to_pylist() if recordings else batch.to_pylist()):
        row.update({name: views[i] for name, views in given.items()})
        try:
            result = fn(row)
        except Exception as exc:
            result = internal_error(exc)
        if isinstance(result, Reject):
            detail = f"{result.detail} (a fault that may pass, retried; --retry-transient tries again)" if result.transient else result.detail
            row = dict(row, reject_reason=result.reason.value, reject_detail=detail)
            if result.duplicate_of is not None:
                row["duplicate_of"] = result.duplicate_of
            if result.transient:
                row["reject_transient"] = True
            rows.append(row)
        else:
            rows.append(result)
    return _table_of(rows, batch, given) if rows else batch


RECORDINGS = tuple(name for name, type_ in STREAM_COLUMNS.items() if pa.types.is_large_binary(type_))


def _views(column: pa.ChunkedArray) -> list[memoryview | None]:
    """Each value of a binary column as a read-only view of the column's buffer (no copy)."""
    views: list[memoryview | None] = []
    for chunk in column.chunks:
        _, offsets, data = chunk.buffers()
        bounds = np.frombuffer(offsets, dtype=np.int64)[chunk.offset : chunk.offset + len(chunk) + 1]
        whole = memoryview(data) if data is not None else memoryview(b"")
        valid = chunk.is_valid().to_numpy(zero_copy_only=False)
        views += [whole[bounds[i] : bounds[i + 1]] if valid[i] else None for i in range(len(chunk))]
    return views


def _table_of(rows: list[dict[str, Any]], batch: pa.Table, given: dict[str, list[memoryview | None]]) -> pa.Table:
    """The output rows as a table; a recording a row passed on unchanged is the input's column (shared, not copied),
    and one a row made anew is wrapped where it lies (a chunk of one value each)."""
    recordings = [name for name in RECORDINGS if any(name in row for row in rows)]
    recordings += [name for name in given if name not in recordings]
    if not recordings:
        return table_from_rows(rows)
    table = table_from_rows([{k: v for k, v in row.items() if k not in recordings} for row in rows])
    for name in recordings:
        values = [row.get(name) for row in rows]
        original = given.get(name)
        if original is not None and all(value is view for value, view in zip(values, original)) and len(values) == len(original):
            column = batch[name]
        else:
            column = pa.chunked_array([_one_value(value) for value in values], type=pa.large_binary())
        table = table.append_column(name, column)
    return table


def _one_value(value: Any) -> pa.Array:
    if value is None:
        return pa.nulls(1, pa.large_binary())
    data = pa.py_buffer(value)
    offsets = pa.py_buffer(np.array([0, data.size], dtype=np.int64))
    return pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, data])


def internal_error(exc: BaseException) -> Reject:
    """The reject of a row a stage raised on: the exception's type and message (the stage is stamped on the row)."""
    message = " ".join(str(exc).split())[:500] or "(no message)"
    return Reject(RejectReason.INTERNAL_ERROR, f"{type(exc).__name__}: {message}")


def active_mask(batch: pa.Table) -> pa.ChunkedArray | None:
    if "reject_reason" not in batch.column_names:
        return None
    return pc.is_null(batch["reject_reason"])


def active_rows(batch: pa.Table) -> pa.Table:
    """The rows no stage has rejected."""
    mask = active_mask(batch)
    return batch if mask is None else batch.filter(mask)


def rejected_rows(batch: pa.Table) -> pa.Table:
    """The rows some stage has rejected."""
    mask = active_mask(batch)
    return batch.slice(0, 0) if mask is None else batch.filter(pc.invert(mask))


def apply_stage(stage: Stage, batch: pa.Table, state: Any = None) -> pa.Table:
    """Run one stage on the still-active rows of a batch; rejected rows pass through untouched."""
    mask = active_mask(batch)
    if mask is None or pc.all(mask).as_py():  # no rejected row: no filtering, which would copy every column
        active, passed = batch, None
    elif not pc.any(mask).as_py():
        return batch
    else:
        active, passed = batch.filter(mask), batch.filter(pc.invert(mask))
    out = _stamp_stage(_isolated(stage, active, state), stage.name) if active.num_rows else active
    if passed is None or passed.num_rows == 0:
        return out
    if out.num_rows == 0:
        return passed
    return pa.concat_tables([out, passed], promote_options="permissive")


def _isolated(stage: Stage, batch: pa.Table, state: Any) -> pa.Table:
    """The stage over a batch; if it raises (or runs past its rows' time), over each row alone, and a row that
    raises alone is rejected as ``internal_error`` (one that runs past ``timeout_s`` as ``stage_timeout``): one input
    that breaks a stage never takes its batch, its block or the run with it."""
    try:
        with time_limit(stage.timeout_s * batch.num_rows if stage.timeout_s else None):
            return _call(stage, batch, state)
    except (Exception, TimeLimitExceeded) as exc:
        if batch.num_rows == 1:
            return _rejected(batch, exc, stage)
    parts = []
    for i in range(batch.num_rows):
        row = batch.slice(i, 1)
        try:
            with time_limit(stage.timeout_s):
                parts.append(_call(stage, row, state))
        except (Exception, TimeLimitExceeded) as exc:
            parts.append(_rejected(row, exc, stage))
    return pa.concat_tables(parts, promote_options="permissive")


def _rejected(row: pa.Table, exc: BaseException, stage: Stage) -> pa.Table:
    if isinstance(exc, TimeLimitExceeded):
        reject = Reject(RejectReason.STAGE_TIMEOUT, f"{stage.name} took longer than its limit of {stage.timeout_s:g} s on this source")
    else:
        reject = internal_error(exc)
    values = dict(row.to_pylist()[0], reject_reason=reject.reason.value, reject_detail=reject.detail)
    return table_from_rows([values])


def _call(stage: Stage, batch: pa.Table, state: Any) -> pa.Table:
    faults.inject(f"stage:{stage.name}")
    return stage.fn(batch, stage.options, state) if stage.is_model_stage else stage.fn(batch, stage.options)


def _stamp_stage(table: pa.Table, name: str) -> pa.Table:
    if "reject_reason" not in table.column_names:
        return table
    rejected_here = pc.is_valid(table["reject_reason"])
    if "reject_stage" in table.column_names:
        stamped = pc.if_else(pc.and_(rejected_here, pc.is_null(table["reject_stage"])), name, table["reject_stage"])
        return table.set_column(table.column_names.index("reject_stage"), "reject_stage", stamped)
    stamped = pc.if_else(rejected_here, pa.scalar(name), pa.scalar(None, pa.string()))
    return table.append_column("reject_stage", stamped)


def run_stages(stages: list[Stage], batch: pa.Table) -> pa.Table:
    """Run stages in order in this process (tests, debugging); the Ray runner does the same per block."""
    states = [stage.setup(stage.options) if stage.setup else None for stage in stages]
    for stage, state in zip(stages, states):
        batch = apply_stage(stage, batch, state)
    return batch
