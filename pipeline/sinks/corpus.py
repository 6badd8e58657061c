"""The corpus job's sink: source rows (windows nested) become window rows, reject rows and shard statistics.

Windows are unnested with Arrow (their FLAC bytes are never copied through Python objects); each window row takes
the window's own fields, and its source's fields for the rest of ``CORPUS_SCHEMA``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.audio import SAMPLE_RATE
from pipeline.io.commit import OutputDir, OutputOptions, shard_id, split_by_bytes
from pipeline.schema import AUDIO_TYPE, CORPUS_SCHEMA, REJECTS_SCHEMA, WINDOW_TYPE, RejectScope
from pipeline.sinks import accounting
from pipeline.sinks.accounting import count

CORPUS_TABLES = ("corpus", "rejects")
WINDOW_FIELDS = frozenset(field.name for field in WINDOW_TYPE)
# Small per-source columns the rejects and statistics need (never the windows or the audio).
SOURCE_COLUMNS = ("source_id", "source", "duration_ms", "reject_reason", "reject_stage", "reject_detail", "duplicate_of", "cues", "dropped")


def window_rows(kept: pa.Table) -> pa.Table:
    """One ``CORPUS_SCHEMA`` row per window of the kept sources, sorted by segment id."""
    if kept.num_rows == 0:
        return CORPUS_SCHEMA.empty_table()
    windows = kept["windows"].combine_chunks()
    parent = pc.list_parent_indices(windows)
    flat = pc.list_flatten(windows)
    columns = []
    for field in CORPUS_SCHEMA:
        if field.name in WINDOW_FIELDS and field.name in kept.column_names:
            # judged per window (language, task, ...); a window that was not judged takes its source's value
            column = pc.coalesce(flat.field(field.name).cast(field.type), kept[field.name].combine_chunks().take(parent).cast(field.type))
        elif field.name in WINDOW_FIELDS:
            column = flat.field(field.name)
        elif field.name == "audio":
            segment_ids = flat.field("segment_id")
            paths = pc.binary_join_element_wise(segment_ids, pa.scalar(".flac"), pa.scalar(""))
            column = pa.StructArray.from_arrays([flat.field("flac").cast(pa.binary()), paths], fields=list(AUDIO_TYPE))
        elif field.name == "sample_rate":
            column = pa.array(np.full(len(flat), SAMPLE_RATE, dtype=np.int32))
        elif field.name == "code_switched":
            column = pc.fill_null(_column(kept, "code_switched", pa.bool_()), False).take(parent)
        else:
            column = _column(kept, field.name, field.type).take(parent)
        if field.name == "task":
            column = pc.fill_null(column, "transcribe")
        columns.append(column.cast(field.type))
    return pa.Table.from_arrays(columns, schema=CORPUS_SCHEMA).sort_by("segment_id")


def _column(table: pa.Table, name: str, type_: pa.DataType) -> pa.ChunkedArray:
    return table[name] if name in table.column_names else pa.chunked_array([pa.nulls(table.num_rows, type_)])


def window_stats(kept: pa.Table, stats: dict[str, Any]) -> None:
    """Windows and their hours (all, with speech, per language and task) into the shard's statistics."""
    if kept.num_rows == 0:
        return
    flat = pc.list_flatten(kept["windows"].combine_chunks())
    parent = pc.list_parent_indices(kept["windows"].combine_chunks()).to_numpy()
    length = (pc.subtract(flat.field("end_ms"), flat.field("start_ms"))).to_numpy(zero_copy_only=False)
    speech = flat.field("has_speech").to_numpy(zero_copy_only=False)
    stats["windows"] += len(length)
    stats["windows_speech"] += int(speech.sum())
    stats["ms_out"] += int(length.sum())
    stats["ms_out_speech"] += int(length[speech].sum())
    # Hours per language and task, window by window (a code-switched source counts in each of its languages).
    languages = pc.coalesce(flat.field("language"), _column(kept, "language", pa.string()).combine_chunks().take(parent)).to_pylist()
    tasks = pc.coalesce(flat.field("task"), _column(kept, "task", pa.string()).combine_chunks().take(parent)).to_pylist()
    for ms, language, task in zip(length.tolist(), languages, tasks):
        count(stats["ms_per_language"], str(language), ms)
        count(stats["ms_per_task"], task or "transcribe", ms)
        count(stats["ms_per_language_task"], f"{language or '?'}\t{task or 'transcribe'}", ms)
    switched = _column(kept, "code_switched", pa.bool_()).to_pylist()
    stats["sources_code_switched"] += sum(1 for s in switched if s)
    for value in flat.field("agreement_logprob").drop_null().to_numpy(zero_copy_only=False):
        # tenths of a nat per token, -10 = -10 or lower: the report's histogram of kept windows' agreement
        count(stats["agreement_logprob"], f"{max(np.floor(float(value) * 10) / 10, -10.0):.1f}", 1)
    # Histograms for the report (whole seconds; characters per second of speech windows, 60 = 60 or more).
    for second, n in zip(*np.unique(np.minimum(length // 1000, 30), return_counts=True)):
        count(stats["window_seconds"], str(int(second)), int(n))
    chars = pc.utf8_length(pc.utf8_trim_whitespace(pc.fill_null(flat.field("text"), ""))).to_numpy(zero_copy_only=False)
    spoken = speech & (length > 0)
    rates = np.minimum(chars[spoken] * 1000 // length[spoken], 60)
    for rate, n in zip(*np.unique(rates, return_counts=True)):
        count(stats["chars_per_second"], str(int(rate)), int(n))


def reject_rows(batch: pa.Table, stats: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """Reject rows (whole sources, and stretches dropped from kept ones), the source ids kept and rejected, and
    their statistics."""
    rejects: list[dict[str, Any]] = []
    sources: dict[str, list[str]] = {"kept": [], "rejected": []}
    present = [name for name in SOURCE_COLUMNS if name in batch.column_names]
    for row in batch.select(present).to_pylist():
        duration = row.get("duration_ms")
        if duration is not None:
            stats["ms_in"] += duration
        reason = row.get("reject_reason")
        if reason is not None:
            sources["rejected"].append(row["source_id"])
            count(stats["rejected"], reason)
            # Rejected before decoding: the transcript's last cue tells roughly how much audio was dropped.
            count(stats["ms_rejected"], reason, duration or max((c["end_ms"] for c in row.get("cues") or []), default=0))
            rejects.append(accounting.source_reject(row))
            _reject_stats(stats, row.get("reject_stage"), reason, RejectScope.SOURCE.value, duration)
            continue
        sources["kept"].append(row["source_id"])
        stats["sources_kept"] += 1
        for dropped in row.get("dropped") or []:
            stretch = (dropped["end_ms"] - dropped["start_ms"]) if dropped["start_ms"] is not None else 0
            entry = stats["stretches_dropped"].setdefault(dropped["reason"], {"count": 0, "ms": 0})
            entry["count"] += 1
            entry["ms"] += stretch
            _reject_stats(stats, dropped["stage"], dropped["reason"], RejectScope.STRETCH.value, stretch if dropped["start_ms"] is not None else None)
            rejects.append(
                {
                    "source_id": row["source_id"], "source": row["source"], "scope": RejectScope.STRETCH.value,
                    "stage": dropped["stage"], "reason": dropped["reason"], "detail": dropped["detail"],
                    "start_ms": dropped["start_ms"], "end_ms": dropped["end_ms"], "duration_ms": duration,
                }
            )
    rejects.sort(key=lambda r: (r["source_id"], r["scope"], r.get("start_ms") or 0, r["reason"]))
    return rejects, sources


def _reject_stats(stats: dict[str, Any], stage: str | None, reason: str, scope: str, ms: int | None) -> None:
    """Rows and audio per (stage, reason, scope), for the report's table of rejects."""
    entry = stats["rejects"].setdefault(f"{stage or '?'}\t{reason}\t{scope}", {"rows": 0, "ms": 0, "unknown": 0})
    entry["rows"] += 1
    if ms is None:
        entry["unknown"] += 1
    else:
        entry["ms"] += ms


def commit_corpus_batch(batch: pa.Table, out: OutputDir, options: OutputOptions) -> dict[str, Any]:
    stats: dict[str, Any] = {"sources_kept": 0, "ms_in": 0, "ms_out": 0, "ms_out_speech": 0, "windows": 0, "windows_speech": 0,
                             "rejected": {}, "ms_rejected": {}, "ms_per_language": {}, "ms_per_task": {}, "stretches_dropped": {},
                             "ms_per_language_task": {}, "window_seconds": {}, "chars_per_second": {}, "rejects": {},
                             "sources_code_switched": 0, "agreement_logprob": {}}
    rejects, sources = reject_rows(batch, stats)
    kept = batch.filter(pc.is_null(batch["reject_reason"])) if "reject_reason" in batch.column_names else batch
    if kept.num_rows and pc.any(pc.equal(pc.fill_null(pc.list_value_length(kept["windows"]), 0), 0)).as_py():
        raise RuntimeError("a source is neither rejected nor has windows (a stage bug)")
    window_stats(kept, stats)
    corpus = window_rows(kept)
    sizes = pc.binary_length(pc.struct_field(corpus["audio"], "bytes")).to_pylist() if corpus.num_rows else []
    parts = split_by_bytes(corpus, sizes, int(options.max_shard_mb * 1024 * 1024))
    rejects_table = pa.Table.from_pylist(rejects, schema=REJECTS_SCHEMA)
    stats = {key: value for key, value in stats.items() if value != {}}
    refs = batch["ref"].to_pylist() if "ref" in batch.column_names else None
    return out.commit_shard(shard_id(sources["kept"] + sources["rejected"]), {"corpus": parts, "rejects": [rejects_table]}, sources, stats, options,
                            refs=refs)


def summarize(out: OutputDir, found: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``summary.json`` from the committed markers, read one at a time: inputs (``found`` by discovery) = kept +
    rejected, each committed once (checked on the refs), hours, windows."""
    refs: list[Any] = []

    def markers():
        for marker in out.iter_markers():
            refs.append(np.asarray(marker.get("refs", []), dtype=np.int64))
            yield marker

    totals = accounting.tally(markers())
    kept, rejected = totals.get("sources_kept", 0), totals.get("rejected", {})
    hours = accounting.hours
    committed = np.concatenate(refs) if refs else np.zeros(0, dtype=np.int64)
    return accounting.summary(
        out.fingerprint,
        accounting.inputs(found, kept, rejected),
        accounting.check_refs(found, committed, kept, sum(rejected.values())),
        totals["shards"],
        hours={
            "in": hours(totals.get("ms_in", 0)),
            "out": hours(totals.get("ms_out", 0)),
            "out_speech": hours(totals.get("ms_out_speech", 0)),
            "per_language": accounting.hours_by(totals.get("ms_per_language", {})),
            "per_task": accounting.hours_by(totals.get("ms_per_task", {})),
            "rejected_by_reason": accounting.hours_by(totals.get("ms_rejected", {})),
        },
        windows={
            "total": totals.get("windows", 0),
            "speech": totals.get("windows_speech", 0),
            "no_speech": totals.get("windows", 0) - totals.get("windows_speech", 0),
        },
        sources_code_switched=totals.get("sources_code_switched", 0),
        stretches_dropped={k: {"count": v["count"], "hours": hours(v["ms"])} for k, v in sorted(totals.get("stretches_dropped", {}).items())},
        **(extra or {}),
    )
