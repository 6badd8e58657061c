#!/usr/bin/env python3
"""Measure how well Whisper base identifies the spoken language of each sample clip.

Not part of the pipeline: a check of the generated sample (the table in README.md comes
from it).  Needs faster-whisper and a CTranslate2 Whisper base folder:

    python sample/measure_lid.py /path/to/whisper-base-ct2

Per source it reports the probability Whisper base gives to the true spoken language
(`audio_language` in labels.jsonl) on the first speech window and its rank; per language,
the median probability and how often it is the top-1 language.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from faster_whisper import WhisperModel, decode_audio

HERE = Path(__file__).resolve().parent
SR = 16000
WINDOW = 30 * SR


def main() -> None:
    model = WhisperModel(sys.argv[1] if len(sys.argv) > 1 else "/tmp/whisper-base-ct2", device="cpu",
                         compute_type="int8")
    per_lang: dict[str, list[tuple[float, int]]] = defaultdict(list)
    rows = []
    for line in (HERE / "labels.jsonl").read_text(encoding="utf-8").splitlines():
        lab = json.loads(line)
        if not lab.get("audio") or lab["expected"] in {"bad_audio", "no_audio_stream"}:
            continue
        audio = decode_audio(str(HERE / lab["audio"]), sampling_rate=SR)
        true = lab["audio_language"]
        windows = [audio[i:i + WINDOW] for i in range(0, max(len(audio), 1), WINDOW)]
        results = []
        for w in windows:
            _, _, probs = model.detect_language(audio=w)
            ranked = [lang for lang, _ in probs]
            p = dict(probs).get(true, 0.0)
            results.append((p, ranked.index(true) + 1 if true in ranked else 99, probs[0]))
        # The first window with speech: for the lead-noise recording that is the second one.
        first = 1 if lab["kind"] == "clean_long_leading_noise" else 0
        p, rank, top = results[first]
        per_lang[true].append((p, rank))
        rows.append((lab["audio"], true, lab["expected"], p, rank, top, results))
    print(f"{'source':40s} {'lang':4s} {'expected':26s} {'p(true)':>7s} rank  top-1")
    for audio, true, expected, p, rank, top, results in rows:
        extra = ""
        if len(results) > 1:
            extra = "  windows: " + ", ".join(f"{r[0]:.2f}/{r[2][0]}" for r in results)
        print(f"{audio:40s} {true:4s} {expected:26s} {p:7.3f} {rank:4d}  {top[0]} {top[1]:.2f}{extra}")
    print()
    print("| language | clips | median p(true language) | top-1 | median rank |")
    print("|---|---|---|---|---|")
    for lang in sorted(per_lang, key=lambda k: -statistics.median(p for p, _ in per_lang[k])):
        vals = per_lang[lang]
        top1 = sum(1 for _, r in vals if r == 1)
        print(f"| {lang} | {len(vals)} | {statistics.median(p for p, _ in vals):.2f} | {top1}/{len(vals)} "
              f"| {statistics.median(r for _, r in vals):g} |")


if __name__ == "__main__":
    main()
