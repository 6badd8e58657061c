"""Audio duplicates (#21): what fingerprinting adds to decoding, and the audio dedup step at scale.

1. **Decode cost**: the same files decoded by ``decode_audio`` and by ``decode_audio_and_fingerprint`` (the
   Chromaprint muxer as a second output of the same ffmpeg run), in one process, alternating; CPU time (the
   process and its ffmpeg children) and wall time, best of ``--repeat``.
2. **The global step**: ``stages.audio_dedup.find_audio_duplicates`` on a local Ray over N generated fingerprints
   (made inside Ray's read tasks, never on the driver): 10-60 s each of uniform random items, every tenth a copy of
   the one before with 5 % of its bits flipped and its first 0-40 items cut (a re-encode cut at the start). Reported:
   wall time, the driver's peak RSS growth, and recall / false edges against the planted pairs. Random items make
   sub-hash keys almost never collide by chance, so this measures the step's plumbing (the shuffle of keys, the
   driver's arrays, the verification), not the candidate load of real speech, whose keys collide more
   (``tests/test_audio_dedup.py``).

    python -m bench audio-dedup [--fingerprints 1000000] [--splits 200] [--decode-files 60] [--repeat 3]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from typing import Any, Iterator

import numpy as np
import pyarrow as pa

from bench.machine import machine_info
from bench.workload import BENCH_ENGLISH

FINGERPRINT_SCHEMA = pa.schema([("ref", pa.int64()), ("source_id", pa.string()), ("fingerprint", pa.binary()), ("reject_reason", pa.string())])
COPY_EVERY = 10


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the ffmpeg runs)."""
    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_CHILDREN), resource.getrusage(resource.RUSAGE_SELF)))


def bench_decode(files: list, repeat: int) -> dict[str, Any]:
    from pipeline.io.media import decode_audio, decode_audio_and_fingerprint

    best: dict[str, tuple[float, float]] = {}
    for _ in range(repeat):
        for name, fn in (("decode", decode_audio), ("decode+fingerprint", decode_audio_and_fingerprint)):
            cpu, wall = _cpu(), time.perf_counter()
            for path in files:
                fn(path)
            spent = (_cpu() - cpu, time.perf_counter() - wall)
            best[name] = min(best.get(name, spent), spent)
    audio_s = sum(len(decode_audio(p)) for p in files) / 16000
    plain, both = best["decode"], best["decode+fingerprint"]
    return {"files": len(files), "audio_s": round(audio_s, 1), "repeat": repeat,
            "decode_cpu_s": round(plain[0], 3), "decode_fingerprint_cpu_s": round(both[0], 3),
            "cpu_overhead": round(both[0] / plain[0] - 1, 3), "wall_overhead": round(both[1] / plain[1] - 1, 3)}


def _generated(split: tuple[int, int, int]) -> Iterator[pa.Table]:
    """Fingerprints ``start`` to ``stop`` of the workload, seeded by position (every tenth a cut, noisy copy)."""
    start, stop, seed = split
    refs, ids, prints = [], [], []
    for ref in range(start, stop):
        base = ref - 1 if ref % COPY_EVERY == COPY_EVERY - 1 else ref
        rng = np.random.default_rng((seed, base))
        items = rng.integers(0, 2**32, size=int(rng.uniform(10, 60) * 8.08), dtype=np.uint64).astype("<u4")
        if base != ref:
            noise = np.random.default_rng((seed, ref, 1))
            flips = (noise.random((len(items), 32)) < 0.05) * (1 << np.arange(32, dtype=np.uint64))
            items = (items ^ flips.sum(axis=1).astype("<u4"))[int(noise.integers(0, 40)):]
        refs.append(ref)
        ids.append(f"src-{ref:08d}")
        prints.append(items.tobytes())
    yield pa.table([pa.array(refs, pa.int64()), pa.array(ids), pa.array(prints, pa.binary()), pa.nulls(len(refs), pa.string())],
                   schema=FINGERPRINT_SCHEMA)


def bench_global_step(count: int, splits: int, seed: int) -> dict[str, Any]:
    from pipeline.run.runner import Plan, RayOptions
    from stages.audio_dedup import AudioDedupOptions, find_audio_duplicates, resolve_audio_duplicates

    plan = Plan(RayOptions(progress=False))
    step = -(-count // splits)
    parts = [(s, min(count, s + step), seed) for s in range(0, count, step)]
    dataset = plan.read_splits(parts, _generated, FINGERPRINT_SCHEMA)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    edges = find_audio_duplicates(plan, dataset, AudioDedupOptions(), rows_hint=count)
    seconds = time.perf_counter() - started
    resolved = time.perf_counter()
    decisions = resolve_audio_duplicates(edges)  # the cluster decision the corpus job publishes
    resolve_seconds = time.perf_counter() - resolved
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    planted = {(r - 1, r) for r in range(COPY_EVERY - 1, count, COPY_EVERY)}
    found = {(a, b) for a, b in zip(edges["a"].to_pylist(), edges["b"].to_pylist())}
    return {"fingerprints": count, "splits": len(parts), "seconds": round(seconds, 1), "resolve_seconds": round(resolve_seconds, 2),
            "dropped": len(decisions), "clusters": decisions.clusters, "planted_pairs": len(planted),
            "recall": round(len(found & planted) / max(1, len(planted)), 4), "false_edges": len(found - planted),
            "driver_peak_rss_growth_mb": round((rss_after - rss_before) / 1024, 1), "driver_peak_rss_mb": round(rss_after / 1024, 1)}


def bench_audio_dedup(args: argparse.Namespace) -> dict[str, Any]:
    files = sorted(BENCH_ENGLISH.glob("*.opus"))[: args.decode_files]
    result: dict[str, Any] = {"benchmark": "audio-dedup", "machine": machine_info()}
    if files:
        result["decode"] = bench_decode(files, args.repeat)
        print(f"decode: {result['decode']}", file=sys.stderr)
    if args.fingerprints:
        result["global_step"] = bench_global_step(args.fingerprints, args.splits, args.seed)
        print(f"global step: {result['global_step']}", file=sys.stderr)
    return result
