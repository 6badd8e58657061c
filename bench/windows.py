"""Window scoring: how well the transcript-agreement score separates right transcripts from wrong ones
(``agreement``), and what scoring costs against the bare encoder (``scoring``).

``agreement``: every clip of ``tests/data/speech`` (27 short read clips in nine languages, with their texts) and
``tests/data/jfk.flac`` (real speech, human transcript) scored with its own text (matched) and with the text of each
other clip of its language, plus the real English speech with other English texts (mismatched), through
``Engine.score`` in both engines. Prints the score distributions the thresholds in ``stages/languages.py`` were
set from (docs/corpus.md, "How the agreement threshold was set").

``scoring``: N windows of 30 s English speech (the clips of ``bench/data/en`` joined, each window with its text),
the ``score_windows`` stage over them in one block against the engine's bare batched encoder (log-mel features
and the encoder forward, nothing else) on the same audio in the same process: seconds per window and their ratio.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from bench.machine import REPO, machine_info

SPEECH = REPO / "tests" / "data" / "speech"
JFK = REPO / "tests" / "data" / "jfk.flac"
JFK_TEXT = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
OTHER_JFK_TEXT = "We observe today not a victory of party but a celebration of freedom, symbolizing an end as well as a beginning."
ENGINES = ("faster-whisper", "openai-whisper")


def _speech_items() -> list[tuple[str, str, np.ndarray, str]]:
    from pipeline.io.media import decode_audio

    items = [("jfk", "en", decode_audio(JFK), JFK_TEXT)]
    for line in (SPEECH / "references.jsonl").read_text(encoding="utf-8").splitlines():
        ref = json.loads(line)
        if ref["text"]:
            items.append((ref["audio"].removesuffix(".flac"), ref["language"], decode_audio(SPEECH / ref["audio"]), ref["text"]))
    return items


def agreement_pairs() -> list[tuple[str, str, str, str, np.ndarray, str]]:
    """(kind, audio name, text name, language, audio, text)."""
    from pipeline.io.media import decode_audio

    items = _speech_items()
    jfk = items[0]
    pairs = []
    for a in items:
        pairs.append(("matched", a[0], a[0], a[1], a[2], a[3]))
        pairs += [("mismatched", a[0], b[0], a[1], a[2], b[3]) for b in items if b is not a and b[1] == a[1]]
    pairs.append(("mismatched", "jfk", "another jfk passage", "en", jfk[2], OTHER_JFK_TEXT))
    conversation = decode_audio(SPEECH / "conversation_en.flac")[: 16000 * 30]
    pairs.append(("mismatched", "conversation_en", "jfk", "en", conversation, JFK_TEXT))
    pairs.append(("partial", "jfk", "first half of jfk", "en", jfk[2], "And so my fellow Americans, ask not what your country can do for you."))
    pairs.append(("extra", "jfk", "jfk + a sentence not spoken", "en", jfk[2], JFK_TEXT + " We will pay any price, bear any burden, meet any hardship."))
    return pairs


def _stats(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "min": round(min(values), 2), "median": round(float(np.median(values)), 2), "max": round(max(values), 2)} if values else {"n": 0}


def bench_agreement(args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.whisper.engines import load_engine
    from stages.score_windows import language_prob

    pairs = agreement_pairs()
    result: dict[str, Any] = {"machine": machine_info(), "model": args.model, "pairs": len(pairs), "engines": {}}
    for name in ENGINES:
        engine = load_engine(name, args.model)
        rows = []
        for start in range(0, len(pairs), 8):
            chunk = pairs[start : start + 8]
            for p, s in zip(chunk, engine.score([p[4] for p in chunk], [p[5] for p in chunk], [p[3] for p in chunk])):
                rows.append({"kind": p[0], "audio": p[1], "text": p[2], "language": p[3], "agreement_logprob": s.mean_logprob,
                             "unlikely_share": s.unlikely_share, "tokens": s.tokens, "language_prob": language_prob(s.language_probs, p[3])})
        passing = [r for r in rows if r["language_prob"] >= 0.2]
        result["engines"][name] = {
            "matched": _stats([r["agreement_logprob"] for r in rows if r["kind"] == "matched"]),
            "matched_language_ok": _stats([r["agreement_logprob"] for r in passing if r["kind"] == "matched"]),
            "matched_en": _stats([r["agreement_logprob"] for r in rows if r["kind"] == "matched" and r["language"] == "en"]),
            "mismatched": _stats([r["agreement_logprob"] for r in rows if r["kind"] == "mismatched"]),
            "mismatched_en": _stats([r["agreement_logprob"] for r in rows if r["kind"] == "mismatched" and r["language"] == "en"]),
            "partial": _stats([r["agreement_logprob"] for r in rows if r["kind"] == "partial"]),
            "extra": _stats([r["agreement_logprob"] for r in rows if r["kind"] == "extra"]),
            "pairs": rows,
        }
        for kind in ("matched", "matched_language_ok", "matched_en", "mismatched", "mismatched_en", "partial", "extra"):
            print(f"{name:15s} {kind:20s} {result['engines'][name][kind]}")
    return result


def scoring_windows(count: int) -> list[tuple[np.ndarray, str]]:
    """``count`` windows of up to 30 s: the clips of ``bench/data/en`` joined in order (0.3 s apart), cycling."""
    from pipeline.io.media import decode_audio

    refs = [json.loads(line) for line in (REPO / "bench" / "data" / "en" / "references.jsonl").read_text().splitlines()]
    clips = [(decode_audio(REPO / "bench" / "data" / "en" / r["audio"]), r["text"]) for r in refs]
    clips = [c for c in clips if len(c[0]) < 16000 * 28]
    windows, k = [], 0
    while len(windows) < count:
        parts, texts, length = [], [], 0
        while length + len(clips[k % len(clips)][0]) + 4800 <= 16000 * 30:
            pcm, text = clips[k % len(clips)]
            parts += [pcm, np.zeros(4800, dtype=np.int16)]
            texts.append(text)
            length += len(pcm) + 4800
            k += 1
        if not parts:
            k += 1
            continue
        windows.append((np.concatenate(parts), " ".join(texts)))
    return windows


def bench_scoring(args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.io.media import encode_flac
    from pipeline.schema import table_from_rows
    from stages.languages import LanguageOptions
    from stages.score_windows import load_scoring_model, score_windows

    windows = scoring_windows(args.windows)
    rows = [{"source_id": f"s{i:04d}", "source": f"s{i:04d}", "language": "en", "windows": [{
        "segment_id": f"s{i:04d}-00000", "window_index": 0, "start_ms": 0, "end_ms": len(pcm) * 1000 // 16000, "flac": encode_flac(pcm),
        "text": text, "text_timestamped": None, "prev_text": "", "has_speech": True}]} for i, (pcm, text) in enumerate(windows)]
    batch = table_from_rows(rows)
    audios = [pcm for pcm, _ in windows]
    result: dict[str, Any] = {"machine": machine_info(), "model": args.model, "windows": len(windows),
                              "audio_s": round(sum(len(a) for a in audios) / 16000, 1), "batch_windows": args.batch_windows, "engines": {}}
    for name in ENGINES:
        options = LanguageOptions(engine=name, model=args.model, batch_windows=args.batch_windows)
        engine = load_scoring_model(options)
        bare_encoder = _bare_encoder(engine)
        bare_encoder(audios[: args.batch_windows])  # warm up both paths once
        score_windows(table_from_rows(rows[:1]), options, engine)
        timings: dict[str, list[float]] = {"encoder": [], "stage": []}
        for _ in range(args.repeat):
            started = time.perf_counter()
            for start in range(0, len(audios), args.batch_windows):
                bare_encoder(audios[start : start + args.batch_windows])
            timings["encoder"].append(time.perf_counter() - started)
            started = time.perf_counter()
            score_windows(batch, options, engine)
            timings["stage"].append(time.perf_counter() - started)
        encoder, stage = min(timings["encoder"]) / len(audios), min(timings["stage"]) / len(audios)
        result["engines"][name] = {"encoder_s_per_window": round(encoder, 4), "stage_s_per_window": round(stage, 4), "ratio": round(stage / encoder, 3)}
        print(f"{name:15s} bare encoder {encoder:.3f} s/window, score_windows {stage:.3f} s/window: {stage / encoder:.2f}x")
    return result


def _bare_encoder(engine: Any):
    """The engine's own batched encoder path from audio: log-mel features and the encoder forward."""
    if engine.name == "faster-whisper":
        return lambda audios: engine.model.encode(engine._features(audios))

    import torch

    def encode(audios):
        with torch.no_grad():
            return engine.model.embed_audio(engine._mel(audios))

    return encode
