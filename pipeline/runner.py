"""The one place Ray is configured: a list of stages becomes a Ray Data plan that ends in a committing sink.

Plain stages run as Ray tasks over whole blocks of source rows (consecutive ones fuse, so decoded audio
never leaves the worker); model stages run in actor pools that load their model once (``concurrency``
actors, ``num_gpus`` each). The sink commits each block as a shard and returns its marker; the driver only
collects markers. Locally Ray starts in-process; ``address`` (or ``RAY_ADDRESS``) joins an existing cluster.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pyarrow as pa

from pipeline.stage import Stage, apply_stage

log = logging.getLogger("wspsr")


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None  # an existing cluster ("auto", "ray://host:10001"); default $RAY_ADDRESS or local
    num_cpus: int | None = None  # local Ray only: CPUs to use (default: all)
    sources_per_block: int = 16  # sources per task and per committed shard
    progress: bool = True  # Ray Data progress bars

    def __post_init__(self) -> None:
        if self.sources_per_block <= 0:
            raise ValueError("sources_per_block must be positive")


def init_ray(options: RayOptions) -> None:
    import ray

    if ray.is_initialized():
        return
    address = options.address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address is None:
        kwargs.update(include_dashboard=False, num_cpus=options.num_cpus)
    ray.init(address=address, **kwargs)
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = options.progress
    context.print_on_execution_start = False


def _run_task_stage(batch: pa.Table, stage: Stage) -> pa.Table:
    return apply_stage(stage, batch)


class _ModelStageActor:
    """Holds a model stage's loaded state for the actor's lifetime."""

    def __init__(self, stage: Stage):
        self.stage = stage
        self.state = stage.setup(stage.options)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return apply_stage(self.stage, batch, self.state)


def _run_sink(batch: pa.Table, sink: Callable[[pa.Table], dict[str, Any]]) -> pa.Table:
    import json

    marker = sink(batch)
    return pa.table({"marker": [json.dumps(marker)]})


def blocks_of(table: pa.Table, rows_per_block: int) -> list[pa.Table]:
    return [table.slice(i, rows_per_block) for i in range(0, table.num_rows, rows_per_block)] or [table]


def run_plan(
    sources: pa.Table,
    stages: list[Stage],
    sink: Callable[[pa.Table], dict[str, Any]],
    options: RayOptions,
) -> Iterator[dict[str, Any]]:
    """Run the stages over the source rows on Ray and commit each block; yields markers as shards commit."""
    import json

    import ray.data

    if sources.num_rows == 0:
        return
    init_ray(options)
    dataset = ray.data.from_arrow(blocks_of(sources, options.sources_per_block))
    for stage in stages:
        if stage.is_model_stage:
            dataset = dataset.map_batches(
                _ModelStageActor,
                fn_constructor_args=(stage,),
                batch_format="pyarrow",
                batch_size=stage.batch_size,
                concurrency=stage.concurrency or 1,
                num_cpus=stage.num_cpus,
                num_gpus=stage.num_gpus,
            )
        else:
            dataset = dataset.map_batches(
                _run_task_stage, fn_args=(stage,), batch_format="pyarrow", batch_size=stage.batch_size, num_cpus=stage.num_cpus
            )
    dataset = dataset.map_batches(_run_sink, fn_args=(sink,), batch_format="pyarrow", batch_size=None)
    started = time.monotonic()
    for row in dataset.iter_rows():
        marker = json.loads(row["marker"])
        sources_done = sum(len(ids) for ids in marker["sources"].values())
        log.info(
            "committed shard %s: %d sources (%d kept), %d windows [%.0f s]",
            marker["shard"], sources_done, len(marker["sources"].get("kept", [])),
            marker["rows"].get("corpus", 0), time.monotonic() - started,
        )
        yield marker
