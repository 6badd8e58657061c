"""Generated inputs: a folder of real-speech recordings with SRT cues for the corpus job, transcript-like texts (with
planted near-duplicates) for dedup, and the English set for transcription."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from bench.machine import REPO


WORK = REPO / "bench" / "work"  # generated workloads and benchmark outputs (gitignored)

MAX_CLIP_S = 28.0  # longer clips would be one cue over 30 s (rejected as cue_too_long): left out of the pool

BENCH_ENGLISH = REPO / "bench" / "data" / "en"  # built by bench/english_set.py

FAITHFUL = ("keep", "duplicate", "audio_duplicate", "all_uppercase", "all_lowercase", "missing_punctuation", "machine_generated_captions")

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
                     "transcript_format": pa.array(["txt"] * count), "ref": pa.array(range(count), pa.int64())})

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

def english_sample(repeat: int, folder: Path) -> list[tuple[Path, str]]:
    """English speech whose transcript is what is said, copied ``repeat`` times: (audio, reference). The benchmark
    set (``bench/data/en``, 60 clips, ~1,700 words) and the sample's faithful English recordings (~440 words):
    with fewer words, one word is too large a share of the WER to compare systems."""
    labels = [json.loads(line) for line in (REPO / "sample" / "labels.jsonl").read_text().splitlines() if line.strip()]
    chosen = [(REPO / "sample" / lab["audio"], lab["text"]) for lab in labels
              if lab.get("audio_language") == "en" and lab["expected"] in FAITHFUL and lab.get("duration_s")
              # English then Spanish, or condensed captions: not an English reference
              and lab["kind"] not in ("code_switched_real_speech", "reupload_condensed_captions_real_speech")]
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
