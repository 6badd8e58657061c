"""The engine-level GPU check (issue 20, part b): wspsr's batched openai-whisper engine against openai-whisper's own
sequential ``transcribe()`` on the same device, the same model and the same audio, in one run.

It needs only PyTorch, NumPy and the openai-whisper package (no Ray, no CTranslate2, no pyarrow, no weights), so it
runs on a bare GPU machine with a few MB of carried files (``tools/gpu-engine-check`` prepares and runs it). The
models have random weights of Whisper base's and large-v3's shapes, built from ``ModelDimensions``; the audio is
generated speech-like sound (voiced harmonics under moving formants, syllable-rate envelopes, pauses). A
random-weight model never stops early, so every window decodes the full sample length: both systems do the most
work a window can cost, which is what a GPU's throughput is judged on.

Rows, per shape:
- ``greedy``: temperature 0 only (no fallback): batched windows against the sequential loop;
- ``fallback``: Whisper's default thresholds and temperatures; a random model's repetitive text fails them, so
  every window is retried at each temperature: batched retries against transcribe()'s per-window retries.

Reported: windows per second, audio hours per GPU-hour, the speed-up, peak GPU memory, and GPU utilisation sampled
every 0.2 s (``torch.cuda.utilization``, NVML) over each timed section.

    python bench/gpu_engine.py [--shapes base large-v3] [--windows 32] [--fallback-windows 8] [--batch 16] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root, when run as a file

SAMPLE_RATE = 16000
WINDOW_S = 30
SHAPES = {  # Whisper's published dimensions (openai-whisper's checkpoints' "dims")
    "base": dict(n_mels=80, n_audio_state=512, n_audio_head=8, n_audio_layer=6, n_vocab=51865, n_text_state=512, n_text_head=8, n_text_layer=6),
    "large-v3": dict(n_mels=128, n_audio_state=1280, n_audio_head=20, n_audio_layer=32, n_vocab=51866, n_text_state=1280, n_text_head=20, n_text_layer=32),
    "large-v3-turbo": dict(n_mels=128, n_audio_state=1280, n_audio_head=20, n_audio_layer=32, n_vocab=51866, n_text_state=1280, n_text_head=20, n_text_layer=4),
}


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """Voiced sound with speech's structure: a gliding pitch (90-250 Hz) and its harmonics shaped by two formants that
    move per syllable (about 4 per second), syllable envelopes, breath noise, and pauses between phrases."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    out = np.zeros(n, np.float32)
    position = 0
    while position < n:
        phrase = int(rng.uniform(1.5, 4.0) * SAMPLE_RATE)
        end = min(n, position + phrase)
        span = t[position:end] - t[position]
        pitch = rng.uniform(90, 250) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.2, 0.8) * span))
        phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
        rate = rng.uniform(3.0, 5.5)
        syllable = np.floor(span * rate)
        f1 = 300 + 500 * ((np.sin(syllable * 1.7 + seed) + 1) / 2)
        f2 = 900 + 1500 * ((np.sin(syllable * 2.3 + 2 * seed) + 1) / 2)
        voiced = np.zeros(end - position)
        for k in range(1, 30):
            harmonic = k * pitch
            gain = np.exp(-((harmonic - f1) / 120) ** 2) + 0.6 * np.exp(-((harmonic - f2) / 180) ** 2) + 0.02
            voiced += gain * np.sin(k * phase)
        envelope = np.sin(np.pi * ((span * rate) % 1.0)) ** 2
        noise = rng.normal(0, 0.05, end - position)
        out[position:end] = (0.2 * voiced * envelope + noise * envelope).astype(np.float32)
        position = end + int(rng.uniform(0.2, 0.8) * SAMPLE_RATE)
    return np.clip(out / (np.abs(out).max() + 1e-9) * 0.5, -1, 1).astype(np.float32)


class UtilisationSampler:
    """GPU utilisation (NVML, via torch) every 0.2 s while a section runs."""

    def __init__(self, device: str):
        self.device, self.samples, self._stop = device, [], threading.Event()

    def __enter__(self) -> "UtilisationSampler":
        import torch

        if self.device == "cuda":
            try:
                torch.cuda.utilization()
            except Exception:  # no NVML: no figure, the rest still runs
                return self

            def sample() -> None:
                while not self._stop.wait(0.2):
                    self.samples.append(torch.cuda.utilization())

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()

    @property
    def mean(self) -> float | None:
        return round(float(np.mean(self.samples)), 1) if self.samples else None


