"""Generate the benchmark's English speech set: ``bench/data/en/*.opus`` plus ``references.jsonl``.

The transcription benchmark needs more words than the sample's 14 faithful English recordings (about 440 words,
where one word is 0.2 WER points) to tell two systems apart. This reuses the sample generator (espeak-ng voices,
fortunes texts), taking texts from the other end of the shuffled pool so none is in the sample. The clips are
committed; run this only to rebuild them (needs espeak-ng, ffmpeg and the English fortunes):

    python bench/english_set.py [--clips 60]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "sample"))

import generate as g  # noqa: E402  (the sample generator)

OUT = HERE / "data" / "en"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=60)
    args = parser.parse_args()
    pool = g.TextPool("en")
    pool.items.reverse()  # the sample takes from the front
    OUT.mkdir(parents=True, exist_ok=True)
    refs = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.clips):
            rng = random.Random(f"bench-en:{k}")
            texts = [pool.take(6, 40)[0] for _ in range(rng.choice([1, 1, 2, 3, 5]))]
            sentences = [s for t in texts for s in g.split_sentences(t, "en")]
            voice, speed = rng.choice(g.VOICES["en"]), rng.randint(145, 175)
            samples, _ = g.speak(sentences, voice, speed, rng, Path(tmp))
            name = f"en_{k:03d}.opus"
            g.encode(samples, OUT / name, "opus", Path(tmp))
            refs.append({"audio": name, "text": " ".join(texts), "voice": voice, "wpm": speed,
                         "seconds": round(len(samples) / g.SR, 2)})
            print(name, refs[-1]["seconds"], "s", file=sys.stderr)
    (OUT / "references.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in refs))


if __name__ == "__main__":
    main()
