"""The Ray Data side of every job: jobs describe stages, this turns them into a plan.

Plain stages run as Ray tasks over whole blocks of source rows (consecutive ones fuse, so decoded audio never
leaves its worker); model stages run in actor pools that load their model once (one actor on CPUs; with GPUs an
autoscaling pool up to one actor per GPU, ``pool_bounds``). Global steps (dedup) group rows by key across the dataset with Ray's
``groupby``. The sink commits each block as a shard and returns its marker. Locally Ray starts in-process;
``address`` (or ``RAY_ADDRESS``) joins an existing cluster.

Not yet flat in the number of sources: the sources start as a table on the driver (``source``), the markers the
commit yields hold each shard's source ids, and dedup's pairs and clusters are resolved on the driver.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa

from pipeline.run.progress import ProgressLine
from pipeline.run.timing import STAGE_TIMES_ENV, cpu_seconds, record_time, timed
from pipeline.stage import Stage, apply_stage

log = logging.getLogger("wspsr")


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # an existing cluster ("auto", "ray://host:10001"); default $RAY_ADDRESS or local
    num_cpus: int | None = None  # local Ray only: CPUs to use (default: all)
    num_gpus: int | None = None  # local Ray only: GPUs to declare (default: those Ray detects)
    sources_per_block: int = 16  # sources per task and per committed shard where audio is decoded
    keys_per_block: int = 2_000_000  # rows (16 bytes each) per partition of the corpus job's global dedup step
    # Actors per model stage. None: one on a CPU-only cluster; on GPUs an autoscaling pool from one actor up to
    # one per GPU (per model_gpus of a GPU), so a job uses every GPU the cluster has. A number: a fixed pool.
    model_actors: int | None = None
    model_actors_max: int | None = None  # GPU pools: the most actors (None: the GPUs counted at start / model_gpus)
    model_gpus: float | None = None  # GPUs per model actor (0.5: two small models share one); default 1 on GPUs, else 0
    model_memory_gb: float | None = None  # memory reserved per model actor; None: from the model's size (models.py)
    progress: bool = True  # progress: Ray Data's bars on a terminal, one line every progress_interval_s in a log
    progress_interval_s: float = 10.0
    verbose: bool = False  # Ray's own logs and progress dumps, and a line per committed shard (--verbose)
    preserve_order: bool = False  # rows in read order (deterministic, slower to stream): what training needs
    dashboard: bool = False  # local Ray only: start the dashboard (Ray Train's state monitoring needs it)

    def __post_init__(self) -> None:
        optional = [v for v in (self.model_actors, self.model_actors_max, self.model_memory_gb) if v is not None]
        if min(self.sources_per_block, self.keys_per_block, *optional) <= 0:
            raise ValueError("sources_per_block, keys_per_block, model_actors, model_actors_max and model_memory_gb must be positive")
        if self.model_gpus is not None and not 0 <= self.model_gpus:
            raise ValueError("model_gpus must be 0 or more (a fraction shares a GPU between actors)")


def on_terminal() -> bool:
    return sys.stderr.isatty()


def init_ray(options: RayOptions) -> None:
    """Ray for a job. Unless ``verbose``, Ray's own informational logs stay out of the job's output (a person reads
    wspsr's progress line instead). One line of Ray's remains in a corpus or transcribe run: the driver's C++ log
    (``core_worker.cc``) says that a restartable model actor's constructor arguments live in the object store
    (ray-project/ray#53727; the driver holds them for the job's life, so a restart finds them). Silencing it would
    take RAY_BACKEND_LOG_LEVEL, which makes every Ray process print a line of its own instead."""
    import ray

    if not ray.is_initialized():
        address = options.address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING if options.verbose else logging.ERROR, "log_to_driver": True}
        if address is None:
            kwargs.update(include_dashboard=options.dashboard, num_cpus=options.num_cpus, num_gpus=options.num_gpus)
        ray.init(address=address, **kwargs)
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.INFO if options.verbose else logging.ERROR)
    context = ray.data.DataContext.get_current()
    # Ray's bars on a terminal; in a log they become per-operator dumps every few seconds: wspsr's line instead.
    context.enable_progress_bars = options.progress and (on_terminal() or options.verbose)
    context.print_on_execution_start = False
    context.execution_options.preserve_order = options.preserve_order
    # The one all-to-all step (dedup's shared keys) hash-partitions by key: partitions sized by the data. (Sort-based
    # aggregation there ran a Python call per key: 170 s for 2 million keys against 5 s.)
    context.shuffle_strategy = ray.data.context.ShuffleStrategy.HASH_SHUFFLE
    # Its aggregator actors hold slim (key, ref) rows and reserve no CPU: reserving a share of one deadlocked a
    # one-CPU run (the aggregator's 0.25 CPU plus the shuffle's map task's 1 CPU never fit).
    context.hash_shuffle_operator_actor_num_cpus_override = 0.0


def pool_bounds(options: RayOptions, cluster_gpus: float, gpus_per_actor: float, stage_actors: int | None = None) -> tuple[int, int]:
    """(fewest, most) actors of a model stage: a fixed size where one is given (the stage's, then
    ``model_actors``), one actor on CPUs, else from one up to as many as the cluster's GPUs hold (or
    ``model_actors_max``)."""
    fixed = stage_actors or options.model_actors
    if fixed:
        return fixed, fixed
    if gpus_per_actor <= 0:
        return 1, 1
    return 1, options.model_actors_max or max(1, int(cluster_gpus / gpus_per_actor + 1e-9))


def _run_task_stage(batch: pa.Table, stage: Stage) -> pa.Table:
    return timed("stage", stage.name, batch.num_rows, apply_stage, stage, batch)


class _ModelStageActor:
    """Holds a model stage's loaded state for the actor's lifetime."""

    def __init__(self, stage: Stage):
        self.stage = stage
        self.state = timed("setup", stage.name, 0, stage.setup, stage.options)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return timed("stage", self.stage.name, batch.num_rows, apply_stage, self.stage, batch, self.state)


class SinkWriteError(OSError):
    """Writing output failed in a worker (disk full, permissions): raised in the driver with the worker's errno."""


def _run_sink(batch: pa.Table, sink: Callable[[pa.Table], dict[str, Any]]) -> pa.Table:
    try:
        result = timed("stage", "commit", batch.num_rows, sink, batch)
    except OSError as exc:  # sent back as data: Ray would wrap it in an error that loses its type and errno
        result = {"storage_error": [exc.errno, exc.strerror or str(exc), exc.filename and str(exc.filename)]}
    else:  # what the driver needs of the marker: counts, never the ids it lists
        result = {"shard": result["shard"], "rows": result["rows"], "counts": {kind: len(ids) for kind, ids in result["sources"].items()},
                  "stats": result["stats"]}
    return pa.table({"marker": [json.dumps(result)]})


def _rows_where(batch: pa.Table, column: str, values: np.ndarray, columns: list[str], explode: Callable[[pa.Table], pa.Table] | None) -> pa.Table:
    if explode is not None:
        batch = explode(batch)
    if batch.num_rows == 0 or len(values) == 0:
        return batch.select(columns).slice(0, 0)
    data = batch[column].to_numpy(zero_copy_only=False)
    at = np.minimum(np.searchsorted(values, data), len(values) - 1)
    return batch.filter(pa.array(values[at] == data)).select(columns)


def _distinct(table: pa.Table) -> pa.Table:
    return table.group_by(table.column_names, use_threads=False).aggregate([]) if table.num_rows else table


def _collect(dataset, schema: pa.Schema | None) -> pa.Table:
    """Every block of a (small) result as one Arrow table on the driver."""
    import ray

    tables = ray.get(dataset.to_arrow_refs())
    filled = [t for t in tables if t.num_rows]
    if not filled:
        return schema.empty_table() if schema is not None else (tables[0].slice(0, 0) if tables else pa.table({}))
    return pa.concat_tables(filled, promote_options="permissive")


def _splits_datasource(splits: list[Any], read: Callable[[Any], Iterator[pa.Table]], schema: pa.Schema):
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class SplitsDatasource(Datasource):
        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None) -> list:
            return [ReadTask(functools.partial(_read_one, read, split), BlockMetadata(None, None, None, None), schema=schema) for split in splits]

        def get_name(self) -> str:
            return "Sources"

    return SplitsDatasource()


