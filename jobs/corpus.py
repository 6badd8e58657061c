"""``wspsr corpus``: audio paired with transcripts in, ≤30 s Whisper training windows out (Parquet).

Output folder: ``corpus/`` (one row per window), ``rejects/`` (one row per dropped source or stretch),
``summary.json`` (sources in = kept + rejected, hours, per reason and language), ``run.json`` (resolved config).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import numpy as np
import pyarrow.compute as pc

from pipeline.io.commit import OutputDir, OutputOptions, committed_files, input_keys, stale_keys, without_keys
from pipeline.config import ConfigError, to_plain, to_toml
from pipeline.sinks.corpus import CORPUS_TABLES, audio_work, commit_corpus_batch, publish_shards, summarize
from pipeline.audio import SAMPLE_RATE
from pipeline.whisper.engines import ENGINES
from pipeline.sinks import accounting
from pipeline.jobargs import JobFailed, add_common_arguments, output_fingerprint, resolve_config, releases_folders, run_job
from pipeline.whisper.models import prepare_model
from pipeline.run.runner import Plan, RayOptions
from pipeline.io.sources import DISCOVERED_SCHEMA, SourceOptions, SourceSplit, duplicate_reject, plan_splits, read_split, split_rows
from pipeline.stage import Stage, active_rows, rejected_rows
from pipeline.io.storage import is_uri
from pipeline.io.ytdlp import FetchOptions
from stages.check_pseudo_labels import PseudoLabelOptions, PseudoLabelVerdicts, check_pseudo_labels
from stages.check_speaking_rate import SpeakingRateOptions, check_speaking_rate
from stages.audio_dedup import EDGE_SCHEMA, AudioDedupOptions, find_audio_duplicates, resolve_audio_duplicates
from stages.decode_audio import DecodeOptions, decode_and_fingerprint, decode_audio, find_audio, probe_rejected
from stages.dedup import DedupOptions, DuplicateDecisions, compute_signatures, find_duplicates, mark_duplicates, replace_copies
from stages.detect_machine_generated import MachineGeneratedOptions, detect_machine_generated
from stages.detect_text_language import detect_text_language
from stages.languages import LanguageOptions
from stages.judge_windows import judge_windows
from stages.load_transcript import TranscriptOptions, load_transcript
from stages.score_windows import load_scoring_model, score_windows
from stages.segment_into_windows import SegmentOptions, segment_into_windows

log = logging.getLogger("wspsr")

REPO = Path(__file__).resolve().parent.parent
AUDIO_DUPLICATES = "audio_duplicates.parquet"  # the verified pairs of sources that are the same recording
SAMPLE_SOURCES = ["sample/sources", "sample/manifest.jsonl"]
SECTIONS: dict[str, type] = {
    "sources": SourceOptions,
    "transcript": TranscriptOptions,
    "machine_generated": MachineGeneratedOptions,
    "language": LanguageOptions,
    "dedup": DedupOptions,
    "audio_dedup": AudioDedupOptions,
    "decode": DecodeOptions,
    "speaking_rate": SpeakingRateOptions,
    "segment": SegmentOptions,
    "pseudo_labels": PseudoLabelOptions,
    "fetch": FetchOptions,  # only for http(s) URL sources, fetched first by wspsr fetch
    "output": OutputOptions,
    "ray": RayOptions,
}


def text_stages(config: dict[str, Any], verdicts: PseudoLabelVerdicts | None = None) -> list[Stage]:
    """Cheap per-transcript steps, run on every source before the global dedup step; each bounded by
    ``transcript.timeout_s`` per source (a transcript built to be slow is that source's ``stage_timeout``)."""
    limit = {"timeout_s": config["transcript"].timeout_s}
    stages = [Stage("load_transcript", load_transcript, config["transcript"])]
    if verdicts is not None:
        stages.append(Stage("check_pseudo_labels", check_pseudo_labels, verdicts, **limit))
    if config["machine_generated"].enabled:
        stages.append(Stage("detect_machine_generated", detect_machine_generated, config["machine_generated"], **limit))
    if config["language"].enabled:
        stages.append(Stage("detect_text_language", detect_text_language, config["language"], **limit))
    if config["dedup"].enabled:
        stages.append(Stage("compute_signatures", compute_signatures, config["dedup"], **limit))
    return stages


def audio_stages(config: dict[str, Any], model_memory_gb: float | None = None) -> list[Stage]:
    """Decoding to windows one source at a time (a source's PCM is let go once its windows are cut, so a task holds
    the PCM of about one recording, whatever the block holds), each task reserving the memory the longest recording
    the limits allow needs; then the model stages over the block's windows."""
    memory_gb = pcm_task_memory_gb(config["decode"])
    per_source = {"batch_size": 1, "memory_gb": memory_gb}
    # With audio dedup the decode also fingerprints (the same ffmpeg run); the step itself runs after the commit.
    stages = [Stage("decode_audio", decode_and_fingerprint if config["audio_dedup"].enabled else decode_audio, config["decode"], **per_source)]
    if config["speaking_rate"].enabled:
        stages.append(Stage("check_speaking_rate", check_speaking_rate, config["speaking_rate"], **per_source))
    stages.append(Stage("segment_into_windows", segment_into_windows, config["segment"], **per_source))
    if config["language"].enabled:
        stages.append(Stage("score_windows", score_windows, config["language"], setup=load_scoring_model, memory_gb=model_memory_gb))
        stages.append(Stage("judge_windows", judge_windows, config["language"]))
    return stages


def pcm_task_memory_gb(limits: DecodeOptions) -> float:
    """Memory a decoding task reserves: the longest recording the limits allow as 16 kHz PCM (held once: the stages
    pass it on without copies) and its windows, plus a worker's own share."""
    return round((1.5 * limits.max_seconds * SAMPLE_RATE * 2 + 256 * 2**20) / 2**30, 2)


def verdicts_files(config: dict[str, Any]) -> list[str]:
    """The committed comparison shards of the `wspsr transcribe --compare-with` run that ``--pseudo-labels`` names."""
    folder = config["pseudo_labels"].comparison
    return committed_files(folder, "comparison") if folder else []


def load_pseudo_label_verdicts(options: PseudoLabelOptions) -> PseudoLabelVerdicts | None:
    """The per-source error rates of a `wspsr transcribe --compare-with` run (only its committed shards)."""
    if not options.comparison:
        return None
    files = verdicts_files({"pseudo_labels": options})
    if not files:
        raise FileNotFoundError(f"{options.comparison} has no comparison/ table: run `wspsr transcribe --compare-with SOURCES --out {options.comparison}` first")
    table = pa.concat_tables([pq.read_table(f, columns=["source_id", "language", "wer", "cer"]) for f in files])
    figures = tuple(sorted((r["source_id"], r["language"] or "", float(r["wer"]), float(r["cer"])) for r in table.to_pylist()))
    return PseudoLabelVerdicts(figures, options.max_wer, options.max_cer)


def check_engine(options: LanguageOptions) -> float:
    """Fail before any work when the language-ID model is missing (converting it once if the engine reads the
    other format); the memory its actors reserve."""
    if options.engine not in ENGINES:
        raise ConfigError(f"language.engine must be one of {', '.join(ENGINES)}")
    return prepare_model(options.model, options.engine).memory_gb(options.engine)


def is_url_source(spelled: str) -> bool:
    """A ``--sources`` entry that names web pages: an http(s) URL, or a ``.txt`` file of URLs."""
    return spelled.startswith(("http://", "https://")) or (spelled.lower().endswith(".txt") and Path(spelled).is_file())


def fetch_url_sources(paths: list[str], args: argparse.Namespace, ray_options: RayOptions, fetch_options: FetchOptions) -> list[str]:
    """URL sources are fetched first (``wspsr fetch`` with its defaults into ``OUT/fetched``, run as its own
    command: jobs don't import each other); its ``sources.jsonl`` takes their place. Its rejects and summary stay
    in that folder."""
    urls = [p for p in paths if is_url_source(p)]
    if not urls:
        return paths
    if is_uri(args.out):
        raise ConfigError("URL sources are fetched into OUT/fetched with yt-dlp, which needs a local --out (or run wspsr fetch first and copy its output)")
    folder = Path(args.out) / "fetched"
    argv = [sys.executable, "-m", "jobs.fetch", "--urls", *urls, "--out", str(folder)]
    argv += ["--quiet"] if args.quiet else []
    argv += ["--overwrite"] if args.overwrite else []
    argv += ["--address", args.address] if args.address else []
    argv += ["--set", f"ray.num_cpus={ray_options.num_cpus}"] if ray_options.num_cpus else []
    for field in dataclasses.fields(fetch_options):  # [fetch] of this config, as the fetch job's own
        value = getattr(fetch_options, field.name)
        if value != field.default:
            argv += ["--set", f"fetch.{field.name}={json.dumps(list(value) if isinstance(value, tuple) else value)}"]
    code = subprocess.run(argv, cwd=Path(__file__).resolve().parent.parent).returncode
    if code != 0:
        raise JobFailed(f"fetching the URL sources into {folder} failed (wspsr fetch exited with {code}; its messages are above)")
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    log.info(
        "fetched %d URLs into %s: %d items kept, %d rejected, %d corpus sources",
        summary["urls"]["in"], folder, summary["items"]["kept"], summary["inputs"]["rejected"], summary["manifest"]["lines"],
    )
    return [p for p in paths if not is_url_source(p)] + [str(folder / "sources.jsonl")]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wspsr corpus", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sources", nargs="+", metavar="PATH",
        help="directories (pairs by file stem), JSONL manifests, and/or http(s) URLs or .txt files of URLs (fetched first, as wspsr fetch does); default: the bundled sample",
    )
    parser.add_argument("--out", default="out/sample", help="output folder (default: out/sample)")
    parser.add_argument("--model", help="Whisper model for window scoring (language, transcript agreement): a name or path, never downloaded (default: base)")
    parser.add_argument("--engine", choices=ENGINES, help="Whisper engine for window scoring (default: openai-whisper, the faster one for it on CPU)")
    parser.add_argument("--exclude-texts", metavar="FILE", help="evaluation transcripts (one per line, or JSONL with \"text\"); sources matching one are removed")
    parser.add_argument("--pseudo-labels", metavar="DIR", help="a `wspsr transcribe --compare-with` output: drop sources whose transcript Whisper disagrees with")
    parser.add_argument("--max-wer", type=float, help="with --pseudo-labels: the WER above which a source is dropped (default 0.3)")
    parser.add_argument("--retry-transient", action="store_true",
                        help="process again the sources rejected by faults that may pass (read errors, killed decoders, timeouts)")
    add_common_arguments(parser, "corpus")
    return parser.parse_args(argv)


