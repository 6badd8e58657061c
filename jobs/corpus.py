"""``wspsr corpus``: audio paired with transcripts in, ≤30 s Whisper training windows out (Parquet).

Output folder: ``corpus/`` (one row per window), ``rejects/`` (one row per dropped source or stretch),
``summary.json`` (sources in = kept + rejected, hours, per reason and language), ``run.json`` (resolved config).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.commit import OutputDir, OutputError, OutputOptions, write_json_atomically
from pipeline.config import ConfigError, apply_overrides, build_config, fingerprint, load_toml, to_plain, to_toml
from pipeline.corpus_sink import CORPUS_TABLES, commit_corpus_batch, commit_rejects, summarize
from pipeline.runner import RayOptions, run_plan
from pipeline.schema import table_from_rows
from pipeline.sources import SourceOptions, discover_sources
from pipeline.stage import Stage
from stages.decode_audio import DecodeOptions, decode_audio
from stages.load_transcript import TranscriptOptions, load_transcript
from stages.segment_into_windows import SegmentOptions, segment_into_windows

log = logging.getLogger("wspsr")

REPO = Path(__file__).resolve().parent.parent
SAMPLE_SOURCES = ["sample/sources", "sample/manifest.jsonl"]
SECTIONS: dict[str, type] = {
    "sources": SourceOptions,
    "transcript": TranscriptOptions,
    "decode": DecodeOptions,
    "segment": SegmentOptions,
    "output": OutputOptions,
    "ray": RayOptions,
}
RUNTIME_SECTIONS = ("ray",)  # how the job runs, not what it produces: outside the fingerprint


def build_stages(config: dict[str, Any]) -> list[Stage]:
    return [
        Stage("load_transcript", load_transcript, config["transcript"]),
        Stage("decode_audio", decode_audio, config["decode"]),
        Stage("segment_into_windows", segment_into_windows, config["segment"]),
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wspsr corpus", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", nargs="+", metavar="PATH", help="directories (pairs by file stem) and/or JSONL manifests; default: the bundled sample")
    parser.add_argument("--out", default="out/sample", help="output folder (default: out/sample)")
    parser.add_argument("--config", help="TOML file with [sources] [transcript] [decode] [segment] [output] [ray] sections")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override one config value (repeatable)")
    parser.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray in-process)")
    parser.add_argument("--overwrite", action="store_true", help="replace an output folder written with a different config")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as TOML and exit")
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    overrides = list(args.set)
    if args.address:
        overrides.append(f"ray.address={json.dumps(args.address)}")
    if args.quiet:
        overrides.append("ray.progress=false")
    config = build_config(SECTIONS, apply_overrides(load_toml(args.config), overrides))
    if args.print_config:
        print(to_toml(to_plain(config)))
        return {}
    source_paths = args.sources or [str(REPO / p) for p in SAMPLE_SOURCES]
    plain = to_plain(config)
    produced = {k: v for k, v in plain.items() if k not in RUNTIME_SECTIONS}
    produced["inputs"] = source_paths
    out = OutputDir(args.out, CORPUS_TABLES, fingerprint(produced))
    started = time.monotonic()

    discovery = discover_sources(source_paths, config["sources"])
    expected = {row["source_id"] for row in discovery.sources} | {r["source_id"] for r in discovery.rejects}
    out.prepare({"job": "corpus", "sources": source_paths, "config": plain}, overwrite=args.overwrite)
    done = out.committed_sources()
    if not {r["source_id"] for r in discovery.rejects} <= done:
        commit_rejects(discovery.rejects, out, config["output"])
    todo = [row for row in discovery.sources if row["source_id"] not in done]
    log.info(
        "%d sources found (%d rejected at discovery), %d already committed, %d to process",
        len(expected), len(discovery.rejects), len(done & expected), len(todo),
    )
    output_options = config["output"]
    for _ in run_plan(
        table_from_rows(todo) if todo else pa.table({}),
        build_stages(config),
        lambda batch: commit_corpus_batch(batch, out, output_options),
        config["ray"],
    ):
        pass
    summary = summarize(out, expected, {"elapsed_s": round(time.monotonic() - started, 1), "output": str(Path(args.out).resolve())})
    write_json_atomically(out.root / "summary.json", summary)
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    s, h = summary["sources"], summary["hours"]
    print(f"\nwspsr corpus: {summary['output']}")
    print(f"  sources: {s['in']} in = {s['kept']} kept + {s['rejected']} rejected")
    for reason, count in s["rejected_by_reason"].items():
        print(f"    {reason:32s} {count}")
    print(f"  windows: {summary['windows']['total']} ({summary['windows']['no_speech']} without speech)")
    print(f"  hours:   {h['in']:.3f} in, {h['out']:.3f} out; per language: " + ", ".join(f"{k} {v:.3f}" for k, v in h["per_language"].items()))
    print(f"  accounting: {'ok' if summary['accounting']['ok'] else 'VIOLATED'}; summary.json, corpus/, rejects/ under the folder above")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        summary = run(argv)
    except (ConfigError, OutputError, FileNotFoundError) as exc:
        print(f"wspsr corpus: error: {exc}", file=sys.stderr)
        return 2
    if not summary:
        return 0
    print_summary(summary)
    if not summary["accounting"]["ok"]:
        print("wspsr corpus: error: accounting check failed (see summary.json)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