def _read_one(read: Callable[[Any], Iterator[pa.Table]], split: Any) -> Iterator[pa.Table]:
    yield from read(split)


def _identity(batch: pa.Table) -> pa.Table:
    return batch


def _call(batch: pa.Table, fn: Callable[[pa.Table], pa.Table]) -> pa.Table:
    return fn(batch)


def _call_with(batch: pa.Table, fn: Callable[..., pa.Table], *args: Any) -> pa.Table:
    return fn(batch, *args)


def blocks_of(table: pa.Table, rows_per_block: int) -> list[pa.Table]:
    return [table.slice(i, rows_per_block) for i in range(0, table.num_rows, rows_per_block)] or [table]


class Plan:
    """A Ray Data plan built step by step by a job; nothing runs until results are read."""

    def __init__(self, options: RayOptions):
        self.options = options
        timed("phase", "ray_init", 0, init_ray, options)
        import ray

        self._gpus = ray.cluster_resources().get("GPU", 0)

    def _gpus_per_actor(self, stage: Stage) -> float:
        if stage.num_gpus:
            return stage.num_gpus
        return self.options.model_gpus if self.options.model_gpus is not None else float(self._gpus > 0)

    def _model_pool(self, stage: Stage):
        """Two tasks in flight per actor in an autoscaling pool: the next batch's inputs arrive while one decodes."""
        import ray.data

        fewest, most = pool_bounds(self.options, self._gpus, self._gpus_per_actor(stage), stage.concurrency)
        if fewest == most:
            return ray.data.ActorPoolStrategy(size=most)
        return ray.data.ActorPoolStrategy(min_size=fewest, max_size=most, max_tasks_in_flight_per_actor=2)

    def model_pool_size(self) -> tuple[int, int]:
        """(fewest, most) actors a model stage gets: what jobs log at start."""
        return pool_bounds(self.options, self._gpus, self._gpus_per_actor(Stage("model", _identity, None, setup=_identity)), None)

    def source(self, table: pa.Table):
        import ray.data

        return ray.data.from_arrow(blocks_of(table, self.options.sources_per_block))

    def read_parquet(self, paths: list[str], columns: list[str] | None = None):
        """A streaming read: blocks are read as the plan consumes them, never the whole table at once."""
        import ray.data

        return ray.data.read_parquet(paths, columns=columns)

    def limit(self, dataset, rows: int):
        """The first ``rows`` rows (in read order when the plan preserves order)."""
        return dataset.limit(rows)

    def map(self, dataset, fn: Callable[..., pa.Table], *args: Any):
        """``fn(batch, *args)`` over every block (filters, projections): a plain task, no stage bookkeeping."""
        return dataset.map_batches(_call_with, fn_args=(fn, *args), batch_format="pyarrow", batch_size=None)

    def apply(self, dataset, stages: list[Stage]):
        import ray.data

        for stage in stages:
            if stage.is_model_stage:
                gpus = self._gpus_per_actor(stage)
                dataset = dataset.map_batches(
                    _ModelStageActor,
                    fn_constructor_args=(stage,),
                    batch_format="pyarrow",
                    batch_size=stage.batch_size,
                    compute=self._model_pool(stage),
                    num_cpus=stage.num_cpus,
                    num_gpus=gpus,
                    # Declared memory keeps model actors off nodes that cannot hold the model; as a resource the
                    # CPU stages don't share, it also keeps Ray from fusing them into the actor, so decoding
                    # scales with CPUs, not with the number of model actors.
                    memory=(self.options.model_memory_gb or stage.memory_gb or 2.0) * 2**30,
                )
            else:
                # A task stage's concurrency bounds how many of its tasks run at once (e.g. downloads).
                compute = ray.data.TaskPoolStrategy(size=stage.concurrency) if stage.concurrency else None
                # A declared memory keeps Ray from running more such tasks on a node than its memory holds.
                memory = {"memory": stage.memory_gb * 2**30} if stage.memory_gb else {}
                dataset = dataset.map_batches(
                    _run_task_stage, fn_args=(stage,), batch_format="pyarrow", batch_size=stage.batch_size, num_cpus=stage.num_cpus,
                    compute=compute, **memory,
                )
        return dataset

    def materialize(self, dataset):
        """Compute now and keep the blocks (in the object store, spilled to disk if large) for reuse."""
        return timed("phase", "materialize", 0, dataset.materialize)

    def read_splits(self, splits: list[Any], read: Callable[[Any], Iterator[pa.Table]], schema: pa.Schema):
        """A dataset read by one task per split (``read(split)`` yields its blocks): the driver lists splits, never
        rows."""
        import ray.data

        return ray.data.read_datasource(_splits_datasource(splits, read, schema), override_num_blocks=max(1, len(splits)))

    def rebatch(self, dataset, rows: int):
        """Blocks of at most ``rows`` rows (streaming, no shuffle; a block is cut the same way on every run): big
        blocks for cheap per-row work, small ones where each row is expensive, so the work spreads over the workers.
        The step before is kept apart (a fractional CPU): fused into it, the cut would be merged back into one block."""
        separate = dataset.map_batches(_call, fn_args=(_identity,), batch_format="pyarrow", batch_size=None, num_cpus=0.5)
        return separate.repartition(target_num_rows_per_block=rows)

    def union(self, first, second):
        return first.union(second)

    def count(self, dataset) -> int:
        return timed("phase", "count", 0, dataset.count)

    def sorted_values(self, dataset, column: str) -> np.ndarray:
        """One integer column of every row, sorted, on the driver (8 bytes a row: the inputs' keys)."""
        values = timed("phase", f"collect_{column}", 0, _collect, dataset.select_columns([column]), None)
        found = values[column].to_numpy().astype(np.int64, copy=False) if values.num_rows else np.zeros(0, dtype=np.int64)
        del values
        if not found.flags.writeable:  # a single block's column, shared with Arrow: one copy to sort
            found = found.copy()
        found.sort()
        return found

    def columns(self, dataset) -> list[str]:
        return list(dataset.schema().names)

    def by_key(self, dataset, explode: Callable[[pa.Table], pa.Table], reduce: Callable[[pa.Table], pa.Table],
               extra: pa.Table | None = None, expected_rows: int = 0, distinct_by: str | None = None) -> pa.Table:
        """``reduce`` over each partition of the exploded rows (plus ``extra`` ones), collected: the rows are hash-
        partitioned by their ``key`` column across the cluster into partitions of about ``keys_per_block`` rows (so
        the all-to-all step is sized by the data, not by a count of input blocks); every row of a key lands in one
        partition. With ``distinct_by`` the reductions are partitioned again by that column and made distinct there,
        so a row that several partitions produce (a pair sharing keys in many) comes to the driver once. Keep the
        reductions small: they come to the driver."""
        import ray.data

        keyed = dataset.map_batches(_call, fn_args=(explode,), batch_format="pyarrow", batch_size=None)
        if extra is not None and extra.num_rows:
            keyed = keyed.union(ray.data.from_arrow(extra))
        partitions = max(1, -(-expected_rows // self.options.keys_per_block))
        reduced = keyed.repartition(partitions, keys=["key"]).map_batches(_call, fn_args=(reduce,), batch_format="pyarrow", batch_size=None)
        if distinct_by is not None:
            reduced = reduced.repartition(partitions, keys=[distinct_by]).map_batches(_call, fn_args=(_distinct,), batch_format="pyarrow", batch_size=None)
        return timed("phase", "by_key", 0, _collect, reduced, None)

    def gather(self, dataset, column: str, values: np.ndarray, columns: list[str], reduce: Callable[..., pa.Table], *args: Any) -> pa.Table:
        """``reduce(rows, *args)`` in one task over the rows whose ``column`` is one of ``values`` (a sorted array,
        looked up by binary search in each block): the rows go from the workers to that task, never to the driver;
        only what ``reduce`` returns does."""
        selected = dataset.map_batches(_rows_where, fn_args=(column, values, columns, None), batch_format="pyarrow", batch_size=None)
        reduced = selected.repartition(1).map_batches(_call_with, fn_args=(reduce, *args), batch_format="pyarrow", batch_size=None)
        return timed("phase", f"gather_{column}", 0, _collect, reduced, None)

    def each(self, table: pa.Table, fn: Callable[..., pa.Table], *args: Any) -> pa.Table:
        """``fn(row, *args)`` for each row of a small driver table (one task a row, spread over the cluster), the
        results collected: work per named item, such as rewriting a committed shard."""
        import ray.data

        if table.num_rows == 0:
            return pa.table({})
        dataset = ray.data.from_arrow(blocks_of(table, 1))
        return timed("phase", "each", table.num_rows, _collect, dataset.map_batches(_call_with, fn_args=(fn, *args), batch_format="pyarrow", batch_size=None), None)

    def commit(self, dataset, sink: Callable[[pa.Table], dict[str, Any]], total: int | None = None, what: str = "inputs",
               counted: str | None = None) -> Iterator[dict[str, Any]]:
        """Run the plan into the sink; yields each shard's marker as it commits, as counts (``shard``, ``rows``,
        ``counts`` per kind of id, ``stats``): the ids stay in the marker files. Progress of the ``total`` inputs goes
        to the log as one line at a steady interval when not on a terminal (``ProgressLine``)."""
        dataset = dataset.map_batches(_run_sink, fn_args=(sink,), batch_format="pyarrow", batch_size=None)
        started, cpu = time.monotonic(), cpu_seconds()
        progress = ProgressLine(what, total, self.options.progress_interval_s, self.options.progress and not on_terminal(), counted)
        try:
            for row in dataset.iter_rows():
                marker = json.loads(row["marker"])
                if "storage_error" in marker:
                    raise SinkWriteError(*marker["storage_error"])
                log.log(
                    logging.INFO if self.options.verbose else logging.DEBUG, "committed shard %s: %d sources (%d kept), rows %s [%.0f s]",
                    marker["shard"], sum(marker["counts"].values()), marker["counts"].get("kept", 0),
                    ", ".join(f"{table} {n}" for table, n in marker["rows"].items()), time.monotonic() - started,
                )
                progress.add(marker)
                yield marker
            progress.finish()
        finally:
            progress.stop()
        if os.environ.get(STAGE_TIMES_ENV):  # the streaming part of the plan, as the driver waited for it
            record_time("phase", "commit_stream", 0, time.monotonic() - started, cpu_seconds() - cpu)
