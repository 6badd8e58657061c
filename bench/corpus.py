"""Corpus build throughput: the job as a subprocess on a generated workload, a per-stage breakdown, the bare-ffmpeg
floor, and 1x/2x/4x scaling with peak memory."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.machine import REPO, machine_info
from bench.memory import TreeMemory
from bench.workload import WORK, generate_workload, workload_info


def stage_breakdown(path: Path) -> dict[str, Any]:
    """Sum the runner's per-call timings (``WSPSR_STAGE_TIMES``): task seconds per stage across workers, and the
    driver's wall seconds per phase of the plan."""
    stages: dict[str, dict[str, float]] = {}
    phases: dict[str, dict[str, float]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            if entry["kind"] == "phase":
                target = phases.setdefault(entry["name"], {"wall_s": 0.0})
            else:
                target = stages.setdefault(entry["name"] + (" (model load)" if entry["kind"] == "setup" else ""), {"calls": 0, "rows": 0, "wall_s": 0.0, "cpu_s": 0.0})
                target["calls"] += 1
                target["rows"] += entry["rows"]
                target["cpu_s"] += entry["cpu_s"]
            target["wall_s"] += entry["wall_s"]
    rounded = lambda d: {k: {f: round(v, 3) if isinstance(v, float) else v for f, v in d[k].items()} for k in d}  # noqa: E731
    return {"stages": rounded(stages), "phases": rounded(phases)}

MODEL_STAGES = ("detect_text_language", "score_windows")  # the stages that run a model (fastText, Whisper)
CAPPED_WINDOWS = 1  # the capped run: one scored window per source (language.max_windows), the cheapest setting

def run_corpus(sources: Path, out: Path, sets: list[str]) -> dict[str, Any]:
    """The corpus job as a user runs it, in its own process (jobs don't import each other): wall time from
    outside, CPU time of the whole process tree, peak memory of the tree, and the runner's stage timings."""
    import shutil
    import subprocess

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    times = out.with_name(out.name + "-stage-times.jsonl")
    times.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "jobs.corpus", "--sources", str(sources), "--out", str(out / "corpus"), "--quiet"]
    for item in sets:
        argv += ["--set", item]
    env = dict(os.environ, WSPSR_STAGE_TIMES=str(times))
    load_before = os.getloadavg()
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    memory = TreeMemory(proc.pid)
    output, _ = proc.communicate()
    wall = time.perf_counter() - started
    peak = memory.stop()
    (out / "job.log").write_text(output, encoding="utf-8")
    if proc.returncode != 0:
        raise RuntimeError(f"corpus job failed ({proc.returncode}): {' '.join(argv)}\n{output[-4000:]}")
    summary = json.loads((out / "corpus" / "summary.json").read_text())
    return {
        "set": sets, "wall_s": round(wall, 2), "cpu_s": peak.pop("cpu_s"), "job_elapsed_s": summary.get("elapsed_s"), "memory": peak,
        "sources_in": summary["inputs"]["in"], "sources_kept": summary["inputs"]["kept"],
        "rejected_by_reason": summary["inputs"]["rejected_by_reason"], "windows": summary["windows"]["total"],
        "hours_in": summary["hours"]["in"], "hours_out": summary["hours"]["out"],
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
        "worker_crashes_retried": output.count("Fatal Python error"), **stage_breakdown(times),
    }

