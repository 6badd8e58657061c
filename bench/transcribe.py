"""Transcription: wspsr transcribe against faster-whisper's batched pipeline and the openai-whisper loop on the same
files, throughput and WER."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from bench.machine import _timed, machine_info
from bench.workload import english_sample


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

    def wspsr(engine: str, timings: str = "aligned") -> Callable[[], list[str]]:
        def run() -> list[str]:
            from jobs.transcribe import run as transcribe
            from pipeline.io.commit import read_committed

            out = work / f"wspsr-{engine}-{timings}"
            transcribe(["--inputs", str(work / "audio"), "--out", str(out), "--quiet", "--formats", "parquet", "--engine", engine,
                        "--set", f"whisper.batch_windows={args.batch_size}", "--set", f"decoding.beam_size={args.beam_size}", "--overwrite",
                        "--set", f"whisper.timings={timings}"]
                       + (["--set", f"whisper.compute_type={args.compute_type}"] if engine == "faster-whisper" else []))
            rows = read_committed(out, "transcripts").to_pylist()
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
    # The headline row is wspsr's default: text decoded without timestamp tokens (as BatchedInferencePipeline does by
    # default), segments cut from word timings aligned on the same encoder output. The timestamp-token mode (with
    # resumed decodes) is the other row.
    systems["wspsr transcribe (default: faster-whisper engine, timings aligned)"] = wspsr("faster-whisper")
    systems["wspsr transcribe (faster-whisper engine, timings from timestamp tokens)"] = wspsr("faster-whisper", "tokens")
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
