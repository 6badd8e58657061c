"""Language per window and language-aware rescoring, measured on recordings that switch language.

    python -m bench languages [--engine faster-whisper] [--k 1 2 3]

Recordings built from the real and read speech of ``tests/data/speech`` (JFK and 27 clips in 9 languages): every
non-English clip after JFK and before it, 0.5 s apart (one window holding two languages: the hard case, where one
language token must serve both), and every clip alone (monolingual windows: rescoring must not hurt them). Each
set goes through ``transcribe_windows`` with ``whisper.rescore_languages`` = each K (1 = off): how often the chosen
language changes against K = 1, how often a monolingual window's language is right, and WER (space-delimited
languages) and CER (every language, spaces ignored) against the concatenated references.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import pyarrow as pa

from bench.machine import machine_info
from bench.windows import _speech_items

SPACELESS = {"zh", "ja"}


def recordings() -> dict[str, list[tuple[str, set[str], np.ndarray, str]]]:
    """{set: [(name, languages, pcm, reference)]}."""
    items = _speech_items()
    jfk = items[0]
    gap = np.zeros(8000, np.int16)
    mixed, mono = [], []
    for name, language, pcm, text in items:
        mono.append((name, {language}, pcm, text))
        if language != "en":
            mixed.append((f"jfk+{name}", {"en", language}, np.concatenate([jfk[2], gap, pcm]), f"{jfk[3]} {text}"))
            mixed.append((f"{name}+jfk", {"en", language}, np.concatenate([pcm, gap, jfk[2]]), f"{text} {jfk[3]}"))
    return {"mixed": mixed, "monolingual": mono}


def _transcribe(engine: Any, set_items: list, k: int) -> tuple[list[dict[str, Any]], float]:
    from pipeline.whisper.engines import DecodingOptions
    from stages.transcribe_windows import HallucinationOptions, TranscribeStageOptions, WhisperOptions, transcribe_windows

    windows = [[{"window_index": 0, "channel": None, "start_ms": 0, "end_ms": len(pcm) // 16, "pcm": pcm.tobytes()}] for _, _, pcm, _ in set_items]
    table = pa.table({"source_id": [name for name, *_ in set_items], "speech_windows": windows})
    options = TranscribeStageOptions(WhisperOptions(engine=engine.name, rescore_languages=k), DecodingOptions(), HallucinationOptions())
    started = time.perf_counter()
    rows = transcribe_windows(table, options, engine).to_pylist()
    return rows, time.perf_counter() - started


def bench_languages(args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.eval.metrics import char_errors, word_errors
    from pipeline.whisper.engines import load_engine

    engine = load_engine(args.engine, args.model)
    results: dict[str, Any] = {}
    for set_name, set_items in recordings().items():
        chosen: dict[int, list[str]] = {}
        results[set_name] = {"recordings": len(set_items)}
        for k in args.k:
            rows, seconds = _transcribe(engine, set_items, k)
            languages = [row["language"] for row in rows]
            chosen[k] = languages
            texts = [" ".join(s["text"] for s in row["segments"]) for row in rows]
            cer = [char_errors(ref, hyp) for (_, _, _, ref), hyp in zip(set_items, texts)]
            spaced = [(ref, hyp) for (_, langs, _, ref), hyp in zip(set_items, texts) if not langs & SPACELESS]
            wer = [word_errors(ref, hyp, english=False) for ref, hyp in spaced]
            entry = {
                "seconds": round(seconds, 1),
                "cer": round(sum(e for e, _ in cer) / max(sum(n for _, n in cer), 1), 4),
                "wer_space_delimited": round(sum(e for e, _ in wer) / max(sum(n for _, n in wer), 1), 4),
                "language_in_recording": round(np.mean([lang in langs for (_, langs, _, _), lang in zip(set_items, languages)]), 4),
                "language_changed_vs_k1": round(np.mean([a != b for a, b in zip(languages, chosen[args.k[0]])]), 4),
            }
            if set_name == "mixed":  # which of the two languages the window was decoded in
                entry["decoded_in_english"] = round(np.mean([lang == "en" for lang in languages]), 4)
            results[set_name][f"k={k}"] = entry
            print(set_name, k, entry, flush=True)
    return {"benchmark": "languages", "engine": args.engine, "model": args.model, "k": args.k, "decoding": "greedy (wspsr's default)",
            "results": results, "machine": machine_info()}
