"""Benchmarks of wspsr's hot paths, one subcommand each; results are printed and written as JSON.

    python -m bench all [--hours 0.2]          # corpus + dedup, then bench/results/summary.md (make bench HOURS=0.2)
    python -m bench corpus [--hours 0.2] [--scales 1 2 4] [--sources-per-block 2]
    python -m bench dedup [--docs 20000] [--batch-size 1000] [--cluster-docs 1000] [--seed 0] [--out bench/results/dedup.json]
    python -m bench transcribe [--repeat 1] [--batch-size 8]
    python -m bench agreement [--model base]       # transcript agreement: matched vs mismatched pairs (bench/windows.py)
    python -m bench scoring [--windows 32]         # score_windows against the bare encoder, seconds per window
    python -m bench languages [--k 1 2 3]          # language per window and language-aware rescoring (bench/languages.py)
    python -m bench audio-dedup [--fingerprints 1000000]  # fingerprinting's cost in decoding; the audio dedup step at scale
    python -m bench gpu-cluster [--model large-v3]  # the full job on a GPU cluster vs faster-whisper batched (make bench-gpu)
    python bench/gpu_engine.py [--shapes base large-v3]  # Ray-free engine check on a bare GPU machine (tools/gpu-engine-check)

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
import sys
from typing import Any, Callable

from bench.audio_dedup import bench_audio_dedup
from bench.corpus import bench_corpus
from bench.dedup import bench_dedup
from bench.gpu_cluster import bench_gpu_cluster
from bench.languages import bench_languages
from bench.machine import REPO, RESULTS, write_result
from bench.scale import bench_scale
from bench.summary import write_summary
from bench.transcribe import bench_transcribe
from bench.windows import bench_agreement, bench_scoring


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

BENCHMARKS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "dedup": bench_dedup, "transcribe": bench_transcribe, "corpus": bench_corpus, "all": bench_all, "scale": bench_scale,
    "agreement": bench_agreement, "scoring": bench_scoring, "languages": bench_languages, "gpu-cluster": bench_gpu_cluster,
    "audio-dedup": bench_audio_dedup,
}

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    scale = commands.add_parser("scale", help="the corpus job over generated manifests of N text-only sources: time, driver memory, dedup recall")
    scale.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000], help="sources per run (default 100000 1000000)")
    scale.add_argument("--seed", type=int, default=0, help="of the generated texts")
    scale.add_argument("--cpus", type=int, help="ray.num_cpus for the runs (default: all)")
    scale.add_argument("--gzip", action="store_true", help="gzip the generated manifests")
    scale.add_argument("--out", help=f"result file (default {RESULTS.relative_to(REPO)}/scale.json)")
    agreement = commands.add_parser("agreement", help="transcript agreement of matched vs mismatched speech and text, both engines")
    agreement.add_argument("--model", default="base", help="Whisper model (default base)")
    agreement.add_argument("--out", help=f"result file (default {RESULTS.relative_to(REPO)}/agreement.json)")
    scoring = commands.add_parser("scoring", help="score_windows seconds per window against the bare batched encoder, both engines")
    scoring.add_argument("--model", default="base", help="Whisper model (default base)")
    scoring.add_argument("--windows", type=int, default=32, help="30 s windows of English speech (default 32)")
    scoring.add_argument("--batch-windows", type=int, default=8, help="windows per encoder pass (default 8: language.batch_windows)")
    scoring.add_argument("--repeat", type=int, default=2, help="timed repetitions, the fastest counts (default 2)")
    scoring.add_argument("--out", help=f"result file (default {RESULTS.relative_to(REPO)}/scoring.json)")
    languages = commands.add_parser("languages", help="language per window and language-aware rescoring on recordings that switch language")
    languages.add_argument("--engine", default="faster-whisper", help="default faster-whisper (wspsr transcribe's)")
    languages.add_argument("--model", default="base", help="Whisper model (default base)")
    languages.add_argument("--k", type=int, nargs="+", default=[1, 2, 3], help="whisper.rescore_languages values (default 1 2 3; the first is the baseline)")
    languages.add_argument("--out", help=f"result file (default {RESULTS.relative_to(REPO)}/languages.json)")
    gpu = commands.add_parser("gpu-cluster", help="the transcribe job on a GPU cluster (1 and N GPUs) vs faster-whisper batched on one GPU")
    gpu.add_argument("--model", default="large-v3", help="Whisper model on disk (default large-v3)")
    gpu.add_argument("--repeat", type=int, default=4, help="copies of the English speech set (default 4: about an hour)")
    gpu.add_argument("--batch-size", type=int, default=16, help="windows per forward pass for both systems (default 16)")
    gpu.add_argument("--beam-size", type=int, default=5, help="beam search width (default 5)")
    gpu.add_argument("--compute-type", default="float16", help="CTranslate2 compute type (default float16)")
    gpu.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    gpu.add_argument("--out", help=f"result file (default {RESULTS.relative_to(REPO)}/gpu-cluster.json)")
    audio = commands.add_parser("audio-dedup", help="fingerprinting's cost in decoding; the audio dedup step over N generated fingerprints")
    audio.add_argument("--fingerprints", type=int, default=1_000_000, help="generated fingerprints for the global step (default 1000000; 0: skip)")
    audio.add_argument("--splits", type=int, default=200, help="read tasks that generate them (default 200)")
    audio.add_argument("--decode-files", type=int, default=60, help="files of bench/data/en decoded with and without the fingerprint (default 60)")
    audio.add_argument("--repeat", type=int, default=3, help="decode passes, the fastest counts (default 3)")
    audio.add_argument("--seed", type=int, default=0)
    audio.add_argument("--out", help=f"result file (default {RESULTS.relative_to(REPO)}/audio-dedup.json)")
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