@releases_folders
def run(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    config = resolve_config(
        args,
        SECTIONS,
        {
            "language.model": args.model, "language.engine": args.engine, "dedup.exclude_texts": args.exclude_texts,
            "pseudo_labels.comparison": args.pseudo_labels, "pseudo_labels.max_wer": args.max_wer,
        },
    )
    if args.print_config:
        print(to_toml(to_plain(config)))
        return {}
    source_paths = args.sources or [str(REPO / p) for p in SAMPLE_SOURCES]
    repeated = sorted({p for p in source_paths if source_paths.count(p) > 1})
    if repeated:
        raise ConfigError(f"--sources names {', '.join(repeated)} more than once: every source would be found twice")
    plain = to_plain(config)
    verdicts = load_pseudo_label_verdicts(config["pseudo_labels"])
    # The contents of the files the config names decide the output too, not only their names.
    out = OutputDir(args.out, CORPUS_TABLES, output_fingerprint(config, source_paths, [config["dedup"].exclude_texts, *verdicts_files(config)]),
                    side_files=(AUDIO_DUPLICATES,))
    started = time.monotonic()

    model_memory_gb = check_engine(config["language"]) if config["language"].enabled else None
    out.prepare({"job": "corpus", "sources": source_paths, "config": plain}, args.overwrite)
    splits = plan_splits(fetch_url_sources(source_paths, args, config["ray"], config["fetch"]), config["sources"])
    if args.retry_transient:
        log.info("--retry-transient: %d shards with transient rejects taken back", out.retire(out.transient_shards()))
    for attempt in range(MAX_PASSES):
        found, plan = process_pending(out, config, splits, verdicts, model_memory_gb)
        audio, redo = dedup_audio(out, config, plan, reuse_pairs=plan is None)
        if not redo:
            break
        log.info("audio dedup: %d shards dropped sources that are no longer duplicates (their keeper left the inputs): "
                 "processing them again", out.retire(redo))
    else:
        raise JobFailed(f"audio dedup decisions did not settle after {MAX_PASSES} passes; rerun the same command")
    summary = summarize(out, found, {"elapsed_s": round(time.monotonic() - started, 1), "output": out.location, "audio_duplicates": audio})
    accounting.reject_fraction(summary, args.max_reject_fraction)
    accounting.error_budget(summary, args.max_error_fraction)
    out.write_json("summary.json", summary)
    return summary


MAX_PASSES = 3  # a second pass only when a removed source kept audio duplicates that must now be decoded again


def process_pending(out: OutputDir, config: dict[str, Any], splits: list[SourceSplit], verdicts: PseudoLabelVerdicts | None,
                    model_memory_gb: float | None) -> tuple[np.ndarray, Plan | None]:
    """Every input that has no committed outcome (or whose committed outcome the inputs now decide differently)
    through the stages into the sink; returns the keys of every input found (sorted) and the plan, None when nothing
    was left to do (then Ray is never started)."""
    committed, found = out.committed_keys(), None
    if len(committed):  # a rerun: is anything left? (discovery in this process, 8 bytes a source kept)
        found = discovered_keys(splits, config["sources"])
        if np.array_equal(found, committed):
            log.info("%d sources found in %d splits, all committed, 0 to process", len(found), len(splits))
            return found, None
    plan = Plan(config["ray"])
    ray_options, output_options = config["ray"], config["output"]
    read = functools.partial(read_split, options=config["sources"])
    # Every source through the text stages, committed ones too: the global step decides exactly as a whole run would.
    text = plan.materialize(plan.apply(plan.read_splits(splits, read, DISCOVERED_SCHEMA), text_stages(config, verdicts)))
    rows = plan.count(text)
    # A first run's keys wait in the object store for the accounting at the end (the driver holds nothing per source
    # while the global step and the commits run).
    keys = plan.materialize(plan.map(text, only_keys)) if found is None else None
    decisions = find_duplicates(plan, text, config["dedup"], duplicate_reject, rows_hint=rows)
    retired = out.retire(shards_to_redo(out, found, decisions)) if found is not None else 0
    committed = out.committed_keys() if found is not None else committed
    log.info("%d sources found in %d splits, %d already committed, %d to process%s", rows, len(splits), len(committed),
             rows - len(committed), f" ({retired} shards taken back: inputs removed, changed or decided differently)" if retired else "")
    # Committed work skipped, sources whose id an earlier one took replaced, near-duplicates marked; then what is
    # rejected goes to the sink in the big blocks it is in, and what is left is rebatched for the audio work.
    dataset = plan.map(plan.map(text, without_keys, committed), replace_copies, decisions)
    # Missing, empty or oversized audio is refused with a metadata call while the rows are still in big blocks;
    # kept (the two branches below read it: Ray would compute it twice), and the text rows let go.
    dataset = plan.apply(dataset, [Stage("remove_duplicates", mark_duplicates, decisions), Stage("find_audio", find_audio, config["decode"])])
    dataset = plan.materialize(dataset)
    del text
    audio = plan.apply(plan.rebatch(plan.map(dataset, active_rows), ray_options.sources_per_block), audio_stages(config, model_memory_gb))
    # Rejected before decoding: their length from the container's header, so every reject has its hours.
    dataset = plan.union(plan.map(plan.map(dataset, rejected_rows), probe_rejected, config["decode"]), audio)
    for _ in plan.commit(dataset, functools.partial(commit_corpus_batch, out=out, options=output_options), total=rows - len(committed), what="sources"):
        pass
    return (found if found is not None else plan.sorted_values(keys, "key")), plan


def only_keys(batch: pa.Table) -> pa.Table:
    return batch.select(["key"])


def shards_to_redo(out: OutputDir, found: np.ndarray, decisions: DuplicateDecisions) -> list[str]:
    """The committed shards whose outcome no longer holds, read one marker at a time: they account for an input no
    longer found (removed, or changed: a new key), for an input committed a different number of times than it is
    found, or for a source whose near-duplicate decision the inputs now decide differently (a better copy added, its
    keeper removed)."""
    stale = stale_keys(found, out.committed_keys())
    redo = []
    for marker in out.iter_markers():
        if len(stale) and np.isin(input_keys(marker), stale).any():
            redo.append(marker["shard"])
            continue
        ids = marker["sources"].get("kept", []) + marker["sources"].get("rejected", [])
        before = marker.get("duplicates", {})
        if not ids or not (len(decisions) or before):
            continue
        at = pc.index_in(pa.array(ids, pa.string()), value_set=decisions.duplicates)
        now = decisions.keepers.take(at).to_pylist() if len(decisions) else [None] * len(ids)
        if any(keeper != before.get(source_id) for source_id, keeper in zip(ids, now)):
            redo.append(marker["shard"])
    return redo


def dedup_audio(out: OutputDir, config: dict[str, Any], plan: Plan | None, reuse_pairs: bool) -> tuple[dict[str, Any], list[str]]:
    """After every source is committed: the audio dedup step over the committed fingerprints (verified pairs into
    ``audio_duplicates.parquet``), one decision per cluster, and the shards it changes rewritten (``publish_shard``).
    A rerun that processed nothing new reads the pairs back instead of searching again; shards already published
    under the same decisions are left alone, so a crash anywhere in here is finished by running again. Returns the
    step's summary and the shards to process again (they dropped a source that is no longer a duplicate)."""
    options = config["audio_dedup"]
    if not options.enabled:
        return {"enabled": False}, []
    fingerprinted = sum(marker["rows"].get("fingerprints", 0) for marker in out.iter_markers())
    edges = out.read_side_table(AUDIO_DUPLICATES) if reuse_pairs else None
    if edges is None:
        if fingerprinted:
            plan = plan or Plan(config["ray"])
            committed = plan.map(plan.read_parquet(out.committed_files("fingerprints")), keys_as_refs)
            edges = find_audio_duplicates(plan, committed, options, rows_hint=fingerprinted)
        else:
            edges = EDGE_SCHEMA.empty_table()
        out.write_side_table(AUDIO_DUPLICATES, edges.sort_by([("a_id", "ascending"), ("b_id", "ascending")]), config["output"])
    decisions = resolve_audio_duplicates(edges)
    shards, redo = audio_work(out, decisions)
    if redo:
        return {}, redo
    if shards:
        plan = plan or Plan(config["ray"])
        plan.each(pa.table({"shard": shards}), publish_shards, out, config["output"], decisions)
    log.info("audio dedup: %d fingerprinted sources, %d pairs of the same recording, %d clusters; %d sources dropped (%d clips of a "
             "longer recording), %d shards rewritten", fingerprinted, edges.num_rows, decisions.clusters, len(decisions), decisions.contained, len(shards))
    return {"enabled": True, "fingerprinted": fingerprinted, "pairs": edges.num_rows, "clusters": decisions.clusters,
            "dropped": len(decisions), "contained": decisions.contained, "decisions": decisions.version}, []


def keys_as_refs(batch: pa.Table) -> pa.Table:
    """Committed fingerprints with their sources' keys as the audio step's row handles (unique across runs)."""
    return batch.rename_columns(["ref" if name == "key" else name for name in batch.column_names])


def discovered_keys(splits: list[SourceSplit], options: SourceOptions) -> np.ndarray:
    """The keys of discovery's rows, sorted, read in this process without keeping the rows (a rerun's check whether
    anything is left): 8 bytes a source."""
    keys = np.fromiter((row["key"] for split in splits for row in split_rows(split, options)), dtype=np.int64)
    keys.sort()
    return keys


def print_summary(summary: dict[str, Any]) -> None:
    s, h = summary["inputs"], summary["hours"]
    print(f"\nwspsr corpus: {summary['output']}")
    print(f"  sources: {s['in']} in = {s['kept']} kept + {s['rejected']} rejected")
    print(wrapped("    rejected: ", [f"{reason} {count}" for reason, count in s["rejected_by_reason"].items()]))
    print(f"  windows: {summary['windows']['total']} ({summary['windows']['no_speech']} without speech); "
          f"{summary.get('sources_code_switched', 0)} code-switched sources")
    for reason, dropped in summary.get("stretches_dropped", {}).items():
        print(f"    stretches dropped: {reason:21s} {dropped['count']}")
    audio = summary.get("audio_duplicates", {})
    if audio.get("enabled"):
        print(f"  audio duplicates: {audio['dropped']} sources dropped in {audio['clusters']} clusters "
              f"({audio['contained']} clips of a longer recording), from {audio['pairs']} matching pairs of {audio['fingerprinted']} fingerprints")
    print(f"  hours:   {h['in']:.3f} in, {h['out']:.3f} out; per language: " + ", ".join(f"{k} {v:.3f}" for k, v in h["per_language"].items()))
    print(f"  accounting: {'ok' if summary['accounting']['ok'] else 'VIOLATED'}; summary.json, corpus/, rejects/ under the folder above")


def wrapped(head: str, items: list[str], width: int = 116) -> str:
    """``items`` comma-separated after ``head``, lines no wider than ``width``, continued under the first item."""
    lines, line = [], head
    if not items:
        return head + "none"
    for i, item in enumerate(items):
        piece = item + ("," if i < len(items) - 1 else "")
        if line.strip() and len(line) + len(piece) + 1 > width and line != head:
            lines.append(line.rstrip())
            line = " " * len(head)
        line += piece + " "
    lines.append(line.rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_job("corpus", run, print_summary, argv)


if __name__ == "__main__":
    sys.exit(main())
