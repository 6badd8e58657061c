"""``wspsr eval``: run the corpus job on labelled sources (default: the bundled sample) and score it.

Prints per-outcome precision and recall (keep, translate, and each reject reason) and every disagreement with
its detail (for language mismatches: the probabilities Whisper gave); writes ``eval.json`` beside the output.
``--corpus DIR`` scores an existing output instead of running the job. Other options are the corpus job's.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

from pipeline.io.commit import write_json_atomically
from pipeline.eval.labels import format_report, outcomes, read_labels, score

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wspsr eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", default=str(REPO / "sample" / "labels.jsonl"), help="labels JSONL (default: the sample's)")
    parser.add_argument("--corpus", help="score this existing output folder instead of running the job")
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    out = args.corpus
    if out is None:
        if "--out" not in rest:
            rest += ["--out", "out/eval"]
        code = subprocess.run([sys.executable, "-m", "jobs.corpus", *rest], check=False).returncode
        if code != 0:
            return code
        out = rest[rest.index("--out") + 1]
    report = score(outcomes(out, read_labels(args.labels)))
    print(format_report(report))
    write_json_atomically(Path(out) / "eval.json", report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