def timed(device: str, fn: Callable[[], Any]) -> tuple[float, float | None, Any]:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    with UtilisationSampler(device) as sampler:
        started = time.perf_counter()
        result = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
    return seconds, sampler.mean, result


def bench_shape(shape: str, args: argparse.Namespace, device: str) -> dict[str, Any]:
    import torch
    import whisper

    from pipeline.whisper.engines import DecodingOptions, OpenAIWhisperEngine
    from pipeline.whisper.models import model_dims, random_whisper

    model = random_whisper(model_dims(**SHAPES[shape]), seed=0)
    engine = OpenAIWhisperEngine(None, device, model=model)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rows = []
    for mode, windows in (("greedy", args.windows), ("fallback", args.fallback_windows)):
        if windows <= 0:
            continue
        audio = speech_like(windows * WINDOW_S, seed=windows)
        cuts = [audio[i * WINDOW_S * SAMPLE_RATE:(i + 1) * WINDOW_S * SAMPLE_RATE] for i in range(windows)]
        temperatures = (0.0,) if mode == "greedy" else (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
        # Without timestamp tokens on both sides (wspsr's default decodes text so): transcribe() then moves on by whole
        # windows, so both systems decode the same windows.
        ours = DecodingOptions(language="en", temperatures=temperatures, without_timestamps=True)
        engine.transcribe(cuts[:2], DecodingOptions(language="en", temperatures=(0.0,)))  # warm-up: kernels, allocator

        def batched() -> list[Any]:
            out = []
            for start in range(0, len(cuts), args.batch):
                out += engine.transcribe(cuts[start:start + args.batch], ours)
            return out

        def sequential() -> dict[str, Any]:
            return whisper.transcribe(engine.model, audio, language="en", temperature=temperatures, fp16=engine.fp16,
                                      condition_on_previous_text=False, without_timestamps=True, verbose=None)

        ours_s, ours_util, results = timed(device, batched)
        theirs_s, theirs_util, _ = timed(device, sequential)
        hours = windows * WINDOW_S / 3600
        rows.append({
            "shape": shape, "mode": mode, "windows": windows, "batch": args.batch,
            "retried_windows": sum(r.temperature > 0 for r in results),
            "wspsr_batched_s": round(ours_s, 2), "openai_transcribe_s": round(theirs_s, 2),
            "wspsr_windows_per_s": round(windows / ours_s, 3), "openai_windows_per_s": round(windows / theirs_s, 3),
            "wspsr_audio_hours_per_gpu_hour": round(hours / (ours_s / 3600), 1),
            "openai_audio_hours_per_gpu_hour": round(hours / (theirs_s / 3600), 1),
            "speedup": round(theirs_s / ours_s, 2),
            "gpu_util_mean_pct": {"wspsr": ours_util, "openai": theirs_util},
        })
        print(json.dumps(rows[-1]), flush=True)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    params = sum(p.numel() for p in model.parameters())
    del engine, model
    if device == "cuda":
        torch.cuda.empty_cache()
    return {"shape": shape, "parameters_millions": round(params / 1e6, 1), "peak_gpu_memory_gib": round(peak, 2) if peak else None, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["base", "large-v3"], choices=list(SHAPES))
    parser.add_argument("--windows", type=int, default=32, help="30 s windows in the greedy row (default 32)")
    parser.add_argument("--fallback-windows", type=int, default=8, help="windows in the fallback row (default 8; 0: skip)")
    parser.add_argument("--batch", type=int, default=16, help="windows per batched call (default 16)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    parser.add_argument("--out", type=Path, default=None, help="write gpu_engine.json here")
    args = parser.parse_args(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    machine = {"device": torch.cuda.get_device_name(0) if device == "cuda" else f"cpu ({os.cpu_count()} cores)",
               "torch": torch.__version__, "python": platform.python_version()}
    print(json.dumps(machine), flush=True)
    result = {"machine": machine, "shapes": [bench_shape(shape, args, device) for shape in args.shapes]}
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_engine.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
