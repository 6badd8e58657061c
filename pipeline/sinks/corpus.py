"""The corpus job's sink: source rows (windows nested) become window rows, reject rows and shard statistics."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pyarrow as pa

from pipeline.audio import SAMPLE_RATE
from pipeline.io.commit import OutputDir, OutputOptions, shard_id, split_by_bytes
from pipeline.schema import CORPUS_SCHEMA, REJECTS_SCHEMA, RejectScope

CORPUS_TABLES = ("corpus", "rejects")


def _add(counter: dict[str, Any], key: str, value: float) -> None:
    counter[key] = counter.get(key, 0) + value


def explode_batch(batch: pa.Table) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, list[str]], dict[str, Any]]:
    """Window rows, reject rows, the source ids kept/rejected, and statistics for one batch of source rows."""
    windows_out: list[dict[str, Any]] = []
    rejects_out: list[dict[str, Any]] = []
    sources: dict[str, list[str]] = {"kept": [], "rejected": []}
    stats: dict[str, Any] = defaultdict(dict)
    stats.update(sources_kept=0, ms_in=0, ms_out=0, ms_out_speech=0, windows=0, windows_speech=0)
    for row in batch.to_pylist():
        duration = row.get("duration_ms")
        if duration is not None:
            stats["ms_in"] += duration
        reason = row.get("reject_reason")
        if reason is not None:
            sources["rejected"].append(row["source_id"])
            _add(stats["rejected"], reason, 1)
            # Rejected before decoding: the transcript's last cue tells roughly how much audio was dropped.
            _add(stats["ms_rejected"], reason, duration or max((c["end_ms"] for c in row.get("cues") or []), default=0))
            rejects_out.append(
                {
                    "source_id": row["source_id"],
                    "source": row["source"],
                    "scope": RejectScope.SOURCE.value,
                    "stage": row.get("reject_stage"),
                    "reason": reason,
                    "detail": row.get("reject_detail"),
                    "duration_ms": duration,
                    "duplicate_of": row.get("duplicate_of"),
                }
            )
            continue
        windows = row.get("windows") or []
        if not windows:
            raise RuntimeError(f"source {row['source_id']} is neither rejected nor has windows (a stage bug)")
        sources["kept"].append(row["source_id"])
        stats["sources_kept"] += 1
        language = row.get("language")
        task = row.get("task") or "transcribe"
        for window in windows:
            length = window["end_ms"] - window["start_ms"]
            stats["windows"] += 1
            stats["ms_out"] += length
            if window["has_speech"]:
                stats["windows_speech"] += 1
                stats["ms_out_speech"] += length
            _add(stats["ms_per_language"], str(language), length)
            _add(stats["ms_per_task"], task, length)
            windows_out.append(
                {
                    "segment_id": window["segment_id"],
                    "source_id": row["source_id"],
                    "source": row["source"],
                    "window_index": window["window_index"],
                    "start_ms": window["start_ms"],
                    "end_ms": window["end_ms"],
                    "audio": {"bytes": window["flac"], "path": f"{window['segment_id']}.flac"},
                    "sample_rate": SAMPLE_RATE,
                    "text": window["text"],
                    "text_timestamped": window["text_timestamped"],
                    "prev_text": window["prev_text"],
                    "language": language,
                    "task": task,
                    "has_speech": window["has_speech"],
                    "transcript_language": row.get("transcript_language"),
                    "transcript_language_prob": row.get("transcript_language_prob"),
                    "audio_language": row.get("audio_language"),
                    "audio_language_prob": row.get("audio_language_prob"),
                    "metadata": row.get("metadata"),
                }
            )
        for dropped in row.get("dropped") or []:
            stretch = (dropped["end_ms"] - dropped["start_ms"]) if dropped["start_ms"] is not None else 0
            entry = stats["stretches_dropped"].setdefault(dropped["reason"], {"count": 0, "ms": 0})
            entry["count"] += 1
            entry["ms"] += stretch
            rejects_out.append(
                {
                    "source_id": row["source_id"],
                    "source": row["source"],
                    "scope": RejectScope.STRETCH.value,
                    "stage": dropped["stage"],
                    "reason": dropped["reason"],
                    "detail": dropped["detail"],
                    "start_ms": dropped["start_ms"],
                    "end_ms": dropped["end_ms"],
                    "duration_ms": duration,
                }
            )
    windows_out.sort(key=lambda w: w["segment_id"])
    rejects_out.sort(key=lambda r: (r["source_id"], r["scope"], r.get("start_ms") or 0, r["reason"]))
    return windows_out, rejects_out, sources, dict(stats)


def commit_corpus_batch(batch: pa.Table, out: OutputDir, options: OutputOptions) -> dict[str, Any]:
    windows, rejects, sources, stats = explode_batch(batch)
    corpus = pa.Table.from_pylist(windows, schema=CORPUS_SCHEMA)
    sizes = [len(w["audio"]["bytes"]) for w in windows]
    parts = split_by_bytes(corpus, sizes, int(options.max_shard_mb * 1024 * 1024))
    rejects_table = pa.Table.from_pylist(rejects, schema=REJECTS_SCHEMA)
    shard = shard_id(sources["kept"] + sources["rejected"])
    return out.commit_shard(shard, {"corpus": parts, "rejects": [rejects_table]}, sources, stats, options)


def summarize(out: OutputDir, expected_ids: set[str], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Aggregate committed markers into ``summary.json`` and check that every source is accounted for once."""
    seen: dict[str, int] = defaultdict(int)
    kept: set[str] = set()
    totals: dict[str, Any] = defaultdict(dict)
    totals.update(ms_in=0, ms_out=0, ms_out_speech=0, windows=0, windows_speech=0, shards=0)
    for marker in out.markers():
        totals["shards"] += 1
        for kind, ids in marker["sources"].items():
            for source_id in ids:
                seen[source_id] += 1
            if kind == "kept":
                kept.update(ids)
        stats = marker["stats"]
        for key in ("ms_in", "ms_out", "ms_out_speech", "windows", "windows_speech"):
            totals[key] += stats.get(key, 0)
        for key in ("rejected", "ms_rejected", "ms_per_language", "ms_per_task"):
            for name, value in stats.get(key, {}).items():
                _add(totals[key], name, value)
        for name, entry in stats.get("stretches_dropped", {}).items():
            agg = totals["stretches_dropped"].setdefault(name, {"count": 0, "ms": 0})
            agg["count"] += entry["count"]
            agg["ms"] += entry["ms"]
    missing = sorted(expected_ids - set(seen))
    doubled = sorted(i for i, n in seen.items() if n > 1)
    unexpected = sorted(set(seen) - expected_ids)
    rejected_total = sum(totals["rejected"].values())
    hours = lambda ms: round(ms / 3_600_000, 4)  # noqa: E731
    summary = {
        "config_fingerprint": out.fingerprint,
        "sources": {
            "in": len(expected_ids),
            "kept": len(kept),
            "rejected": rejected_total,
            "rejected_by_reason": dict(sorted(totals["rejected"].items())),
        },
        "accounting": {
            "ok": not missing and not doubled and not unexpected and len(kept) + rejected_total == len(expected_ids),
            "rule": "every input source is in exactly one committed shard, as kept or rejected",
            "missing": missing[:20],
            "counted_twice": doubled[:20],
            "unexpected": unexpected[:20],
        },
        "hours": {
            "in": hours(totals["ms_in"]),
            "out": hours(totals["ms_out"]),
            "out_speech": hours(totals["ms_out_speech"]),
            "per_language": {k: hours(v) for k, v in sorted(totals["ms_per_language"].items())},
            "per_task": {k: hours(v) for k, v in sorted(totals["ms_per_task"].items())},
            "rejected_by_reason": {k: hours(v) for k, v in sorted(totals["ms_rejected"].items())},
        },
        "windows": {
            "total": totals["windows"],
            "speech": totals["windows_speech"],
            "no_speech": totals["windows"] - totals["windows_speech"],
        },
        "stretches_dropped": {
            k: {"count": v["count"], "hours": hours(v["ms"])} for k, v in sorted(totals["stretches_dropped"].items())
        },
        "shards": totals["shards"],
    }
    if extra:
        summary.update(extra)
    return summary

