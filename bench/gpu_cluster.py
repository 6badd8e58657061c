"""The full-job GPU benchmark (issue 20, part a): ``wspsr transcribe`` on a GPU cluster against faster-whisper's
``BatchedInferencePipeline`` on the same GPU and model, over the generated real-speech English set.

Rows: wspsr on 1 GPU (``ray.model_actors_max=1``), wspsr on every GPU of the cluster (the default autoscaling pool),
and faster-whisper batched on one GPU. Reported per row: audio hours per GPU-hour (audio hours / (wall hours x GPUs
the row used)), the real-time factor, WER against the set's transcripts, and the mean GPU utilisation sampled by
``nvidia-smi`` every 0.5 s over the row. Scaling is the N-GPU row's real-time factor over the 1-GPU row's.

    make bench-gpu                       # python -m bench gpu-cluster --model large-v3
    python -m bench gpu-cluster --model large-v3-turbo --repeat 4 --batch-size 16 [--address auto]

It needs the model on disk (``--model`` resolves as everywhere: $WSPSR_MODELS/whisper-NAME/ ...), CUDA builds of
torch and CTranslate2, and GPUs; without a GPU it stops with a message instead of timing a CPU.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

from bench.machine import _timed, machine_info
from bench.workload import english_sample


class NvidiaSmiSampler:
    """Mean utilisation of every GPU of this node, from ``nvidia-smi`` every 0.5 s."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> "NvidiaSmiSampler":
        if shutil.which("nvidia-smi"):
            self._process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "500"],
                stdout=subprocess.PIPE, text=True,
            )
            threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            if line.strip().isdigit():
                self.samples.append(float(line))

    def __exit__(self, *exc: Any) -> None:
        if self._process is not None:
            self._process.terminate()

    @property
    def mean(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def bench_gpu_cluster(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from pipeline.eval.metrics import word_error_rate
    from pipeline.io.media import decode_audio
    from pipeline.run.runner import RayOptions, init_ray
    from pipeline.whisper.models import prepare_model

    init_ray(RayOptions(address=args.address, progress=False))
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if gpus == 0:
        raise SystemExit("bench gpu-cluster: the Ray cluster has no GPU; run it where `ray status` shows GPUs")
    ref = prepare_model(args.model, "faster-whisper")  # converted once, on disk, when only a checkpoint exists
    work = Path(tempfile.mkdtemp(prefix="wspsr-bench-gpu-"))
    files = english_sample(args.repeat, work / "audio")
    references = [text for _, text in files]
    audio_s = sum(len(decode_audio(path)) / 16000 for path, _ in files)

    def wspsr(actors_max: int) -> Callable[[], list[str]]:
        def run() -> list[str]:
            from jobs.transcribe import run as transcribe
            from pipeline.io.commit import read_committed

            out = work / f"wspsr-{actors_max}"
            transcribe(["--inputs", str(work / "audio"), "--out", str(out), "--quiet", "--formats", "parquet", "--model", args.model,
                        "--set", f"whisper.batch_windows={args.batch_size}", "--set", f"decoding.beam_size={args.beam_size}",
                        "--set", f"whisper.compute_type={args.compute_type}", "--set", f"ray.model_actors_max={actors_max}", "--overwrite"])
            rows = read_committed(out, "transcripts").to_pylist()
            return [" ".join(r["text"] for r in sorted(rows, key=lambda r: r["segment_index"]) if r["source"].endswith(path.name) and not r["flag"])
                    for path, _ in files]
        return run

    def faster_whisper_batched() -> list[str]:
        from faster_whisper import BatchedInferencePipeline, WhisperModel

        pipeline = BatchedInferencePipeline(WhisperModel(str(ref.ct2_dir), device="cuda", compute_type=args.compute_type))
        return [" ".join(s.text for s in pipeline.transcribe(str(path), batch_size=args.batch_size, beam_size=args.beam_size)[0])
                for path, _ in files]

    systems = {"wspsr transcribe, 1 GPU": (wspsr(1), 1), f"wspsr transcribe, {gpus} GPUs (default pool)": (wspsr(gpus), gpus),
               "faster-whisper BatchedInferencePipeline, 1 GPU": (faster_whisper_batched, 1)}
    if gpus == 1:
        del systems[f"wspsr transcribe, {gpus} GPUs (default pool)"]
    results = {}
    for name, (fn, used) in systems.items():
        with NvidiaSmiSampler() as sampler:
            seconds, texts = _timed(fn)
        results[name] = {
            "gpus": used, "seconds": round(seconds, 1), "x_real_time": round(audio_s / seconds, 1),
            "audio_hours_per_gpu_hour": round(audio_s / seconds / used, 1), "wer": round(word_error_rate(references, texts), 4),
            "gpu_util_mean_pct": sampler.mean,
        }
        print(f"{name}: {results[name]}", file=sys.stderr)
    one = results["wspsr transcribe, 1 GPU"]["x_real_time"]
    fw = results["faster-whisper BatchedInferencePipeline, 1 GPU"]["audio_hours_per_gpu_hour"]
    for entry in results.values():
        entry["vs_faster_whisper_batched_per_gpu"] = round(entry["audio_hours_per_gpu_hour"] / fw, 2)
        entry["scaling_vs_1_gpu"] = round(entry["x_real_time"] / one, 2)
    return {"benchmark": "gpu-cluster", "model": args.model, "files": len(files), "audio_seconds": round(audio_s, 1), "gpus": gpus,
            "batch_size": args.batch_size, "beam_size": args.beam_size, "compute_type": args.compute_type,
            "systems": results, "machine": machine_info()}
