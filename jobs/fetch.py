"""``wspsr fetch``: audio and human-made subtitles from the web (yt-dlp), into a manifest for ``wspsr corpus``.

Inputs are URLs and files of URLs (one per line, ``#`` comments). Playlists and channels expand to their items.
Output folder: ``media/<extractor>/<id>.<ext>`` + ``<id>.<lang>.vtt``, ``sources.jsonl`` (one corpus source per
item and human subtitle language: ``wspsr corpus --sources DIR/sources.jsonl``), ``items/`` (Parquet, one row per
fetched item), ``rejects/`` (one row per refused URL or item, with yt-dlp's message), ``archive.txt`` (yt-dlp's
download archive), ``summary.json``. Items with only automatic captions are rejected (machine-generated).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.io.commit import MARKERS, RUN_FILE, OutputDir, OutputOptions, marker_names, write_json_atomically
from pipeline.io.storage import write_atomically
from pipeline.config import ConfigError, to_plain, to_toml
from pipeline.sinks.fetch import (
    FETCH_TABLES, MANIFEST, UNLABELLED_MANIFEST, commit_fetch_batch, committed_items, manifest_lines, remove_if_exists,
    summarize_fetch, jsonl_bytes,
)
from pipeline.sinks import accounting
from pipeline.jobargs import add_common_arguments, output_fingerprint, resolve_config, releases_folders, run_job
from pipeline.run.runner import Plan, RayOptions
from pipeline.schema import RejectReason, RejectScope, table_from_rows
from pipeline.stage import Stage
from pipeline.io.storage import is_uri
from stages.fetch_media import FetchOptions, FetchStageOptions, check_url, fetch_media, manifest_language, url_id

log = logging.getLogger("wspsr")

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@dataclass(frozen=True)
class FetchRayOptions(RayOptions):
    sources_per_block: int = 2  # URLs per task and per committed shard
    concurrency: int = 4  # fetch tasks at once (--concurrency): downloads wait on the network, not on a CPU
    cpus_per_fetch: float = 0.25  # CPU reserved per fetch task

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.concurrency < 1 or self.cpus_per_fetch <= 0:
            raise ValueError("concurrency must be at least 1 and cpus_per_fetch positive")


SECTIONS: dict[str, type] = {"fetch": FetchOptions, "output": OutputOptions, "ray": FetchRayOptions}


def read_urls(specs: list[str]) -> list[tuple[str, str]]:
    """(url, where it was given) for each URL argument and each line of each URL file, in order."""
    found = []
    for spec in specs:
        path = Path(spec)
        if _SCHEME.match(spec) and not path.is_file():
            found.append((spec, "argument"))
        elif path.is_file():
            for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
                text = line.strip()
                if text and not text.startswith("#"):
                    found.append((text, f"{spec}:{lineno}"))
        else:
            raise FileNotFoundError(f"--urls {spec!r} is neither a URL nor a file of URLs")
    return found


def url_rows(urls: list[tuple[str, str]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows to fetch, and rejects decided before any request: unsafe URLs and repeats of an earlier line."""
    rows, rejects, first = [], [], {}
    for index, (url, where) in enumerate(urls):
        ident = url_id(url)
        reject = {"source": url, "scope": RejectScope.SOURCE.value, "stage": "read_urls"}
        if url in first:
            rejects.append(dict(reject, source_id=f"{ident}.{index}", reason=RejectReason.DUPLICATE_SOURCE.value, detail=f"{where}: same URL as {first[url]}"))
            continue
        first[url] = where
        problem = check_url(url)
        if problem:
            rejects.append(dict(reject, source_id=ident, reason=RejectReason.UNSAFE_URL.value, detail=f"{where}: {problem}"))
            continue
        rows.append({"source_id": ident, "source": url, "url": url, "url_index": index, "where": where})
    return rows, rejects


def forget_failed_fetches(out: OutputDir) -> int:
    """--retry-failed: take back the shards that hold a ``fetch_failed`` reject, so their URLs run again (their
    finished items come from the download archive). Only in a folder of this config (prepared by this run)."""
    if not out.store.exists(RUN_FILE) or out.read_json(RUN_FILE).get("fingerprint") != out.fingerprint:
        return 0
    failed = []
    for name in marker_names(out.store):
        marker = out.read_json(f"{MARKERS}/{name}")
        stats = marker.get("stats", {})
        if "urls" in marker["sources"] and (stats.get("rejected", {}).get("fetch_failed") or stats.get("url_rejected", {}).get("fetch_failed")):
            failed.append(marker["shard"])
    return out.retire(failed)


def _languages(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="wspsr fetch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--urls", nargs="+", required=True, metavar="FILE_OR_URL", help="URLs (http/https) and/or files with one URL per line")
    parser.add_argument("--out", required=True, help="output folder (sources.jsonl, media/, items/, rejects/, archive.txt)")
    parser.add_argument("--sub-langs", metavar="en,de,...", help="subtitle languages to take (en also takes en-US); default: all")
    parser.add_argument("--max-duration", type=float, metavar="S", help="longest item in seconds (default 7200)")
    parser.add_argument("--max-filesize", type=float, metavar="MB", help="largest file in MB (default 1024)")
    parser.add_argument("--concurrency", type=int, metavar="N", help="fetch tasks at once (default 4)")
    parser.add_argument("--keep-unlabelled", action="store_true", default=None, help="keep the audio of items with only automatic captions (unlabelled.jsonl, for wspsr transcribe)")
    parser.add_argument("--retry-failed", action="store_true", help="fetch again the URLs whose items failed with fetch_failed")
    add_common_arguments(parser, "fetch")
    return parser.parse_args(argv)