def ffmpeg_floor(files: list[Path], processes: int) -> dict[str, Any]:
    """The same files decoded by the same ffmpeg command the pipeline runs (16 kHz mono s16le to a pipe), in a
    bare loop: ``processes`` ffmpegs at a time, nothing else."""
    import resource
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.io.media import DecodeLimits, decode_command

    limits = DecodeLimits()

    def decode(path: Path) -> int:
        done = subprocess.run(decode_command(path.resolve(), limits), stdin=subprocess.DEVNULL, capture_output=True, check=True)
        return len(done.stdout) // 2

    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with ThreadPoolExecutor(processes) as pool:
        samples = sum(pool.map(decode, files))
    wall = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    return {"processes": processes, "files": len(files), "audio_s": round(samples / 16000, 1), "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "x_real_time": round(samples / 16000 / wall, 1)}

def fingerprint_cost(with_audio_dedup: dict[str, Any], without: dict[str, Any]) -> dict[str, Any]:
    """What audio dedup costs (issue 21): the decode stage's CPU with the fingerprint in the same ffmpeg run against
    without it, and the job's wall and CPU time with the audio dedup step after the commit against without."""
    def decode_cpu(run: dict[str, Any]) -> float:
        return run["stages"].get("decode_audio", {}).get("cpu_s") or 0.0

    return {"decode_cpu_s": decode_cpu(with_audio_dedup), "decode_cpu_s_without": decode_cpu(without),
            "decode_cpu_overhead": round(decode_cpu(with_audio_dedup) / decode_cpu(without) - 1, 3) if decode_cpu(without) else None,
            "job_wall_s": with_audio_dedup["wall_s"], "job_wall_s_without": without["wall_s"],
            "job_cpu_s": with_audio_dedup["cpu_s"], "job_cpu_s_without": without["cpu_s"]}


def bench_corpus(args: argparse.Namespace) -> dict[str, Any]:
    """Corpus build throughput with a per-stage breakdown, the bare-ffmpeg floor, and 1x/2x/4x scaling."""
    cores = machine_info()["usable_cores"] or 1
    base = generate_workload(args.hours, args.seed)
    scales = {1: base, **{k: generate_workload(args.hours * k, args.seed) for k in args.scales if k != 1}}
    work = WORK / "runs"
    common = [f"ray.sources_per_block={args.sources_per_block}"]
    files = sorted(base.glob("*.opus"))
    floor_1 = ffmpeg_floor(files, 1)
    floor_n = ffmpeg_floor(files, cores)
    print(f"floor: {floor_1['wall_s']} s sequential, {floor_n['wall_s']} s with {cores} processes", file=sys.stderr)
    runs: dict[str, Any] = {}
    runs["full"] = run_corpus(base, work / "full", common)
    print(f"corpus (all stages): {runs['full']['wall_s']} s", file=sys.stderr)
    runs["capped"] = run_corpus(base, work / "capped", common + [f"language.max_windows={CAPPED_WINDOWS}"])
    print(f"corpus (language.max_windows={CAPPED_WINDOWS}): {runs['capped']['wall_s']} s", file=sys.stderr)
    runs["no_models"] = run_corpus(base, work / "no-models", common + ["language.enabled=false"])
    print(f"corpus (language.enabled=false): {runs['no_models']['wall_s']} s", file=sys.stderr)
    runs["no_audio_dedup"] = run_corpus(base, work / "no-audio-dedup", common + ["language.enabled=false", "audio_dedup.enabled=false"])
    print(f"corpus (language.enabled=false, audio_dedup.enabled=false): {runs['no_audio_dedup']['wall_s']} s", file=sys.stderr)
    # Scaling runs without the Whisper stage by default: it only adds a constant actor and time linear in the
    # sources, and with it the 4x run alone takes several minutes on 2 cores (--scaling-models includes it).
    scaling, scale_set = {}, common if args.scaling_models else common + ["language.enabled=false"]
    for k in sorted(scales):
        if k == 1:
            run = runs["full"] if args.scaling_models else runs["no_models"]
        else:
            run = run_corpus(scales[k], work / f"scale-{k}x", scale_set)
        scaling[f"{k}x"] = {"audio_hours": run["hours_in"], "sources": run["sources_in"], "wall_s": run["wall_s"], "cpu_s": run["cpu_s"],
                            "peak_pss_mib": run["memory"]["peak_pss_mib"], "peak_rss_sum_mib": run["memory"]["peak_rss_sum_mib"],
                            "load_before": run["load_before"],
                            # where the time goes: Ray's start and the dedup step (by key) cost about the same at any size here
                            "ray_init_s": run["phases"].get("ray_init", {}).get("wall_s"),
                            "dedup_group_s": run["phases"].get("by_key", {}).get("wall_s"),
                            "stage_task_s": round(sum(v["wall_s"] for v in run["stages"].values()), 2),
                            "decode_task_s": run["stages"].get("decode_audio", {}).get("wall_s"),
                            "decode_cpu_s": run["stages"].get("decode_audio", {}).get("cpu_s")}
        print(f"scaling {k}x: {run['wall_s']} s, peak PSS {run['memory']['peak_pss_mib']} MiB", file=sys.stderr)
    one = scaling["1x"]
    for entry in scaling.values():
        entry["time_vs_1x"] = round(entry["wall_s"] / one["wall_s"], 2)
        entry["input_vs_1x"] = round(entry["audio_hours"] / one["audio_hours"], 2)
        entry["peak_pss_vs_1x"] = round(entry["peak_pss_mib"] / one["peak_pss_mib"], 2)
    for run in runs.values():
        run["audio_hours_per_core_hour"] = round(run["hours_in"] / (run["wall_s"] / 3600 * cores), 1)
        run["audio_hours_per_cpu_hour"] = round(run["hours_in"] / (run["cpu_s"] / 3600), 1) if run["cpu_s"] else None
        run["vs_floor_sequential"] = round(run["wall_s"] / floor_1["wall_s"], 1)
        run["vs_floor_parallel"] = round(run["wall_s"] / floor_n["wall_s"], 1)
        decode = run["stages"].get("decode_audio")
        if decode:
            run["decode_stage_vs_floor_cpu"] = round(decode["cpu_s"] / floor_1["cpu_s"], 2)
            run["decode_stage_vs_floor_sequential_wall"] = round(decode["wall_s"] / floor_1["wall_s"], 2)
        model = sum(v["wall_s"] for k, v in run["stages"].items() if k.startswith(MODEL_STAGES))
        run["model_stage_task_s"] = round(model, 2)
    return {
        "benchmark": "corpus",
        "fingerprint_cost": fingerprint_cost(runs["no_models"], runs["no_audio_dedup"]),
        "what": ("the corpus job as a subprocess on a generated workload (real English speech, Opus, SRT); wall time from outside "
                 "(Ray's start included); cpu_s = user+sys of the whole process tree; memory = peak over 0.2 s samples of the "
                 "summed PSS of the process tree (driver, GCS, raylet, workers, actors; Ray's shared-memory object store pages "
                 "counted once, split among the processes mapping them), RSS sum alongside (counts shared pages per process); "
                 "cpu_s: CPU seconds of the tree's processes as last sampled (own + waited-for children such as ffmpeg); "
                 "stages: summed task seconds per stage over all workers (runner's WSPSR_STAGE_TIMES), phases: the driver's wall "
                 "seconds per plan step; floor: the pipeline's own ffmpeg command on the same files, nothing else"),
        "hours": args.hours, "seed": args.seed, "workload": workload_info(base), "cores": cores, "set": common,
        "floor": {"sequential": floor_1, "parallel": floor_n},
        "runs": runs, "scaling_set": scale_set, "scaling": scaling, "machine": machine_info(),
    }
