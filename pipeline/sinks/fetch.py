"""The fetch job's sink and manifests: ``items/`` (one row per fetched item), ``rejects/``, ``sources.jsonl``.

Accounting has two levels: every input URL ends either expanded into items or rejected itself (unsafe, 404,
no media); every item ends either kept (human subtitles, a corpus source per subtitle language) or rejected.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.io.commit import OutputDir, OutputOptions, inputs_of, shard_id, source_key_of
from pipeline.schema import REJECTS_SCHEMA
from pipeline.sinks import accounting
from pipeline.sinks.accounting import count

FETCH_TABLES = ("items", "rejects")
MANIFEST = "sources.jsonl"
UNLABELLED_MANIFEST = "unlabelled.jsonl"
SUBTITLE_TYPE = pa.struct([("language", pa.string()), ("path", pa.string()), ("format", pa.string())])
ITEMS_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),  # {extractor}.{video id}, sanitised: also the stem of the item's files
        ("url_id", pa.string()),
        ("url", pa.string()),  # the input URL the item was found behind
        ("url_index", pa.int64()),  # the URL's position in the input list
        ("item_index", pa.int32()),  # the item's position behind its URL (playlist order)
        ("extractor", pa.string()),
        ("extractor_key", pa.string()),
        ("video_id", pa.string()),
        ("title", pa.string()),
        ("uploader", pa.string()),
        ("channel", pa.string()),
        ("license", pa.string()),
        ("webpage_url", pa.string()),
        ("playlist_id", pa.string()),
        ("playlist_title", pa.string()),
        ("playlist_index", pa.int64()),
        ("duration_s", pa.float64()),
        ("audio", pa.string()),  # relative to the output folder
        ("audio_bytes", pa.int64()),
        ("subtitles", pa.list_(SUBTITLE_TYPE)),  # human-uploaded subtitles only
        ("automatic_caption_languages", pa.list_(pa.string())),  # what the site had as automatic captions (never used)
        ("labelled", pa.bool_()),  # false: audio kept without a label (only automatic captions)
    ]
)


def commit_fetch_batch(batch: pa.Table, out: OutputDir, options: OutputOptions) -> dict[str, Any]:
    """One shard: the items and rejects of a block of URLs, and a marker naming those URLs and items."""
    items: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    sources: dict[str, list[str]] = {"urls": [], "kept": [], "rejected": []}
    stats: dict[str, Any] = defaultdict(dict)
    stats.update(items=0, items_kept=0, urls_expanded=0, unlabelled=0, downloaded=0, from_archive=0, bytes=0, ms_kept=0)
    expanded: set[str] = set()
    for row in batch.to_pylist():
        if row["url_id"] not in sources["urls"]:
            sources["urls"].append(row["url_id"])
        url_level = row.get("item_index") is None
        if not url_level:
            stats["items"] += 1
            expanded.add(row["url_id"])
        item = json.loads(row["item"]) if row.get("item") else None
        if item is not None:
            items.append(_item_row(row, item))
            stats["downloaded" if item["downloaded"] else "from_archive"] += 1
            stats["bytes"] += item["audio_bytes"]
            stats["unlabelled"] += 0 if item["labelled"] else 1
        if row.get("reject_reason"):
            sources["rejected"].append(row["source_id"])
            count(stats["url_rejected" if url_level else "rejected"], row["reject_reason"])
            rejects.append(accounting.source_reject(row))
        else:
            sources["kept"].append(row["source_id"])
            stats["items_kept"] += 1
            stats["ms_kept"] += row.get("duration_ms") or 0
    stats["urls_expanded"] = len(expanded)
    items.sort(key=lambda r: (r["url_index"], r["item_index"]))
    rejects.sort(key=lambda r: r["source_id"])
    tables = {
        "items": [pa.Table.from_pylist(items, schema=ITEMS_SCHEMA)],
        "rejects": [pa.Table.from_pylist(rejects, schema=REJECTS_SCHEMA)],
    }
    keys = [source_key_of({"source_id": url}) for url in sources["urls"]]
    return out.commit_shard(shard_id(sources["urls"]), tables, sources, dict(stats), options, inputs=inputs_of(sources["urls"], keys))


def _item_row(row: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    values = {name: item.get(name) for name in ITEMS_SCHEMA.names}
    values.update(url_id=row["url_id"], url=row["url"], url_index=row.get("url_index"), item_index=row["item_index"])
    return values


def summarize_fetch(out: OutputDir, expected_urls: set[str], extra: dict[str, Any]) -> dict[str, Any]:
    """URLs in = expanded + rejected, items in = kept + rejected (both checked), and every URL in exactly one
    committed shard: a fetched block names its URLs, a discovery shard (unsafe or repeated URLs) its rejected ones."""
    markers = out.markers()
    fetched = [m for m in markers if "urls" in m["sources"]]
    found = accounting.tally(m for m in markers if "urls" not in m["sources"])
    totals = accounting.tally(fetched)
    url_rejected = accounting.add_counts(dict(totals.get("url_rejected", {})), found.get("rejected", {}))
    item_rejected = totals.get("rejected", {})
    urls_rejected, items_rejected = sum(url_rejected.values()), sum(item_rejected.values())
    named = [*accounting.named_ids(fetched, ("urls",)), *accounting.named_ids((m for m in markers if "urls" not in m["sources"]), ("rejected",))]
    url_check = accounting.check(expected_urls, named, totals.get("urls_expanded", 0), urls_rejected)
    items, items_kept = totals.get("items", 0), totals.get("items_kept", 0)
    url_check["ok"] = url_check["ok"] and items_kept + items_rejected == items
    url_check["rule"] = f"{accounting.RULE}; every URL is expanded into items or rejected, and every item is kept or rejected"
    return accounting.summary(
        out.fingerprint,
        accounting.inputs(items + urls_rejected, items_kept, accounting.add_counts(dict(item_rejected), url_rejected)),
        url_check,
        totals["shards"] + found["shards"],
        urls={"in": len(expected_urls), "expanded": totals.get("urls_expanded", 0), "rejected": urls_rejected,
              "rejected_by_reason": dict(sorted(url_rejected.items()))},
        items={"in": items, "kept": items_kept, "rejected": items_rejected,
               "rejected_by_reason": dict(sorted(item_rejected.items())), "unlabelled_audio": totals.get("unlabelled", 0)},
        hours_kept=accounting.hours(totals.get("ms_kept", 0)),
        bytes=totals.get("bytes", 0),
        downloads={"downloaded": totals.get("downloaded", 0), "from_archive": totals.get("from_archive", 0)},
        **extra,
    )


def committed_items(out: OutputDir) -> list[dict[str, Any]]:
    table = out.read_committed("items", schema=ITEMS_SCHEMA)
    if table is None:
        return []
    rows = table.to_pylist()
    return sorted(rows, key=lambda r: (r["url_index"], r["item_index"], r["item_id"]))


def manifest_lines(items: list[dict[str, Any]], language_of) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Corpus manifest lines (one per item and human subtitle language) and unlabelled-audio lines, in input
    order; an item reached through two URLs is listed once."""
    lines, unlabelled, seen = [], [], set()
    for item in items:
        if item["item_id"] in seen:
            continue
        seen.add(item["item_id"])
        about = {
            "url": item["url"], "webpage_url": item["webpage_url"], "extractor": item["extractor"], "video_id": item["video_id"],
            "title": item["title"], "uploader": item["uploader"], "channel": item["channel"], "duration": item["duration_s"],
            "license": item["license"],
        }
        if item["playlist_id"] is not None:
            about.update(playlist_id=item["playlist_id"], playlist_title=item["playlist_title"], playlist_index=item["playlist_index"])
        if not item["labelled"]:
            unlabelled.append({"id": item["item_id"], "audio": item["audio"], "transcript_origin": "automatic_captions", **about,
                               "automatic_caption_languages": item["automatic_caption_languages"]})
            continue
        for sub in item["subtitles"]:
            line: dict[str, Any] = {"id": f"{item['item_id']}.{sub['language']}", "audio": item["audio"], "transcript": sub["path"]}
            language = language_of(sub["language"])
            if language:
                line["language"] = language
            line.update(transcript_origin="subtitles", subtitle_language=sub["language"], **about)
            lines.append(line)
    return lines, unlabelled


def jsonl_bytes(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode("utf-8")


def remove_if_exists(path: Path) -> None:
    if path.exists():
        os.unlink(path)
