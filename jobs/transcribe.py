"""``wspsr transcribe``: Whisper over many files in a Ray actor pool, batched across files, resumable.

Decoding and voice-activity windowing run as CPU tasks; Whisper runs in a model actor pool (one per GPU when
the cluster has GPUs) that decode windows of many files per forward pass with Whisper's fallback per window.
Output folder: ``transcripts/`` (one Parquet row per segment), ``files/`` (SRT/VTT/JSON/TXT per input file,
named from its path), ``rejects/``, ``comparison/`` (with ``--compare-with``), ``summary.json``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

from pipeline.io.commit import OutputDir, OutputOptions
from pipeline.config import ConfigError, to_plain, to_toml
from pipeline.whisper.engines import ENGINES, DecodingOptions
from pipeline.sinks import accounting
from pipeline.jobargs import add_common_arguments, output_fingerprint, resolve_config, releases_folders, run_job
from pipeline.whisper.models import prepare_model
from pipeline.run.runner import Plan, RayOptions
from pipeline.schema import table_from_rows
from pipeline.io.sources import Discovery, SourceOptions, discover_audio, discover_sources
from pipeline.stage import Stage
from pipeline.io.transcripts import OUTPUT_FORMATS
from pipeline.sinks.transcribe import FILES_DIR, TRANSCRIBE_TABLES, commit_transcribe_batch, summarize_transcription
from stages.compare_with_reference import CompareOptions, compare_with_reference
from stages.decode_audio import CHANNEL_MODES, TrackDecodeOptions, decode_audio
from stages.load_transcript import TranscriptOptions, load_transcript
from stages.segment_at_silences import VadOptions, segment_at_silences
from stages.transcribe_windows import HallucinationOptions, TranscribeStageOptions, WhisperOptions, load_transcriber, transcribe_windows

log = logging.getLogger("wspsr")

@dataclass(frozen=True)
class TranscribeRayOptions(RayOptions):
    sources_per_block: int = 4  # files per task and shard: small, so decoding and Whisper overlap and a crash loses little


SECTIONS: dict[str, type] = {
    "sources": SourceOptions,
    "transcript": TranscriptOptions,
    "decode": TrackDecodeOptions,
    "vad": VadOptions,
    "whisper": WhisperOptions,
    "decoding": DecodingOptions,
    "hallucination": HallucinationOptions,
    "compare": CompareOptions,
    "output": OutputOptions,
    "ray": TranscribeRayOptions,
}


def build_stages(config: dict[str, Any], compare: bool, model_memory_gb: float | None = None) -> list[Stage]:
    stages = [Stage("load_transcript", load_transcript, config["transcript"])] if compare else []
    stages += [
        Stage("decode_audio", decode_audio, config["decode"]),
        Stage("segment_at_silences", segment_at_silences, config["vad"]),
        Stage(
            "transcribe_windows",
            transcribe_windows,
            TranscribeStageOptions(config["whisper"], config["decoding"], config["hallucination"]),
            setup=load_transcriber,
            batch_size=config["whisper"].batch_files,
            memory_gb=model_memory_gb,
        ),
    ]
    if compare:
        stages.append(Stage("compare_with_reference", compare_with_reference, config["compare"]))
    return stages


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wspsr transcribe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", nargs="+", default=[], metavar="PATH", help="audio files, folders, JSONL manifests, or wspsr Parquet tables")
    parser.add_argument("--compare-with", nargs="+", default=[], metavar="SOURCES", help="audio+transcript sources (as for wspsr corpus): transcribe them and score their transcripts (WER/CER)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--model", help="Whisper model: a name or path, never downloaded (default: base)")
    parser.add_argument("--engine", choices=ENGINES, help="default: faster-whisper")
    parser.add_argument("--language", help="language code for every window of every file (default: detected per window)")
    parser.add_argument("--channels", choices=CHANNEL_MODES, help="mix (default): downmix to mono; split: each channel of a multi-channel file is its own track (rows carry the channel)")
    parser.add_argument("--task", choices=("transcribe", "translate"))
    parser.add_argument("--formats", default="parquet,srt", help=f"parquet plus any of {','.join(OUTPUT_FORMATS)} (default: parquet,srt)")
    parser.add_argument("--group-by", help="rank compared sources by folder (dir, default) or by a manifest field, e.g. uploader")
    parser.add_argument("--retry-transient", action="store_true",
                        help="transcribe again the files rejected by faults that may pass (read errors, killed decoders, timeouts)")
    add_common_arguments(parser, "transcribe")
    args = parser.parse_args(argv)
    if not args.inputs and not args.compare_with:
        parser.error("give --inputs and/or --compare-with")
    return args


def parse_formats(text: str) -> tuple[str, ...]:
    formats = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    unknown = sorted(set(formats) - {"parquet", *OUTPUT_FORMATS})
    if unknown:
        raise ConfigError(f"unknown format(s) {', '.join(unknown)}; choose from parquet,{','.join(OUTPUT_FORMATS)}")
    return formats


def discover(args: argparse.Namespace, options: SourceOptions) -> Discovery:
    found = Discovery()
    for part in ([discover_audio(args.inputs, options)] if args.inputs else []) + (
        [discover_sources(args.compare_with, options)] if args.compare_with else []
    ):
        found.sources += part.sources
        found.rejects += part.rejects
    return found


@releases_folders
def run(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    formats = parse_formats(args.formats)
    config = resolve_config(
        args,
        SECTIONS,
        {"whisper.model": args.model, "whisper.engine": args.engine, "decoding.language": args.language, "decoding.task": args.task, "decode.channels": args.channels, "compare.group_by": args.group_by},
    )
    if args.print_config:
        print(to_toml(to_plain(config)))
        return {}
    whisper = config["whisper"]
    if config["decoding"].without_timestamps or config["decoding"].word_timestamps:
        raise ConfigError("wspsr transcribe sets decoding.without_timestamps and decoding.word_timestamps from whisper.timings "
                          "(aligned, the default; tokens; none): set that instead")
    if whisper.engine not in ENGINES:
        raise ConfigError(f"whisper.engine must be one of {', '.join(ENGINES)}")
    ref = prepare_model(whisper.model, whisper.engine)  # before Ray: a missing model fails now, a conversion happens once
    inputs = [f"inputs:{p}" for p in args.inputs] + [f"compare:{p}" for p in args.compare_with] + [f"formats:{','.join(formats)}"]
    out = OutputDir(args.out, TRANSCRIBE_TABLES, output_fingerprint(config, inputs), file_dir=FILES_DIR)
    started = time.monotonic()

    found = discover(args, config["sources"])
    run_doc = {"job": "transcribe", "inputs": inputs, "config": to_plain(config)}
    out.prepare(run_doc, args.overwrite)
    if args.retry_transient:
        log.info("--retry-transient: %d shards with transient rejects taken back", out.retire(out.transient_shards()))
    keys, todo = out.start(found.sources, found.rejects, run_doc, args.overwrite, config["output"])
    log.info("%d files found (%d rejected at discovery), %d already done, %d to transcribe", len(keys), len(found.rejects),
             len(found.sources) - len(todo), len(todo))
    if todo:
        plan = Plan(config["ray"])
        fewest, most = plan.model_pool_size()
        memory_gb = ref.memory_gb(whisper.engine)
        log.info("Whisper %s (%s) in %s model actor%s, %.1f GiB reserved each", whisper.model, whisper.engine,
                 fewest if fewest == most else f"{fewest}-{most}", "" if most == 1 else "s", config["ray"].model_memory_gb or memory_gb)
        dataset = plan.apply(plan.source(table_from_rows(todo)), build_stages(config, bool(args.compare_with), memory_gb))
        output_options = config["output"]
        for _ in plan.commit(dataset, lambda batch: commit_transcribe_batch(batch, out, output_options, formats), total=len(todo), what="files"):
            pass
    names = {row["key"]: row["source_id"] for row in (*found.sources, *found.rejects)}
    summary = summarize_transcription(out, keys, names)
    elapsed = time.monotonic() - started
    summary.update(elapsed_s=round(elapsed, 1), output=out.location)
    summary["real_time_factor"] = round(summary["hours"]["audio"] * 3600 / max(elapsed, 1e-9), 2) if todo else None
    accounting.reject_fraction(summary, args.max_reject_fraction)
    accounting.error_budget(summary, args.max_error_fraction)
    out.write_json("summary.json", summary)
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    f, h = summary["inputs"], summary["hours"]
    print(f"\nwspsr transcribe: {summary['output']}")
    print(f"  files: {f['in']} in = {f['kept']} transcribed + {f['rejected']} rejected {f['rejected_by_reason'] or ''}")
    print(f"  hours: {h['audio']:.3f} audio, {h['speech']:.3f} speech; segments {summary['segments']['total']} ({summary['segments']['flagged']} flagged)")
    if summary.get("real_time_factor"):
        print(f"  speed: {summary['real_time_factor']}x real time this run")
    for language, fig in summary.get("comparison", {}).get("per_language", {}).items():
        print(f"  vs references [{language}]: WER {fig['wer']:.1%}, CER {fig['cer']:.1%} over {fig['sources']} sources ({fig['hours']:.3f} h)")
    for group in summary.get("comparison", {}).get("groups_by_errors_x_hours", [])[:5]:
        print(f"  to inspect first: {group['group']} (WER {group['wer']:.1%} x {group['hours']:.3f} h)")
    print(f"  accounting: {'ok' if summary['accounting']['ok'] else 'VIOLATED'}")


def main(argv: list[str] | None = None) -> int:
    return run_job("transcribe", run, print_summary, argv)


if __name__ == "__main__":
    sys.exit(main())
