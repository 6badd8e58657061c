"""The transcribe job's sink: one Parquet row per segment, per-file SRT/VTT/JSON/TXT, rejects, comparison figures."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pyarrow as pa

import numpy as np

from pipeline.io.commit import OutputDir, OutputOptions, input_keys, inputs_of, shard_id
from pipeline.schema import REJECTS_SCHEMA, TRANSCRIPTS_SCHEMA
from pipeline.io.transcripts import render
from pipeline.sinks import accounting
from pipeline.sinks.accounting import count

TRANSCRIBE_TABLES = ("transcripts", "rejects", "comparison")
FILES_DIR = "files"
COMPARISON_SCHEMA = pa.schema(
    [
        ("source_id", pa.string()),
        ("source", pa.string()),
        ("group", pa.string()),
        ("language", pa.string()),
        ("duration_ms", pa.int64()),
        ("reference_words", pa.int64()),
        ("word_errors", pa.int64()),
        ("wer", pa.float32()),
        ("reference_chars", pa.int64()),
        ("char_errors", pa.int64()),
        ("cer", pa.float32()),
    ]
)


def commit_transcribe_batch(batch: pa.Table, out: OutputDir, options: OutputOptions, formats: tuple[str, ...]) -> dict[str, Any]:
    segments_out: list[dict[str, Any]] = []
    rejects_out: list[dict[str, Any]] = []
    comparison_out: list[dict[str, Any]] = []
    files: dict[str, str] = {}
    sources: dict[str, list[str]] = {"kept": [], "rejected": []}
    keys: dict[str, list[int]] = {"kept": [], "rejected": []}
    stats: dict[str, Any] = defaultdict(dict)
    stats.update(files_transcribed=0, files_multilingual=0, ms_audio=0, ms_speech=0, segments=0, segments_flagged=0)
    for row in batch.to_pylist():
        keys["rejected" if row.get("reject_reason") else "kept"].append(row.get("key"))
        if row.get("reject_reason"):
            sources["rejected"].append(row["source_id"])
            count(stats["rejected"], row["reject_reason"], 1)
            rejects_out.append(accounting.source_reject(row))
            continue
        sources["kept"].append(row["source_id"])
        stats["files_transcribed"] += 1
        stats["ms_audio"] += row["duration_ms"]
        stats["ms_speech"] += row.get("speech_ms") or 0
        count(stats["ms_per_language"], str(row.get("language")), row["duration_ms"])
        if len(row.get("languages") or []) > 1:
            stats["files_multilingual"] += 1
        segments = row.get("segments") or []
        for index, seg in enumerate(segments):
            segments_out.append(dict(seg, source_id=row["source_id"], source=row["source"], segment_index=index))
            stats["segments"] += 1
            if seg["flag"]:
                stats["segments_flagged"] += 1
                count(stats["flagged"], seg["flag"], 1)
        trusted = [s for s in segments if not s["flag"]]
        for fmt in formats:
            if fmt != "parquet":
                files[f"{row['output_name']}.{fmt}"] = render(fmt, trusted, row.get("language"), row["source"], row.get("languages"))
        if row.get("word_errors") is not None:
            comparison_out.append({name: row.get(name) for name in COMPARISON_SCHEMA.names})
    segments_out.sort(key=lambda s: (s["source_id"], s["segment_index"]))
    rejects_out.sort(key=lambda r: r["source_id"])
    comparison_out.sort(key=lambda r: r["source_id"])
    tables = {
        "transcripts": [pa.Table.from_pylist(segments_out, schema=TRANSCRIPTS_SCHEMA)],
        "rejects": [pa.Table.from_pylist(rejects_out, schema=REJECTS_SCHEMA)],
        "comparison": [pa.Table.from_pylist(comparison_out, schema=COMPARISON_SCHEMA)],
    }
    ids = sources["kept"] + sources["rejected"]
    transient = sum(1 for r in rejects_out if r.get("transient"))
    return out.commit_shard(shard_id(ids), tables, sources, dict(stats), options, extra_files=files,
                            inputs=inputs_of(ids, keys["kept"] + keys["rejected"]), marker_fields={"transient": transient})


def summarize_transcription(out: OutputDir, found: np.ndarray, names: dict[int, str] | None = None, rank_top: int = 20) -> dict[str, Any]:
    """Files in (their keys ``found``) = transcribed + rejected (checked on the keys), hours, flags, and with
    references: WER per language and the groups of sources ranked by word errors x hours (the paper's way of
    choosing what to inspect by hand). ``names``: key -> source id of the inputs, for the accounting's messages."""
    markers = out.markers()
    totals = accounting.tally(markers)
    kept, rejected = totals.get("files_transcribed", 0), totals.get("rejected", {})
    committed = np.sort(np.concatenate([input_keys(m) for m in markers])) if markers else np.zeros(0, np.int64)
    known = dict(names or {})
    for marker in markers:
        known.update(zip(marker.get("inputs", {}).get("keys", []), marker.get("inputs", {}).get("ids", [])))
    summary = accounting.summary(
        out.fingerprint,
        accounting.inputs(len(found), kept, rejected),
        accounting.check_keys(found, committed, kept, sum(rejected.values()), lambda wanted: {k: known[k] for k in wanted if k in known}),
        totals["shards"],
        hours={"audio": accounting.hours(totals.get("ms_audio", 0)), "speech": accounting.hours(totals.get("ms_speech", 0)),
               "per_language": accounting.hours_by(totals.get("ms_per_language", {}))},
        segments={"total": totals.get("segments", 0), "flagged": totals.get("segments_flagged", 0),
                  "flagged_by_reason": dict(sorted(totals.get("flagged", {}).items()))},
        files_multilingual=totals.get("files_multilingual", 0),  # more than one language among their windows
    )
    comparison = out.read_committed("comparison", schema=COMPARISON_SCHEMA)
    if comparison is not None:
        summary["comparison"] = compare_summary(comparison.to_pylist(), rank_top)
    return summary


def compare_summary(rows: list[dict[str, Any]], rank_top: int = 20) -> dict[str, Any]:
    by_language: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    by_group: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for row in rows:
        for bucket in (by_language[row["language"] or "?"], by_group[row["group"] or "?"]):
            bucket["sources"] += 1
            bucket["hours"] += row["duration_ms"] / 3_600_000
            bucket["word_errors"] += row["word_errors"]
            bucket["reference_words"] += row["reference_words"]
            bucket["char_errors"] += row["char_errors"]
            bucket["reference_chars"] += row["reference_chars"]

    def figures(bucket: dict[str, float]) -> dict[str, Any]:
        wer = bucket["word_errors"] / max(bucket["reference_words"], 1)
        cer = bucket["char_errors"] / max(bucket["reference_chars"], 1)
        return {"sources": int(bucket["sources"]), "hours": round(bucket["hours"], 4), "wer": round(wer, 4), "cer": round(cer, 4),
                "wer_x_hours": round(wer * bucket["hours"], 6)}

    groups = sorted(((g, figures(b)) for g, b in by_group.items()), key=lambda kv: (-kv[1]["wer_x_hours"], kv[0]))
    return {
        "per_language": {k: figures(v) for k, v in sorted(by_language.items())},
        "groups_by_errors_x_hours": [dict(group=g, **f) for g, f in groups[:rank_top]],
    }
