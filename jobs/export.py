"""``wspsr export MODEL --to ctranslate2 --out DIR``: write an openai-whisper checkpoint (one ``wspsr train`` wrote,
or any ``.pt``, or a model name) as a CTranslate2 Whisper folder that faster-whisper and ``wspsr transcribe``'s
default engine serve. CTranslate2's own spec classes write it (``pipeline/whisper/export.py``); the folder carries
the tokenizer, config and mel-bin count faster-whisper needs, so it loads offline. ``--quantization`` is how the
weights are stored (default float16, as faster-whisper's published models; int8 is a quarter of float32's size).

``wspsr export CORPUS --to lhotse --out DIR``: a ``wspsr corpus`` folder's committed windows as Lhotse manifests
(``recordings.jsonl.gz``, ``supervisions.jsonl.gz``, ``cuts.jsonl.gz``) written by Lhotse's own classes, the audio
referenced in the Parquet files, not copied (``pipeline/io/lhotse_export.py``)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from pipeline.whisper.export import QUANTIZATIONS, export_ctranslate2
from pipeline.whisper.models import ModelNotFound, load_openai_whisper, resolve_model

log = logging.getLogger("wspsr")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wspsr export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL|CORPUS", help="ctranslate2: a checkpoint folder of wspsr train (checkpoints/step-N), a .pt, "
                        "a name, or tiny-random*; lhotse: a wspsr corpus output folder")
    parser.add_argument("--to", choices=["ctranslate2", "lhotse"], default="ctranslate2", help="the format to write (default ctranslate2)")
    parser.add_argument("--python", help="lhotse: the interpreter (with pyarrow) that the manifests' audio commands run "
                        "(default: this one, by its absolute path; python3 for manifests read on other machines)")
    parser.add_argument("--out", required=True, type=Path, help="the folder to write (replaced if it exists and --overwrite is given)")
    parser.add_argument("--quantization", choices=QUANTIZATIONS, default="float16", help="how weights are stored (default float16)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    if args.out.exists() and not args.overwrite:
        print(f"wspsr export: error: {args.out} exists (pass --overwrite to replace it)", file=sys.stderr)
        return 2
    if args.to == "lhotse":
        return export_corpus_to_lhotse(args)
    try:
        ref = resolve_model(args.model)
        if ref.checkpoint is None and not ref.is_tiny_random:
            raise ModelNotFound(f"{args.model!r} has no openai-whisper checkpoint to export (it is already a CTranslate2 folder: {ref.ct2_dir})")
    except ModelNotFound as exc:
        print(f"wspsr export: error: {exc}", file=sys.stderr)
        return 2
    started = time.monotonic()
    model = load_openai_whisper(ref)
    export_ctranslate2(model, args.out, args.quantization)
    dims = model.dims
    print(f"wspsr export: {args.model} -> {args.out} (CTranslate2, {args.quantization}; {dims.n_audio_layer}+{dims.n_text_layer} layers, "
          f"width {dims.n_audio_state}, {dims.n_mels} mel bins, vocabulary {dims.n_vocab}) in {time.monotonic() - started:.1f} s")
    print(f"  serve it: wspsr transcribe --model {args.out} --inputs ...   (faster-whisper: WhisperModel({str(args.out)!r}))")
    return 0


def export_corpus_to_lhotse(args: argparse.Namespace) -> int:
    from pipeline.io.lhotse_export import export_lhotse

    started = time.monotonic()
    try:
        done = export_lhotse(args.model, args.out, python=args.python)
    except FileNotFoundError as exc:
        print(f"wspsr export: error: {exc} (give a wspsr corpus output folder)", file=sys.stderr)
        return 2
    print(f"wspsr export: {args.model} -> {args.out} (Lhotse: {done['windows']} windows, {done['hours']:.3f} h, the audio referenced "
          f"in the corpus files) in {time.monotonic() - started:.1f} s")
    print(f"  read it: lhotse.CutSet.from_file({str(args.out / 'cuts.jsonl.gz')!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
