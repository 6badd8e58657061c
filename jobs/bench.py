"""Benchmarks of wspsr's hot paths, one subcommand each; results are printed and written as JSON.

    python -m jobs.bench dedup [--docs 20000] [--batch-size 1000] [--seed 0] [--out bench/results/dedup.json]
    python -m jobs.bench transcribe [--repeat 1] [--batch-size 8]

``dedup``: MinHash signatures of generated transcripts, the naive per-document datasketch loop
(``m = MinHash(...); for s in shingles: m.update(s)``) against ``stages.dedup.compute_signatures`` on the same
texts in one process; the two must give the same signatures.
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
    for package in ("datasketch", "numpy", "pyarrow", "ray", "torch", "openai-whisper", "faster-whisper", "ctranslate2"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    return info


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
    return result


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

    from pipeline.media import decode_audio
    from pipeline.metrics import word_error_rate
    from pipeline.models import load_openai_whisper, resolve_model
    from pipeline.runner import RayOptions, init_ray

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
                        "--set", f"whisper.batch_windows={args.batch_size}", "--set", f"whisper.beam_size={args.beam_size}", "--overwrite",
                        "--set", f"whisper.without_timestamps={str(not timestamps).lower()}"]
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


BENCHMARKS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {"dedup": bench_dedup, "transcribe": bench_transcribe}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    dedup = commands.add_parser("dedup", help="MinHash signatures: naive datasketch loop vs compute_signatures")
    dedup.add_argument("--docs", type=int, default=20000, help="generated transcripts (default 20000)")
    dedup.add_argument("--batch-size", type=int, default=1000, help="rows per compute_signatures call, as a Ray block (default 1000)")
    dedup.add_argument("--seed", type=int, default=0, help="of the generated texts")
    dedup.add_argument("--out", help=f"result file (default {RESULTS.relative_to(REPO)}/dedup.json)")
    transcribe = commands.add_parser("transcribe", help="wspsr transcribe vs faster-whisper batched vs openai-whisper, same audio")
    transcribe.add_argument("--repeat", type=int, default=1, help="copies of the English speech set (default 1: about 14 minutes)")
    transcribe.add_argument("--batch-size", type=int, default=8, help="windows per forward pass for the batched systems")
    transcribe.add_argument("--beam-size", type=int, default=5, help="beam search width for every system (default 5: faster-whisper's and the whisper CLI's default)")
    transcribe.add_argument("--compute-type", default="int8", help="CTranslate2 compute type for both faster-whisper systems (default int8)")
    transcribe.add_argument("--only", help="run only the systems whose name contains this")
    transcribe.add_argument("--out", help=f"result file (default {RESULTS.relative_to(REPO)}/transcribe.json)")
    args = parser.parse_args(argv)
    if args.benchmark == "dedup" and (args.docs < 1 or args.batch_size < 1):
        parser.error("--docs and --batch-size must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = BENCHMARKS[args.benchmark](args)
    path = write_result(args.benchmark, result, args.out)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    print(f"written: {path}", file=sys.stderr)
    return 0 if result.get("signatures_identical", True) else 1


if __name__ == "__main__":
    sys.exit(main())
