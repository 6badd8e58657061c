"""Dedup: MinHash signatures (the naive per-document datasketch loop against ``compute_signatures``, which must
give the same values) and the global step on Ray for N and 10N documents."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from bench.machine import _timed, machine_info
from bench.workload import generate_transcripts, near_duplicate_corpus


def bench_dedup(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import pyarrow as pa
    from datasketch import MinHash

    from stages.dedup import DedupOptions, compute_signatures, lsh_params, shingles

    options = DedupOptions()
    texts = generate_transcripts(args.docs, args.seed)
    table = pa.table(
        {
            "source_id": pa.array([f"doc{i:07d}" for i in range(len(texts))]),
            "transcript_text": pa.array(texts, pa.string()),
            "transcript_format": pa.array(["txt"] * len(texts)),
        }
    )
    words = [len(t.split()) for t in texts]
    compute_signatures(table.slice(0, 10), options)  # warm: permutations, imports

    def naive() -> list[Any]:
        out = []
        for text in texts:
            items = shingles(text, options)
            if items is None:
                out.append(None)
                continue
            m = MinHash(num_perm=options.num_perm, seed=options.seed)
            for item in items:
                m.update(item.encode("utf-8"))
            out.append(m.hashvalues)
        return out

    def fast() -> list[pa.Table]:
        return [compute_signatures(table.slice(i, args.batch_size), options) for i in range(0, table.num_rows, args.batch_size)]

    shingle_s, shingled = _timed(lambda: [shingles(t, options) for t in texts])
    naive_s, reference = _timed(naive)
    fast_s, batches = _timed(fast)
    ours = [v for batch in batches for v in batch["minhash"].to_pylist()]
    mismatches = sum(
        (r is None) != (o is None) or (r is not None and not np.array_equal(np.frombuffer(o, dtype="<u4"), r)) for r, o in zip(reference, ours)
    )
    total_shingles = sum(len(s) for s in shingled if s)
    result = {
        "benchmark": "dedup",
        "what": "MinHash signatures: naive per-document datasketch loop vs stages.dedup.compute_signatures, one process",
        "docs": len(texts),
        "words_per_doc": {"min": min(words), "mean": round(sum(words) / len(words), 1), "max": max(words)},
        "shingles": total_shingles,
        "options": {"num_perm": options.num_perm, "ngram_words": options.ngram_words, "threshold": options.threshold, "lsh_bands_rows": list(lsh_params(options))},
        "batch_size": args.batch_size,
        "shingling_only_s": round(shingle_s, 3),
        "naive": {"seconds": round(naive_s, 3), "docs_per_s": round(len(texts) / naive_s, 1)},
        "compute_signatures": {"seconds": round(fast_s, 3), "docs_per_s": round(len(texts) / fast_s, 1)},
        "speedup": round(naive_s / fast_s, 2),
        "signatures_identical": mismatches == 0,
        "machine": machine_info(),
    }
    if mismatches:
        result["mismatches"] = mismatches
    if args.cluster_docs:
        result["cluster"] = bench_dedup_cluster([args.cluster_docs, 10 * args.cluster_docs], args.seed, args.batch_size)
        print(f"dedup cluster: {result['cluster']['runs']}", file=sys.stderr)
    return result

def bench_dedup_cluster(sizes: list[int], seed: int, sources_per_block: int) -> dict[str, Any]:
    """The corpus job's global dedup step on a local Ray (Ray already started, not timed): signatures as a stage,
    then ``stages.dedup.find_duplicates``, the code the corpus job runs (keys shared by two or more rows found on
    the cluster, their rows read back, pairs checked and clusters resolved on the driver)."""
    from pipeline.run.runner import Plan, RayOptions
    from pipeline.stage import Stage
    from pipeline.io.sources import duplicate_reject
    from stages.dedup import DedupOptions, compute_signatures, find_duplicates

    options = DedupOptions()
    plan = Plan(RayOptions(progress=False, sources_per_block=sources_per_block))

    def once(count: int) -> dict[str, Any]:
        table = near_duplicate_corpus(count, seed)
        sign_s, dataset = _timed(lambda: plan.materialize(plan.apply(plan.source(table), [Stage("compute_signatures", compute_signatures, options)])))

        cluster_s, decisions = _timed(lambda: find_duplicates(plan, dataset, options, duplicate_reject, rows_hint=count).keeper)
        return {"docs": count, "blocks": dataset.num_blocks(), "signatures_s": round(sign_s, 2), "cluster_s": round(cluster_s, 2),
                "duplicates_found": len(decisions), "duplicates_planted": len(range(9, count, 10))}

    once(200)  # warm: workers started, code shipped
    results = [once(n) for n in sizes]
    for entry in results:
        entry["cluster_s_vs_smallest"] = round(entry["cluster_s"] / results[0]["cluster_s"], 2)
    return {"sources_per_block": sources_per_block, "runs": results, "load_after": [round(x, 2) for x in os.getloadavg()]}
