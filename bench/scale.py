"""Scale: the corpus job over generated manifests of N text-only sources whose audio is missing, so every line
ends as a reject after discovery, the text stages and the global dedup step (no audio is decoded). Every tenth
line is a near-copy of an earlier one (one word swapped): the planted duplicates the dedup step must find.

Reported per size: wall time, sources per second, the driver's peak RSS (the process the user started), the peak
PSS of the whole process tree (driver, Ray's GCS and raylet, workers, actors), the global step's phases, and the
recall of the planted copies; then the driver memory's growth between sizes (the target: flat).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.corpus import stage_breakdown
from bench.machine import REPO, machine_info
from bench.memory import TreeMemory
from bench.workload import WORK

CHUNK = 100_000  # lines generated at a time (memory stays flat whatever the size)
VOCABULARY = 20_000


def _vocabulary(seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    letters, vowels = np.array(list("bcdfghjklmnprstvwyz")), np.array(list("aeiou"))
    sizes = rng.choice([1, 1, 2, 2, 2, 3, 4], VOCABULARY)
    return ["".join(c + v for c, v in zip(rng.choice(letters, n), rng.choice(vowels, n))) for n in sizes]


def _texts(rng: np.random.Generator, words: np.ndarray, cumulative: np.ndarray, count: int) -> list[str]:
    """Transcript-like texts: 10-200 words from a Zipf-like vocabulary, in capitalised sentences with commas."""
    lengths = np.clip(rng.lognormal(4.0, 0.6, count).astype(int), 10, 200)
    picks = np.searchsorted(cumulative, rng.random(lengths.sum()))
    texts, at = [], 0
    for n in lengths.tolist():
        chosen = words[picks[at : at + n]].tolist()
        at += n
        sentences = []
        for start in range(0, n, 12):
            part = chosen[start : start + 12]
            if len(part) > 6:
                part[len(part) // 2] += ","
            sentences.append(" ".join([part[0].capitalize(), *part[1:]]) + ".")
        texts.append(" ".join(sentences))
    return texts


def scale_manifest(count: int, seed: int = 0, root: Path = WORK, compress: bool = False) -> tuple[Path, int]:
    """A JSONL manifest of ``count`` sources (inline text, declared English, audio files that do not exist), cached
    under ``root``; returns it and the number of planted near-copies."""
    folder = root / f"scale-{count}-s{seed}"
    manifest = folder / ("sources.jsonl.gz" if compress else "sources.jsonl")
    info = folder / "manifest.json"
    if info.exists() and manifest.exists():
        return manifest, json.loads(info.read_text())["planted"]
    folder.mkdir(parents=True, exist_ok=True)
    words = np.array(_vocabulary(seed))
    weights = 1.0 / np.arange(1, VOCABULARY + 1)
    cumulative = np.cumsum(weights) / weights.sum()
    planted = 0
    tmp = manifest.with_name(manifest.name + ".tmp")
    opener = gzip.open if compress else open
    with opener(tmp, "wt", encoding="utf-8") as out:
        for start in range(0, count, CHUNK):
            rng = np.random.default_rng([seed, start])
            texts = _texts(rng, words, cumulative, min(CHUNK, count - start))
            for i in range(9, len(texts), 10):  # a near-copy of an earlier line of the chunk: one word swapped
                copy = texts[int(rng.integers(i))].split(" ")
                copy[int(rng.integers(len(copy)))] = "swapped"
                texts[i] = " ".join(copy)
                planted += 1
            for k, text in enumerate(texts):
                out.write(json.dumps({"audio": f"audio/{start + k:09d}.opus", "text": text, "language": "en"}) + "\n")
    tmp.replace(manifest)
    info.write_text(json.dumps({"count": count, "seed": seed, "planted": planted}) + "\n")
    return manifest, planted


def run_scale(count: int, seed: int, sets: list[str], compress: bool) -> dict[str, Any]:
    manifest, planted = scale_manifest(count, seed, compress=compress)
    out = WORK / "runs" / f"scale-{count}"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    out.mkdir(parents=True)
    times = out / "stage-times.jsonl"
    argv = [sys.executable, "-m", "jobs.corpus", "--sources", str(manifest), "--out", str(out / "corpus"), "--quiet"]
    for item in sets:
        argv += ["--set", item]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, env=dict(os.environ, WSPSR_STAGE_TIMES=str(times)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    memory = TreeMemory(proc.pid)
    output, _ = proc.communicate()
    wall = time.perf_counter() - started
    peak = memory.stop()
    (out / "job.log").write_text(output, encoding="utf-8")
    if proc.returncode != 0:
        raise RuntimeError(f"corpus job failed ({proc.returncode}):\n{output[-4000:]}")
    summary = json.loads((out / "corpus" / "summary.json").read_text())
    found = summary["inputs"]["rejected_by_reason"].get("duplicate", 0)
    phases = stage_breakdown(times)["phases"]
    return {
        "sources": count, "manifest_mb": round(manifest.stat().st_size / 2**20, 1), "wall_s": round(wall, 1),
        "sources_per_s": round(count / wall, 1), "driver_peak_rss_mib": peak["root_peak_rss_mib"], "tree_peak_pss_mib": peak["peak_pss_mib"],
        "accounting_ok": summary["accounting"]["ok"], "inputs": summary["inputs"]["in"],
        "kept_plus_rejected": summary["inputs"]["kept"] + summary["inputs"]["rejected"],
        "planted_copies": planted, "duplicates_found": found, "recall": round(found / planted, 4) if planted else None,
        "global_step_s": round(sum(v["wall_s"] for k, v in phases.items() if k in ("by_key", "gather_ref")), 1),
        "phases": phases, "cpu_s": peak["cpu_s"],
    }


def bench_scale(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    for count in args.sizes:
        print(f"scale: {count} sources ...", file=sys.stderr)
        runs.append(run_scale(count, args.seed, [f"ray.num_cpus={args.cpus}"] if args.cpus else [], args.gzip))
        print(f"scale {count}: {runs[-1]['wall_s']} s, driver {runs[-1]['driver_peak_rss_mib']} MiB, recall {runs[-1]['recall']}", file=sys.stderr)
    for run in runs:
        run["driver_rss_vs_smallest"] = round(run["driver_peak_rss_mib"] / runs[0]["driver_peak_rss_mib"], 2)
    return {
        "benchmark": "scale",
        "what": ("the corpus job (default config) over generated JSONL manifests of text-only sources with missing audio: "
                 "discovery, text stages, the global dedup step, accounting; every tenth line a near-copy (one word swapped)"),
        "runs": runs, "machine": machine_info(),
    }