@releases_folders
def run(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    config = resolve_config(
        args,
        SECTIONS,
        {
            "fetch.sub_langs": _languages(args.sub_langs), "fetch.max_duration_s": args.max_duration,
            "fetch.max_filesize_mb": args.max_filesize, "fetch.keep_unlabelled": args.keep_unlabelled, "ray.concurrency": args.concurrency,
        },
    )
    if args.print_config:
        print(to_toml(to_plain(config)))
        return {}
    if is_uri(args.out):
        raise ConfigError(f"--out {args.out}: yt-dlp downloads into a local folder (or a shared filesystem every node mounts); copy the result to object storage afterwards")
    started = time.monotonic()
    urls = read_urls(args.urls)
    rows, rejects = url_rows(urls)
    # The URL list decides the output as much as the config: another list needs --overwrite or another --out
    # (downloaded media and the archive stay, so items fetched before are not downloaded again).
    out = OutputDir(args.out, FETCH_TABLES, output_fingerprint(config, [url for url, _ in urls]))
    run_doc = {"job": "fetch", "urls": args.urls, "config": to_plain(config)}
    out.prepare(run_doc, args.overwrite)
    if args.retry_failed:
        log.info("--retry-failed: %d shards with failed fetches taken back", forget_failed_fetches(out))
    keys, todo = out.start(rows, rejects, run_doc, args.overwrite, config["output"])
    expected = {row["source_id"] for row in (*rows, *rejects)}
    log.info("%d URLs (%d refused before fetching), %d already done, %d to fetch", len(expected), len(rejects), len(rows) - len(todo), len(todo))
    ray_options: FetchRayOptions = config["ray"]
    if todo:
        plan = Plan(ray_options)
        stage = Stage(
            "fetch_media", fetch_media, FetchStageOptions(config["fetch"], str(out.root.resolve())),
            num_cpus=ray_options.cpus_per_fetch,
            concurrency=min(ray_options.concurrency, -(-len(todo) // ray_options.sources_per_block)),  # no more tasks than blocks
        )
        dataset = plan.apply(plan.source(table_from_rows(todo)), [stage])
        output_options = config["output"]
        for _ in plan.commit(dataset, lambda batch: commit_fetch_batch(batch, out, output_options), total=len(todo), what="URLs", counted="urls"):
            pass
    lines, unlabelled = manifest_lines(committed_items(out), manifest_language)
    write_atomically(out.root / MANIFEST, jsonl_bytes(lines))
    if unlabelled:
        write_atomically(out.root / UNLABELLED_MANIFEST, jsonl_bytes(unlabelled))
    else:
        remove_if_exists(out.root / UNLABELLED_MANIFEST)
    per_language: dict[str, int] = {}
    for line in lines:
        per_language[line.get("language") or "?"] = per_language.get(line.get("language") or "?", 0) + 1
    summary = summarize_fetch(
        out, expected,
        {
            "manifest": {"path": str((out.root / MANIFEST).resolve()), "lines": len(lines), "per_language": dict(sorted(per_language.items()))},
            "unlabelled_manifest": str((out.root / UNLABELLED_MANIFEST).resolve()) if unlabelled else None,
            "this_run": {"urls_fetched": len(todo)},
            "elapsed_s": round(time.monotonic() - started, 1),
            "output": str(out.root.resolve()),
        },
    )
    accounting.reject_fraction(summary, args.max_reject_fraction)
    accounting.error_budget(summary, args.max_error_fraction)
    write_json_atomically(out.root / "summary.json", summary)
    return summary


def print_summary(summary: dict[str, Any]) -> None:
    u, i = summary["urls"], summary["items"]
    print(f"\nwspsr fetch: {summary['output']}")
    print(f"  urls:  {u['in']} in = {u['expanded']} expanded + {u['rejected']} rejected {u['rejected_by_reason'] or ''}")
    print(f"  items: {i['in']} in = {i['kept']} kept + {i['rejected']} rejected {i['rejected_by_reason'] or ''}")
    d = summary["downloads"]
    print(f"  audio: {summary['hours_kept']:.3f} hours kept, {summary['bytes'] / 2**20:.1f} MB; {d['downloaded']} downloaded, {d['from_archive']} from the archive")
    print(f"  manifest: {summary['manifest']['lines']} sources in {summary['manifest']['path']} {summary['manifest']['per_language']}")
    if summary.get("unlabelled_manifest"):
        print(f"  unlabelled audio: {i['unlabelled_audio']} items in {summary['unlabelled_manifest']}")
    print(f"  accounting: {'ok' if summary['accounting']['ok'] else 'VIOLATED'}; wspsr corpus --sources {summary['manifest']['path']}")


def main(argv: list[str] | None = None) -> int:
    return run_job("fetch", run, print_summary, argv)


if __name__ == "__main__":
    sys.exit(main())
