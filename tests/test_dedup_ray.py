"""Dedup as the corpus job runs it on Ray: signatures in parallel, band buckets grouped across the dataset."""

from __future__ import annotations

import pytest

from pipeline.run.runner import Plan, RayOptions
from pipeline.stage import Stage
from stages.dedup import DedupOptions, compute_signatures
from stages.dedup import find_duplicates as find_duplicates_on_ray
from pipeline.io.sources import duplicate_reject
from test_dedup import clusters, find_duplicates, generated_corpus, source_table, with_refs

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sources_per_block", [10_000, 100])  # one task does everything / 34 tasks on every CPU
def test_ray_plan_finds_the_same_clusters_whatever_the_parallelism(local_ray, sources_per_block):
    ids, texts, groups = generated_corpus()
    table = with_refs(source_table(texts, ids))
    options = DedupOptions()
    plan = Plan(RayOptions(sources_per_block=sources_per_block, progress=False))
    dataset = plan.materialize(plan.apply(plan.source(table), [Stage("compute_signatures", compute_signatures, options)]))
    assert dataset.num_blocks() == -(-len(ids) // sources_per_block)
    decisions = find_duplicates_on_ray(plan, dataset, options, duplicate_reject)
    assert decisions.keeper == find_duplicates(table)  # the same as the plain-Python path
    assert clusters(decisions.keeper, ids) == {frozenset(g) for g in groups}
