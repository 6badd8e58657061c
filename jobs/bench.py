"""Benchmarks of wspsr's hot paths, one subcommand each; results are printed and written as JSON.

    python -m jobs.bench all [--hours 0.2]          # corpus + dedup, then bench/results/summary.md (make bench HOURS=0.2)
    python -m jobs.bench corpus [--hours 0.2] [--scales 1 2 4] [--sources-per-block 2]
    python -m jobs.bench dedup [--docs 20000] [--batch-size 1000] [--cluster-docs 1000] [--seed 0] [--out bench/results/dedup.json]
    python -m jobs.bench transcribe [--repeat 1] [--batch-size 8]

``dedup``: MinHash signatures of generated transcripts, the naive per-document datasketch loop
(``m = MinHash(...); for s in shingles: m.update(s)``) against ``stages.dedup.compute_signatures`` on the same
texts in one process; the two must give the same signatures. Then the global dedup step on Ray for N and 10N docs.

``corpus``: the corpus job as a subprocess on a generated workload (``generate_workload``: real English speech
from ``bench/data/en``, cached under ``bench/work/``), with and without the language-ID model stages; a per-stage
breakdown from the runner's ``WSPSR_STAGE_TIMES``; the same audio decoded by a bare ffmpeg loop as the floor;
1x/2x/4x input for time and peak memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        info["memory_gib"] = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["gpu"] = gpu_name()
    info["load_avg"] = [round(x, 2) for x in os.getloadavg()]
    for package in ("datasketch", "numpy", "pyarrow", "ray", "torch", "openai-whisper", "faster-whisper", "ctranslate2"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    return info


def gpu_name() -> str | None:
    """The first NVIDIA GPU's name, or None (no nvidia-smi, or it finds none): torch is not imported for this."""
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return None
    try:
        names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return names.strip().splitlines()[0] if names.strip() else None


def write_result(name: str, result: dict[str, Any], out: str | None) -> Path:
    path = Path(out) if out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


# --- dedup -------------------------------------------------------------------------------------------------


