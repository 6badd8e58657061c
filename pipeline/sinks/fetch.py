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

from pipeline.io.commit import TMP_PREFIX, OutputDir, OutputOptions, _fsync_replace, shard_id
from pipeline.schema import REJECTS_SCHEMA, RejectScope

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


def _add(counter: dict[str, Any], key: str, value: float = 1) -> None:
    counter[key] = counter.get(key, 0) + value


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
            _add(stats["url_rejected" if url_level else "rejected"], row["reject_reason"])
            rejects.append(
                {
                    "source_id": row["source_id"], "source": row["source"], "scope": RejectScope.SOURCE.value,
                    "stage": row.get("reject_stage"), "reason": row["reject_reason"], "detail": row.get("reject_detail"),
                    "duration_ms": row.get("duration_ms"),
                }
            )
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
    return out.commit_shard(shard_id(sources["urls"]), tables, sources, dict(stats), options)


def _item_row(row: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    values = {name: item.get(name) for name in ITEMS_SCHEMA.names}
    values.update(url_id=row["url_id"], url=row["url"], url_index=row.get("url_index"), item_index=row["item_index"])
    return values


def summarize_fetch(out: OutputDir, expected_urls: set[str], extra: dict[str, Any]) -> dict[str, Any]:
    """URLs in = expanded + rejected, items in = kept + rejected (both checked), and every URL in exactly one
    committed shard."""
    seen: dict[str, int] = defaultdict(int)
    totals: dict[str, Any] = defaultdict(dict)
    totals.update(items=0, items_kept=0, urls_expanded=0, unlabelled=0, downloaded=0, from_archive=0, bytes=0, ms_kept=0, shards=0)
    url_rejected: dict[str, int] = {}
    for marker in out.markers():
        totals["shards"] += 1
        urls = set(marker["sources"].get("urls", []))
        discovery = {i for i in marker["sources"].get("rejected", []) if i in expected_urls} - urls
        for url in urls | discovery:
            seen[url] += 1
        stats = marker["stats"]
        for key in ("items", "items_kept", "urls_expanded", "unlabelled", "downloaded", "from_archive", "bytes", "ms_kept"):
            totals[key] += stats.get(key, 0)
        for reason, n in stats.get("rejected", {}).items():
            if "urls" in marker["sources"]:
                _add(totals["rejected"], reason, n)
            else:  # a discovery shard (unsafe or repeated URLs): URL-level rejects
                _add(url_rejected, reason, n)
        for reason, n in stats.get("url_rejected", {}).items():
            _add(url_rejected, reason, n)
    items_rejected = sum(totals["rejected"].values())
    urls_rejected = sum(url_rejected.values())
    url_ok = set(seen) == expected_urls and all(n == 1 for n in seen.values())
    counts_ok = totals["urls_expanded"] + urls_rejected == len(expected_urls) and totals["items_kept"] + items_rejected == totals["items"]
    return {
        "config_fingerprint": out.fingerprint,
        "inputs": {"in": totals["items"] + urls_rejected, "kept": totals["items_kept"], "rejected": items_rejected + urls_rejected},
        "urls": {"in": len(expected_urls), "expanded": totals["urls_expanded"], "rejected": urls_rejected,
                 "rejected_by_reason": dict(sorted(url_rejected.items()))},
        "items": {"in": totals["items"], "kept": totals["items_kept"], "rejected": items_rejected,
                  "rejected_by_reason": dict(sorted(totals["rejected"].items())), "unlabelled_audio": totals["unlabelled"]},
        "hours_kept": round(totals["ms_kept"] / 3_600_000, 4),
        "bytes": totals["bytes"],
        "downloads": {"downloaded": totals["downloaded"], "from_archive": totals["from_archive"]},
        "accounting": {
            "ok": url_ok and counts_ok,
            "missing": sorted(expected_urls - set(seen))[:20],
            "counted_twice": sorted(i for i, n in seen.items() if n > 1)[:20],
        },
        "shards": totals["shards"],
        **extra,
    }


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


def write_jsonl_atomically(path: Path, lines: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    with open(tmp, "w", encoding="utf-8") as handle:
        for line in lines:
            handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    _fsync_replace(tmp, path)


def remove_if_exists(path: Path) -> None:
    if path.exists():
        os.unlink(path)