def generate_transcripts(count: int, seed: int) -> list[str]:
    """Transcript-like texts: 10-200 words (skewed to shorter) from a Zipf-distributed vocabulary of made-up
    words, in capitalised sentences with commas and end marks."""
    rng = random.Random(seed)
    letters, vowels = "bcdfghjklmnprstvwyz", "aeiou"
    vocabulary = ["".join(rng.choice(letters) + rng.choice(vowels) for _ in range(rng.choice((1, 1, 2, 2, 2, 3, 4)))) for _ in range(20000)]
    weights = [1.0 / (rank + 1) for rank in range(len(vocabulary))]
    texts = []
    for _ in range(count):
        n = min(200, max(10, int(rng.lognormvariate(4.0, 0.6))))
        words = rng.choices(vocabulary, weights, k=n)
        sentences, i = [], 0
        while i < n:
            length = rng.randint(4, 16)
            chunk = words[i : i + length]
            if len(chunk) > 6 and rng.random() < 0.5:
                chunk[len(chunk) // 2] += ","
            sentences.append(" ".join([chunk[0].capitalize(), *chunk[1:]]) + rng.choice("...?!"))
            i += length
        texts.append(" ".join(sentences))
    return texts


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


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


# --- workload: a folder of sources for the corpus job -------------------------------------------------------

WORK = REPO / "bench" / "work"  # generated workloads and benchmark outputs (gitignored)
MAX_CLIP_S = 28.0  # longer clips would be one cue over 30 s (rejected as cue_too_long): left out of the pool


def srt_time(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def encode_pcm(pcm: Any, path: Path, codec: str = "libopus", bitrate: str = "32k") -> None:
    """16 kHz mono int16 samples to a compressed file with the same ffmpeg binary the pipeline decodes with."""
    import subprocess

    from pipeline.io.media import ffmpeg_binary

    command = [ffmpeg_binary(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", "-f", "s16le", "-ar", "16000", "-ac", "1",
               "-i", "pipe:0", "-c:a", codec, "-b:a", bitrate, str(path)]
    subprocess.run(command, input=pcm.astype("<i2").tobytes(), check=True)


def generate_workload(hours: float, seed: int = 0, root: Path = WORK, min_s: float = 60.0, max_s: float = 120.0) -> Path:
    """A directory the corpus job reads (``NAME.opus`` + ``NAME.srt``) holding about ``hours`` of real speech.

    Each source is a seeded random selection of the English clips of ``bench/data/en`` (no espeak needed) joined
    with short pauses into a 60-120 s recording, with one SRT cue per clip at its offset. Random selections keep
    the transcripts distinct (two sources share about one clip), so dedup keeps nearly everything. The same
    hours and seed give the same files; a finished workload is reused (``root/workload-h{hours}-s{seed}``)."""
    import shutil

    import numpy as np

    from pipeline.io.media import decode_audio

    folder = root / f"workload-h{hours:g}-s{seed}"
    done = folder / "workload.json"
    if done.exists():
        return folder / "sources"
    references = [json.loads(line) for line in (BENCH_ENGLISH / "references.jsonl").read_text().splitlines() if line.strip()]
    clips = [(r["text"], BENCH_ENGLISH / r["audio"]) for r in references if r["seconds"] <= MAX_CLIP_S]
    decoded: dict[Path, Any] = {}  # clips are decoded once, when first chosen
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "sources").mkdir(parents=True)
    total_s, sources = 0.0, []
    while total_s < hours * 3600:
        index = len(sources)
        rng = random.Random(f"wspsr-bench:{seed}:{index}")
        target = rng.uniform(min_s, max_s)
        order = rng.sample(range(len(clips)), len(clips))
        parts, cues, at = [], [], 0.0
        for k in order:
            if at >= target:
                break
            pause = rng.uniform(0.3, 1.2)
            text, path = clips[k]
            pcm = decoded[path] if path in decoded else decoded.setdefault(path, decode_audio(path))
            parts += [np.zeros(int(pause * 16000), "<i2"), pcm]
            at += pause
            cues.append((at, at + len(pcm) / 16000, text))
            at += len(pcm) / 16000
        parts.append(np.zeros(8000, "<i2"))
        pcm = np.concatenate(parts)
        name = f"talk{index:04d}"
        encode_pcm(pcm, tmp / "sources" / f"{name}.opus")
        srt = "".join(f"{i}\n{srt_time(a)} --> {srt_time(b)}\n{text}\n\n" for i, (a, b, text) in enumerate(cues, 1))
        (tmp / "sources" / f"{name}.srt").write_text(srt, encoding="utf-8")
        seconds = len(pcm) / 16000
        sources.append({"name": name, "seconds": round(seconds, 3), "cues": len(cues)})
        total_s += seconds
    (tmp / "workload.json").write_text(json.dumps({"hours": hours, "seed": seed, "audio_s": round(total_s, 1), "sources": sources}, indent=1) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder / "sources"


def workload_info(sources: Path) -> dict[str, Any]:
    info = json.loads((sources.parent / "workload.json").read_text())
    return {"sources": len(info["sources"]), "audio_s": info["audio_s"], "audio_hours": round(info["audio_s"] / 3600, 4),
            "folder": str(sources.relative_to(REPO)) if sources.is_relative_to(REPO) else str(sources)}


# --- corpus build ------------------------------------------------------------------------------------------


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _process_tree(root_pid: int) -> list[int]:
    """``root_pid`` and all its descendants (from /proc: no psutil needed)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def _cpu_ticks(pid: int) -> int:
    """utime + stime + cutime + cstime: the process's CPU and that of the children it waited for (ffmpeg)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(f) for f in fields[11:15])
    except (OSError, ValueError, IndexError):
        return 0


def _memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of one process in KiB; PSS shares each shared page (Ray's object store) among its users."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return rss, pss


class TreeMemory:
    """Samples the summed RSS and PSS of a process tree (driver + local Ray: GCS, raylet, workers, actors) every
    ``interval`` seconds in a thread, keeping the peaks, and each process's CPU time as last seen."""

    def __init__(self, pid: int, interval: float = 0.2):
        import threading

        self.pid, self.interval = pid, interval
        self.peak_rss_kib = self.peak_pss_kib = self.peak_processes = self.samples = 0
        self.cpu_ticks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = _process_tree(self.pid)
            sizes = [_memory_kib(pid) for pid in pids]
            for pid in pids:
                self.cpu_ticks[pid] = max(self.cpu_ticks.get(pid, 0), _cpu_ticks(pid))
            self.peak_rss_kib = max(self.peak_rss_kib, sum(r for r, _ in sizes))
            self.peak_pss_kib = max(self.peak_pss_kib, sum(p for _, p in sizes))
            self.peak_processes = max(self.peak_processes, len(pids))
            self.samples += 1
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        return {"peak_pss_mib": round(self.peak_pss_kib / 1024, 1), "peak_rss_sum_mib": round(self.peak_rss_kib / 1024, 1),
                "peak_processes": self.peak_processes, "samples": self.samples, "cpu_s": round(sum(self.cpu_ticks.values()) / CLOCK_TICKS, 1)}


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


MODEL_STAGES = ("detect_text_language", "detect_audio_language")  # the stages that run a model (fastText, Whisper)


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
    runs["no_models"] = run_corpus(base, work / "no-models", common + ["language.enabled=false"])
    print(f"corpus (language.enabled=false): {runs['no_models']['wall_s']} s", file=sys.stderr)
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
                            # where the time goes: Ray's start and the dedup groupby cost about the same at any size here
                            "ray_init_s": run["phases"].get("ray_init", {}).get("wall_s"),
                            "dedup_group_s": run["phases"].get("group_by_band_key", {}).get("wall_s"),
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


def near_duplicate_corpus(count: int, seed: int) -> "Any":
    """``count`` transcripts of which every tenth is a copy of an earlier one with one word swapped: clusters
    for the dedup step to find, as a source table."""
    import pyarrow as pa

    rng = random.Random(seed + 1)
    texts = generate_transcripts(count, seed)
    for i in range(9, count, 10):
        words = texts[rng.randrange(i)].split(" ")
        words[rng.randrange(len(words))] = "swapped"
        texts[i] = " ".join(words)
    return pa.table({"source_id": pa.array([f"doc{i:07d}" for i in range(count)]), "transcript_text": pa.array(texts, pa.string()),
                     "transcript_format": pa.array(["txt"] * count)})


def bench_dedup_cluster(sizes: list[int], seed: int, sources_per_block: int) -> dict[str, Any]:
    """The corpus job's global dedup step on a local Ray (Ray already started, not timed): signatures as a stage,
    then band keys grouped with Ray's groupby, candidate pairs checked, quality looked up, clusters resolved by
    union-find on the driver (the steps of ``jobs.corpus.find_duplicates``, rebuilt here: jobs don't import each
    other)."""
    from functools import partial

    from pipeline.run.runner import Plan, RayOptions
    from pipeline.stage import Stage
    from stages.dedup import DedupOptions, band_keys, bucket_edges, compute_signatures, resolve_duplicates

    options = DedupOptions()
    plan = Plan(RayOptions(progress=False, sources_per_block=sources_per_block))

    def once(count: int) -> dict[str, Any]:
        table = near_duplicate_corpus(count, seed)
        sign_s, dataset = _timed(lambda: plan.materialize(plan.apply(plan.source(table), [Stage("compute_signatures", compute_signatures, options)])))

        def cluster() -> dict[str, str]:
            edges = plan.group(dataset, partial(band_keys, options=options), "band_key", partial(bucket_edges, options=options))
            pairs = sorted({(e["a"], e["b"]) for e in edges})
            quality = plan.lookup(dataset, "source_id", {m for pair in pairs for m in pair}, "dedup_quality")
            return resolve_duplicates(pairs, quality)

        cluster_s, decisions = _timed(cluster)
        return {"docs": count, "blocks": dataset.num_blocks(), "signatures_s": round(sign_s, 2), "cluster_s": round(cluster_s, 2),
                "duplicates_found": len(decisions), "duplicates_planted": len(range(9, count, 10))}

    once(200)  # warm: workers started, code shipped
    results = [once(n) for n in sizes]
    for entry in results:
        entry["cluster_s_vs_smallest"] = round(entry["cluster_s"] / results[0]["cluster_s"], 2)
    return {"sources_per_block": sources_per_block, "runs": results, "load_after": [round(x, 2) for x in os.getloadavg()]}


# --- summary table ------------------------------------------------------------------------------------------


def machine_cell(info: dict[str, Any]) -> str:
    load = info.get("load_avg")
    return (f"{info.get('usable_cores')} cores {info.get('cpu_model', '')}, {info.get('memory_gib')} GiB, GPU: {info.get('gpu') or 'none'}"
            + (f", load {load[0]:g}" if load else ""))


def versions_cell(info: dict[str, Any], packages: tuple[str, ...]) -> str:
    return ", ".join([f"Python {info.get('python')}"] + [f"{p} {info[p]}" for p in packages if info.get(p)])


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    cell = lambda v: "" if v is None else (f"{v:,}" if isinstance(v, int) else str(v))  # noqa: E731
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows] + [""]


def summary_markdown(results: dict[str, dict[str, Any]]) -> str:
    """One Markdown page from whatever ``bench/results/*.json`` exist (each section only when its file does)."""
    lines = ["# wspsr benchmarks (generated by `python -m jobs.bench all`)", ""]
    corpus = results.get("corpus")
    if corpus:
        m, v = machine_cell(corpus["machine"]), versions_cell(corpus["machine"], ("ray", "pyarrow", "torch", "openai-whisper"))
        w, floor = corpus["workload"], corpus["floor"]
        lines += ["## Corpus build", "",
                  f"Workload: {w['sources']} sources, {w['audio_hours']} h of English speech (Opus + SRT), seed {corpus['seed']}; "
                  f"`{' '.join('--set ' + x for x in corpus['set'])}`. Floor: the pipeline's ffmpeg command on the same files, "
                  f"{floor['sequential']['wall_s']} s sequential ({floor['sequential']['x_real_time']}x real time, "
                  f"{floor['sequential']['cpu_s']} CPU s), {floor['parallel']['wall_s']} s with {floor['parallel']['processes']} processes.", ""]
        rows = []
        for name, run in corpus["runs"].items():
            label = "all stages" if name == "full" else "no model stages (`language.enabled=false`)"
            rows.append([label, run["hours_in"], run["wall_s"], run["audio_hours_per_core_hour"], run["cpu_s"], run["memory"]["peak_pss_mib"],
                         f"{run['vs_floor_sequential']}x / {run['vs_floor_parallel']}x", run.get("decode_stage_vs_floor_cpu"), m, v])
        lines += _table(["run", "audio h", "wall s", "audio h per core-h", "CPU s (tree)", "peak PSS MiB", "wall vs floor (1 / N procs)",
                         "decode stage CPU vs floor CPU", "machine", "versions"], rows)
        names = list(dict.fromkeys(n for run in corpus["runs"].values() for n in run["stages"]))
        rows = [[n] + [x for run in corpus["runs"].values() for x in ((run["stages"][n]["wall_s"], run["stages"][n]["cpu_s"]) if n in run["stages"] else (None, None))]
                for n in names]
        rows += [[f"driver phase: {n}"] + [x for run in corpus["runs"].values() for x in ((run["phases"][n]["wall_s"], None) if n in run["phases"] else (None, None))]
                 for n in dict.fromkeys(n for run in corpus["runs"].values() for n in run["phases"])]
        lines += ["Per stage (task seconds summed over workers; driver phases: wall seconds):", ""]
        lines += _table(["stage"] + [f"{'all stages' if k == 'full' else 'no models'}: {f}" for k in corpus["runs"] for f in ("wall s", "CPU s")], rows)
        lines += ["## Scaling", "", f"`{' '.join('--set ' + x for x in corpus['scaling_set'])}`", ""]
        rows = [[k, e["audio_hours"], e["sources"], e["wall_s"], e["time_vs_1x"], e.get("ray_init_s"), e.get("dedup_group_s"), e.get("stage_task_s"),
                 e.get("decode_task_s"), e["peak_pss_mib"], e["peak_pss_vs_1x"], e["peak_rss_sum_mib"], m] for k, e in corpus["scaling"].items()]
        lines += _table(["input", "audio h", "sources", "wall s", "time vs 1x", "Ray start s", "dedup groupby s", "stage task s (sum)", "decode task s",
                         "peak PSS MiB", "PSS vs 1x", "peak RSS sum MiB", "machine"], rows)
    dedup = results.get("dedup")
    if dedup:
        m, v = machine_cell(dedup["machine"]), versions_cell(dedup["machine"], ("datasketch", "numpy", "ray"))
        lines += ["## Dedup", "", f"MinHash signatures of {dedup['docs']:,} generated transcripts:", ""]
        lines += _table(["", "seconds", "docs/s", "machine", "versions"], [
            ["naive datasketch loop", dedup["naive"]["seconds"], dedup["naive"]["docs_per_s"], m, v],
            ["`compute_signatures`", dedup["compute_signatures"]["seconds"], dedup["compute_signatures"]["docs_per_s"], m, v],
            [f"**ratio** (identical: {dedup['signatures_identical']})", "", f"**{dedup['speedup']}x**", "", ""]])
        if dedup.get("cluster"):
            lines += ["Global dedup step on Ray (band keys grouped, pairs checked, clusters resolved; signatures not included):", ""]
            lines += _table(["docs", "blocks", "cluster s", "vs smallest", "duplicates found / planted", "machine", "versions"],
                            [[r["docs"], r["blocks"], r["cluster_s"], f"{r['cluster_s_vs_smallest']}x", f"{r['duplicates_found']} / {r['duplicates_planted']}", m, v]
                             for r in dedup["cluster"]["runs"]])
    transcribe = results.get("transcribe")
    if transcribe:
        m, v = machine_cell(transcribe["machine"]), versions_cell(transcribe["machine"], ("faster-whisper", "ctranslate2", "openai-whisper", "torch"))
        lines += ["## Transcription", "", f"{transcribe['files']} files, {transcribe['audio_seconds']} s of audio, beam {transcribe['beam_size']}, "
                  f"batch {transcribe['batch_size']} (`python -m jobs.bench transcribe`, not re-run by `all`):", ""]
        lines += _table(["system", "seconds", "x real time", "vs faster-whisper batched", "vs openai-whisper loop", "WER", "machine", "versions"],
                        [[name, r["seconds"], r["x_real_time"], r.get("vs_faster_whisper_batched"), r.get("vs_openai_whisper_loop"), f"{r['wer'] * 100:.1f} %", m, v]
                         for name, r in transcribe["results"].items()])
    return "\n".join(lines)


def write_summary(results_dir: Path = RESULTS) -> Path:
    results = {p.stem: json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))}
    path = results_dir / "summary.md"
    path.write_text(summary_markdown(results), encoding="utf-8")
    return path


def bench_all(args: argparse.Namespace) -> dict[str, Any]:
    """corpus and dedup (each writes its own JSON), then the Markdown table from every result present."""
    for name, fn in (("corpus", bench_corpus), ("dedup", bench_dedup)):
        result = fn(args)
        print(f"written: {write_result(name, result, None)}", file=sys.stderr)
        if name == "dedup" and not result.get("signatures_identical", True):
            return {"signatures_identical": False}
    path = write_summary()
    print(path.read_text())
    return {"summary": str(path)}


# --- command line ------------------------------------------------------------------------------------------

# --- transcribe ---------------------------------------------------------------------------------------------

FAITHFUL = ("keep", "duplicate", "all_uppercase", "all_lowercase", "missing_punctuation", "machine_generated_captions")


BENCH_ENGLISH = REPO / "bench" / "data" / "en"  # built by bench/english_set.py


def english_sample(repeat: int, folder: Path) -> list[tuple[Path, str]]:
    """English speech whose transcript is what is said, copied ``repeat`` times: (audio, reference). The benchmark
    set (``bench/data/en``, 60 clips, ~1,700 words) and the sample's faithful English recordings (~440 words):
    with fewer words, one word is too large a share of the WER to compare systems."""
    labels = [json.loads(line) for line in (REPO / "sample" / "labels.jsonl").read_text().splitlines() if line.strip()]
    chosen = [(REPO / "sample" / lab["audio"], lab["text"]) for lab in labels
              if lab.get("audio_language") == "en" and lab["expected"] in FAITHFUL and lab.get("duration_s")]
    references = BENCH_ENGLISH / "references.jsonl"
    if references.exists():
        chosen += [(BENCH_ENGLISH / r["audio"], r["text"]) for r in map(json.loads, references.read_text().splitlines())]
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(repeat):
        for source, text in chosen:
            target = folder / f"copy{k}_{source.name}"
            if not target.exists():
                target.write_bytes(source.read_bytes())
            files.append((target, text))
    return files


def bench_transcribe(args: argparse.Namespace) -> dict[str, Any]:
    """Throughput (audio seconds per wall second, model loading included) and WER of three ways to transcribe the
    same files with the same Whisper base weights on this machine."""
    import tempfile

    from pipeline.io.media import decode_audio
    from pipeline.eval.metrics import word_error_rate
    from pipeline.whisper.models import load_openai_whisper, resolve_model
    from pipeline.run.runner import RayOptions, init_ray

    work = Path(tempfile.mkdtemp(prefix="wspsr-bench-"))
    files = english_sample(args.repeat, work / "audio")
    references = [text for _, text in files]
    audio_s = sum(len(decode_audio(path)) / 16000 for path, _ in files)
    ref = resolve_model("base")
    systems: dict[str, Callable[[], list[str]]] = {}

    def wspsr(engine: str, timestamps: bool = True) -> Callable[[], list[str]]:
        def run() -> list[str]:
            import pyarrow.parquet as pq

            from jobs.transcribe import run as transcribe

            out = work / f"wspsr-{engine}-{timestamps}"
            transcribe(["--inputs", str(work / "audio"), "--out", str(out), "--quiet", "--formats", "parquet", "--engine", engine,
                        "--set", f"whisper.batch_windows={args.batch_size}", "--set", f"decoding.beam_size={args.beam_size}", "--overwrite",
                        "--set", f"decoding.without_timestamps={str(not timestamps).lower()}"]
                       + (["--set", f"whisper.compute_type={args.compute_type}"] if engine == "faster-whisper" else []))
            rows = pq.read_table(out / "transcripts").to_pylist()
            return [" ".join(r["text"] for r in sorted(rows, key=lambda r: r["segment_index"]) if r["source"].endswith(path.name) and not r["flag"]) for path, _ in files]
        return run

    def faster_whisper_batched() -> list[str]:
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        pipeline = BatchedInferencePipeline(WhisperModel(str(ref.ct2_dir), device="cpu", compute_type=args.compute_type))
        return [" ".join(s.text for s in pipeline.transcribe(str(path), batch_size=args.batch_size, beam_size=args.beam_size)[0]) for path, _ in files]

    def openai_whisper_loop() -> list[str]:
        model = load_openai_whisper(ref)
        return [model.transcribe(decode_audio(path).astype("float32") / 32768, fp16=False, beam_size=args.beam_size)["text"] for path, _ in files]

    init_ray(RayOptions(progress=False))  # a running cluster is the normal state of a job; its start is not timed
    # BatchedInferencePipeline decodes without timestamps (its default): the like-for-like comparison. wspsr's
    # default keeps timestamps (subtitle cues); the window's text after Whisper's "continue in the next 30 s"
    # signal is then lost, which costs a little WER.
    systems["wspsr transcribe (faster-whisper engine, no timestamps)"] = wspsr("faster-whisper", timestamps=False)
    systems["wspsr transcribe (faster-whisper engine)"] = wspsr("faster-whisper")
    systems["wspsr transcribe (openai-whisper engine)"] = wspsr("openai-whisper")
    systems["faster-whisper BatchedInferencePipeline"] = faster_whisper_batched
    systems["openai-whisper transcribe() loop"] = openai_whisper_loop
    results = {}
    for name, fn in systems.items():
        if args.only and args.only not in name:
            continue
        seconds, texts = _timed(fn)
        results[name] = {"seconds": round(seconds, 2), "x_real_time": round(audio_s / seconds, 2), "wer": round(word_error_rate(references, texts), 4)}
        print(f"{name}: {results[name]}", file=sys.stderr)
    base_fw = results.get("faster-whisper BatchedInferencePipeline", {}).get("x_real_time")
    base_ow = results.get("openai-whisper transcribe() loop", {}).get("x_real_time")
    for entry in results.values():
        entry["vs_faster_whisper_batched"] = round(entry["x_real_time"] / base_fw, 2) if base_fw else None
        entry["vs_openai_whisper_loop"] = round(entry["x_real_time"] / base_ow, 2) if base_ow else None
    return {
        "benchmark": "transcribe",
        "what": "same files, Whisper base, CPU; throughput includes model loading; WER against the sample's transcripts",
        "files": len(files), "audio_seconds": round(audio_s, 1), "batch_size": args.batch_size, "beam_size": args.beam_size,
        "results": results, "machine": machine_info(),
    }


BENCHMARKS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "dedup": bench_dedup, "transcribe": bench_transcribe, "corpus": bench_corpus, "all": bench_all,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    def dedup_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--docs", type=int, default=20000, help="generated transcripts (default 20000)")
        parser.add_argument("--batch-size", type=int, default=1000, help="rows per compute_signatures call, as a Ray block (default 1000)")
        parser.add_argument("--cluster-docs", type=int, default=1000, help="time the global dedup step on Ray for N and 10N documents (default 1000; 0: skip)")

    def corpus_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--hours", type=float, default=0.2, help="audio hours of the generated workload (default 0.2)")
        parser.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4], help="workload multiples for the scaling runs (default 1 2 4)")
        parser.add_argument("--scaling-models", action="store_true", help="scaling runs with the language-ID model stages too (slow on CPU)")
        parser.add_argument("--sources-per-block", type=int, default=2,
                            help="ray.sources_per_block for the runs (default 2: a 0.2 h workload is 8 sources; the job's default of 16 would put it all in one task on one core)")

    dedup = commands.add_parser("dedup", help="MinHash signatures: naive datasketch loop vs compute_signatures; dedup cluster time for N and 10N docs")
    dedup_arguments(dedup)
    dedup.add_argument("--seed", type=int, default=0, help="of the generated texts")
    dedup.add_argument("--out", help=f"result file (default {RESULTS.relative_to(REPO)}/dedup.json)")
    corpus = commands.add_parser("corpus", help="corpus job throughput, per-stage breakdown, ffmpeg floor, 1x/2x/4x scaling")
    corpus_arguments(corpus)
    corpus.add_argument("--seed", type=int, default=0, help="of the generated workload")
    corpus.add_argument("--out", help=f"result file (default {RESULTS.relative_to(REPO)}/corpus.json)")
    every = commands.add_parser("all", help="corpus and dedup, then bench/results/summary.md from every result present (transcribe is not re-run)")
    corpus_arguments(every)
    dedup_arguments(every)
    every.add_argument("--seed", type=int, default=0, help="of the generated workload and texts")
    every.add_argument("--out", help=argparse.SUPPRESS)
    transcribe = commands.add_parser("transcribe", help="wspsr transcribe vs faster-whisper batched vs openai-whisper, same audio")
    transcribe.add_argument("--repeat", type=int, default=1, help="copies of the English speech set (default 1: about 14 minutes)")
    transcribe.add_argument("--batch-size", type=int, default=8, help="windows per forward pass for the batched systems")
    transcribe.add_argument("--beam-size", type=int, default=5, help="beam search width for every system (default 5: faster-whisper's and the whisper CLI's default)")
    transcribe.add_argument("--compute-type", default="int8", help="CTranslate2 compute type for both faster-whisper systems (default int8)")
    transcribe.add_argument("--only", help="run only the systems whose name contains this")
    transcribe.add_argument("--out", help=f"result file (default {RESULTS.relative_to(REPO)}/transcribe.json)")
    args = parser.parse_args(argv)
    if args.benchmark in ("dedup", "all") and (args.docs < 1 or args.batch_size < 1 or args.cluster_docs < 0):
        parser.error("--docs and --batch-size must be positive")
    if args.benchmark in ("corpus", "all") and (args.hours <= 0 or args.sources_per_block < 1 or 1 not in args.scales):
        parser.error("--hours and --sources-per-block must be positive, and --scales must include 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = BENCHMARKS[args.benchmark](args)
    if args.benchmark == "all":
        return 0 if result.get("signatures_identical", True) else 1
    path = write_result(args.benchmark, result, args.out)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    print(f"written: {path}", file=sys.stderr)
    return 0 if result.get("signatures_identical", True) else 1


if __name__ == "__main__":
    sys.exit(main())
