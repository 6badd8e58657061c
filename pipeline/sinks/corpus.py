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
from pipeline.io.commit import OutputDir, OutputError, OutputOptions, input_keys, inputs_of, shard_id, split_by_bytes
from pipeline.schema import AUDIO_TYPE, CORPUS_SCHEMA, FINGERPRINTS_SCHEMA, REJECTS_SCHEMA, WINDOW_TYPE, RejectReason, RejectScope
from pipeline.sinks import accounting
from pipeline.sinks.accounting import count

CORPUS_TABLES = ("corpus", "rejects", "fingerprints")
WINDOW_FIELDS = frozenset(field.name for field in WINDOW_TYPE)
# Small per-source columns the rejects and statistics need (never the windows or the audio).
SOURCE_COLUMNS = ("source_id", "key", "source", "duration_ms", "reject_reason", "reject_stage", "reject_detail", "reject_transient", "duplicate_of",
                  "cues", "dropped")


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
        elif field.name == "cluster_id":  # a kept source keeps its own cluster (the audio dedup step may drop it later)
            column = kept["source_id"].combine_chunks().take(parent)
        else:
            column = _column(kept, field.name, field.type).take(parent)
        if field.name == "task":
            column = pc.fill_null(column, "transcribe")
        columns.append(column.cast(field.type))
    return pa.Table.from_arrays(columns, schema=CORPUS_SCHEMA).sort_by("segment_id")


def _column(table: pa.Table, name: str, type_: pa.DataType) -> pa.ChunkedArray:
    return table[name] if name in table.column_names else pa.chunked_array([pa.nulls(table.num_rows, type_)])


def window_stats(corpus: pa.Table, stats: dict[str, Any]) -> None:
    """Windows and their hours (all, with speech, per language and task) into the shard's statistics, from the
    ``CORPUS_SCHEMA`` rows (so publishing can take a dropped source's windows out again the same way)."""
    if corpus.num_rows == 0:
        return
    length = pc.subtract(corpus["end_ms"], corpus["start_ms"]).to_numpy(zero_copy_only=False)
    speech = pc.fill_null(corpus["has_speech"], False).to_numpy(zero_copy_only=False)
    stats["windows"] += len(length)
    stats["windows_speech"] += int(speech.sum())
    stats["ms_out"] += int(length.sum())
    stats["ms_out_speech"] += int(length[speech].sum())
    # Hours per language and task, window by window (a code-switched source counts in each of its languages).
    for ms, language, task in zip(length.tolist(), corpus["language"].to_pylist(), corpus["task"].to_pylist()):
        count(stats["ms_per_language"], str(language), ms)
        count(stats["ms_per_task"], task or "transcribe", ms)
        count(stats["ms_per_language_task"], f"{language or '?'}\t{task or 'transcribe'}", ms)
    switched = corpus.filter(pc.fill_null(corpus["code_switched"], False))
    stats["sources_code_switched"] += len(pc.unique(switched["source_id"])) if switched.num_rows else 0
    for value in corpus["agreement_logprob"].drop_null().to_numpy(zero_copy_only=False):
        # tenths of a nat per token, -10 = -10 or lower: the report's histogram of kept windows' agreement
        count(stats["agreement_logprob"], f"{max(np.floor(float(value) * 10) / 10, -10.0):.1f}", 1)
    # Histograms for the report (whole seconds; characters per second of speech windows, 60 = 60 or more).
    for second, n in zip(*np.unique(np.minimum(length // 1000, 30), return_counts=True)):
        count(stats["window_seconds"], str(int(second)), int(n))
    chars = pc.utf8_length(pc.utf8_trim_whitespace(pc.fill_null(corpus["text"], ""))).to_numpy(zero_copy_only=False)
    spoken = speech & (length > 0)
    rates = np.minimum(chars[spoken] * 1000 // length[spoken], 60)
    for rate, n in zip(*np.unique(rates, return_counts=True)):
        count(stats["chars_per_second"], str(int(rate)), int(n))


def reject_rows(batch: pa.Table, stats: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, list[str]], list[int]]:
    """Reject rows (whole sources, and stretches dropped from kept ones), the source ids kept and rejected, the keys
    of the batch's inputs (in the order of ``kept + rejected``), and their statistics."""
    rejects: list[dict[str, Any]] = []
    sources: dict[str, list[str]] = {"kept": [], "rejected": []}
    keys: dict[str, list[int]] = {"kept": [], "rejected": []}
    present = [name for name in SOURCE_COLUMNS if name in batch.column_names]
    for row in batch.select(present).to_pylist():
        keys["rejected" if row.get("reject_reason") is not None else "kept"].append(row.get("key"))
        duration = row.get("duration_ms")
        if duration is not None:
            stats["ms_in"] += duration
        reason = row.get("reject_reason")
        if reason is not None:
            sources["rejected"].append(row["source_id"])
            count(stats["rejected"], reason)
            # The audio's length (decoded, or probed from the container's header for rejects before decoding); for a
            # file that cannot be read, the transcript's last cue tells roughly how much audio was dropped.
            count(stats["ms_rejected"], reason, duration or max((c["end_ms"] for c in row.get("cues") or []), default=0))
            reject = accounting.source_reject(row)
            # A near-duplicate (or a copy of an evaluation text) belongs to the cluster of the source kept for it.
            linked = reason in (RejectReason.DUPLICATE.value, RejectReason.EVAL_OVERLAP.value) and row.get("duplicate_of")
            rejects.append(dict(reject, cluster_id=row["duplicate_of"] if linked else row["source_id"]))
            _reject_stats(stats, row.get("reject_stage"), reason, RejectScope.SOURCE.value, duration)
            continue
        sources["kept"].append(row["source_id"])
        stats["sources_kept"] += 1
        for dropped in row.get("dropped") or []:
            _stretch_stats(stats, dropped)
            rejects.append(
                {
                    "source_id": row["source_id"], "source": row["source"], "scope": RejectScope.STRETCH.value,
                    "stage": dropped["stage"], "reason": dropped["reason"], "detail": dropped["detail"],
                    "start_ms": dropped["start_ms"], "end_ms": dropped["end_ms"], "duration_ms": duration, "cluster_id": row["source_id"],
                }
            )
    rejects.sort(key=lambda r: (r["source_id"], r["scope"], r.get("start_ms") or 0, r["reason"]))
    return rejects, sources, keys["kept"] + keys["rejected"]


def _stretch_stats(stats: dict[str, Any], dropped: dict[str, Any]) -> None:
    """A stretch dropped from a kept source (``DROPPED_TYPE``, or its reject row) into the statistics."""
    timed = dropped["start_ms"] is not None
    stretch = dropped["end_ms"] - dropped["start_ms"] if timed else 0
    entry = stats["stretches_dropped"].setdefault(dropped["reason"], {"count": 0, "ms": 0})
    entry["count"] += 1
    entry["ms"] += stretch
    _reject_stats(stats, dropped["stage"], dropped["reason"], RejectScope.STRETCH.value, stretch if timed else None)


def _reject_stats(stats: dict[str, Any], stage: str | None, reason: str, scope: str, ms: int | None) -> None:
    """Rows and audio per (stage, reason, scope), for the report's table of rejects."""
    entry = stats["rejects"].setdefault(f"{stage or '?'}\t{reason}\t{scope}", {"rows": 0, "ms": 0, "unknown": 0})
    entry["rows"] += 1
    if ms is None:
        entry["unknown"] += 1
    else:
        entry["ms"] += ms


def empty_stats() -> dict[str, Any]:
    return {"sources_kept": 0, "ms_in": 0, "ms_out": 0, "ms_out_speech": 0, "windows": 0, "windows_speech": 0,
            "rejected": {}, "ms_rejected": {}, "ms_per_language": {}, "ms_per_task": {}, "stretches_dropped": {},
            "ms_per_language_task": {}, "window_seconds": {}, "chars_per_second": {}, "rejects": {},
            "sources_code_switched": 0, "agreement_logprob": {}}


def fingerprint_rows(kept: pa.Table) -> pa.Table:
    """The kept sources' fingerprints (``FINGERPRINTS_SCHEMA``), for the audio dedup step after the run: a few KB a
    source, kept apart from the windows so that step never reads audio."""
    if kept.num_rows == 0 or "fingerprint" not in kept.column_names:
        return FINGERPRINTS_SCHEMA.empty_table()
    rows = kept.filter(pc.is_valid(kept["fingerprint"]))
    return pa.table({field.name: _column(rows, field.name, field.type).cast(field.type) for field in FINGERPRINTS_SCHEMA}, schema=FINGERPRINTS_SCHEMA)


def commit_corpus_batch(batch: pa.Table, out: OutputDir, options: OutputOptions) -> dict[str, Any]:
    batch = _without_empty_sources(batch)
    stats = empty_stats()
    rejects, sources, keys = reject_rows(batch, stats)
    kept = batch.filter(pc.is_null(batch["reject_reason"])) if "reject_reason" in batch.column_names else batch
    corpus = window_rows(kept)
    window_stats(corpus, stats)
    rejects_table = pa.Table.from_pylist(rejects, schema=REJECTS_SCHEMA)
    stats = {name: value for name, value in stats.items() if value != {}}
    tables = {"corpus": _corpus_parts(corpus, options), "rejects": [rejects_table], "fingerprints": [fingerprint_rows(kept)]}
    ids = sources["kept"] + sources["rejected"]
    return out.commit_shard(shard_id(ids), tables, sources, stats, options, inputs=inputs_of(ids, keys),
                            marker_fields=_marker_fields(rejects_table))


DUPLICATE_REASONS = (RejectReason.DUPLICATE.value, RejectReason.EVAL_OVERLAP.value)
AFTER_DEDUP_REASONS = pa.array([*DUPLICATE_REASONS, RejectReason.AUDIO_DUPLICATE.value])


def _transient_count(rejects: pa.Table) -> int:
    """Rejects of faults that may pass (``--retry-transient`` takes their shards back)."""
    return int(pc.sum(pc.fill_null(rejects["transient"], False).cast(pa.int64())).as_py() or 0) if rejects.num_rows else 0


def _without_empty_sources(batch: pa.Table) -> pa.Table:
    """A source neither rejected nor holding a window (a stage bug) becomes its own ``internal_error`` reject."""
    if batch.num_rows == 0 or "windows" not in batch.column_names:
        return batch
    active = pc.is_null(batch["reject_reason"]) if "reject_reason" in batch.column_names else pa.array([True] * batch.num_rows)
    empty = pc.and_(active, pc.equal(pc.fill_null(pc.list_value_length(batch["windows"]), 0), 0))
    if not pc.any(empty).as_py():
        return batch
    reason = pc.if_else(empty, RejectReason.INTERNAL_ERROR.value, batch["reject_reason"] if "reject_reason" in batch.column_names else pa.scalar(None, pa.string()))
    detail = pc.if_else(empty, "a source neither rejected nor given a window (a stage bug)",
                        batch["reject_detail"] if "reject_detail" in batch.column_names else pa.scalar(None, pa.string()))
    stage = pc.if_else(empty, "commit", batch["reject_stage"] if "reject_stage" in batch.column_names else pa.scalar(None, pa.string()))
    for name, column in (("reject_reason", reason), ("reject_detail", detail), ("reject_stage", stage)):
        batch = batch.set_column(batch.column_names.index(name), name, column) if name in batch.column_names else batch.append_column(name, column)
    return batch


def _corpus_parts(corpus: pa.Table, options: OutputOptions) -> list[pa.Table]:
    sizes = pc.binary_length(pc.struct_field(corpus["audio"], "bytes")).to_pylist() if corpus.num_rows else []
    return split_by_bytes(corpus, sizes, int(options.max_shard_mb * 1024 * 1024))


# --- publishing decisions made after the run (audio duplicates) -------------------------------------------------


def audio_work(out: OutputDir, decisions: Any) -> tuple[list[str], list[str]]:
    """(the committed shards to publish under ``decisions``, the shards to take back and process again), from the
    markers alone, read one at a time. A shard not yet published under these decisions is published when they drop
    one of its kept sources, change the keeper or the detail of a source it dropped before, or move one of its
    duplicates to another cluster; it is processed again when a source it dropped is no longer a duplicate (its
    windows are gone: only a new decode brings them back)."""
    publish, redo = [], []
    for marker in out.iter_markers():
        if marker.get("version") == decisions.version:
            continue
        before = marker.get("audio_dropped", {})
        now = _dropped_as(decisions, list(before))
        if any(entry is None for entry in now.values()):
            redo.append(marker["shard"])
            continue
        changed = any(now[source_id] != tuple(before[source_id]) for source_id in before)
        kept = marker["sources"].get("kept", [])
        newly = bool(kept) and bool(len(decisions)) and pc.any(pc.is_in(pa.array(kept, pa.string()), value_set=decisions.dropped)).as_py()
        targets = marker.get("clusters", [])
        moves = marker.get("cluster_moves", {})
        expected = _dropped_as(decisions, targets)
        moved = any((expected[t][0] if expected[t] else t) != moves.get(t, t) for t in targets)
        if changed or newly or moved:
            publish.append(marker["shard"])
    return publish, redo


def _dropped_as(decisions: Any, ids: list[str]) -> dict[str, tuple[str, str] | None]:
    """{id: (its keeper, the reject detail)} under ``decisions``, None for an id they do not drop."""
    if not ids:
        return {}
    at = pc.index_in(pa.array(ids, pa.string()), value_set=decisions.dropped).to_pylist()
    return {i: None if k is None else (decisions.keepers[k].as_py(), decisions.detail(k)) for i, k in zip(ids, at)}


def publish_shards(shards: pa.Table, out: OutputDir, options: OutputOptions, decisions: Any) -> pa.Table:
    """For each shard named in ``shards["shard"]``: ``publish_shard``. One Ray task per shard (``Plan.each``)."""
    dropped = [publish_shard(out, shard, options, decisions) for shard in shards["shard"].to_pylist()]
    return pa.table({"shard": shards["shard"], "dropped": pa.array(dropped, pa.int64())})


def publish_shard(out: OutputDir, shard: str, options: OutputOptions, decisions: Any) -> int:
    """Rewrite one committed shard under the audio dedup ``decisions`` (``stages.audio_dedup.AudioDuplicateDecisions``:
    sorted ``dropped`` ids, their ``keepers``, ``detail(i)``, a ``version``): the newly dropped sources' windows and
    stretch rejects leave, each becomes one ``audio_duplicate`` reject row, the sources it dropped before take their
    keepers and details now, its near-duplicates join the cluster of the source kept for them now, and the marker's
    statistics follow. The fingerprints stay as they were (a rerun decides again from them and gets the same
    decisions). Returns how many sources it newly dropped; 0 when already published. A source dropped before and
    not now cannot be published back (its windows are gone): ``audio_work`` sends such shards to be processed again."""
    marker = out.read_marker(shard)
    if marker.get("version") == decisions.version:
        return 0
    corpus = out.read_shard(marker, "corpus", CORPUS_SCHEMA)
    rejects = out.read_shard(marker, "rejects", REJECTS_SCHEMA)
    fingerprints = out.read_shard(marker, "fingerprints", FINGERPRINTS_SCHEMA)
    before = _dropped_as(decisions, list(marker.get("audio_dropped", {})))
    if any(entry is None for entry in before.values()):
        raise OutputError(f"shard {shard} of {out.location} dropped a source that is no longer an audio duplicate; rerun the same command")
    leaving = pc.is_in(corpus["source_id"], value_set=decisions.dropped)
    removed, corpus = corpus.filter(leaving), corpus.filter(pc.invert(leaving))
    here = sorted(set(pc.unique(removed["source_id"]).to_pylist()))
    # What the newly dropped sources counted as kept (windows, hours, their dropped stretches) leaves the statistics.
    delta = empty_stats()
    window_stats(removed, delta)
    delta["sources_kept"] = len(here)
    theirs = pc.is_in(rejects["source_id"], value_set=pa.array(here, pa.string()))
    for row in rejects.filter(theirs).to_pylist():
        _stretch_stats(delta, row)
    stats = accounting.add_counts(dict(marker["stats"]), accounting.negated(delta))
    durations = dict(zip(fingerprints["source_id"].to_pylist(), fingerprints["duration_ms"].to_pylist()))
    paths = dict(zip(removed["source_id"].to_pylist(), removed["source"].to_pylist()))
    for name in ("rejected", "ms_rejected", "rejects"):
        stats.setdefault(name, {})
    added = []
    for source_id, (keeper, detail) in _dropped_as(decisions, here).items():
        duration = durations.get(source_id)
        added.append({"source_id": source_id, "source": paths[source_id], "scope": RejectScope.SOURCE.value, "stage": "audio_dedup",
                      "reason": RejectReason.AUDIO_DUPLICATE.value, "detail": detail, "duration_ms": duration,
                      "duplicate_of": keeper, "cluster_id": keeper, "transient": False})
        count(stats["rejected"], RejectReason.AUDIO_DUPLICATE.value)
        count(stats["ms_rejected"], RejectReason.AUDIO_DUPLICATE.value, duration or 0)
        _reject_stats(stats, "audio_dedup", RejectReason.AUDIO_DUPLICATE.value, RejectScope.SOURCE.value, duration)
    rejects = _with_current_keepers(rejects.filter(pc.invert(theirs)), decisions, before)
    rejects = pa.concat_tables([rejects, pa.Table.from_pylist(added, schema=REJECTS_SCHEMA)])
    rejects = rejects.sort_by([("source_id", "ascending"), ("scope", "ascending"), ("start_ms", "ascending"), ("reason", "ascending")])
    dropped_here = set(here)
    kept = [i for i in marker["sources"].get("kept", []) if i not in dropped_here]
    sources = {"kept": kept, "rejected": sorted(marker["sources"].get("rejected", []) + here)}
    tables = {"corpus": _corpus_parts(corpus, options), "rejects": [rejects], "fingerprints": [fingerprints]}
    out.replace_shard(marker, decisions.version, tables, sources, accounting.pruned(stats), options,
                      marker_fields=_marker_fields(rejects))
    return len(here)


def _with_current_keepers(rejects: pa.Table, decisions: Any, before: dict[str, tuple[str, str] | None]) -> pa.Table:
    """Reject rows as the decisions have them now: a source dropped before takes its keeper and detail now, and a
    near-duplicate joins the cluster of the source kept for it (its text keeper, or that one's audio keeper)."""
    rows = rejects.to_pylist()
    targets = sorted({r["duplicate_of"] for r in rows if r["reason"] in DUPLICATE_REASONS and r["duplicate_of"]})
    cluster_of = {t: (entry[0] if entry else t) for t, entry in _dropped_as(decisions, targets).items()}
    for row in rows:
        if row["reason"] == RejectReason.AUDIO_DUPLICATE.value and before.get(row["source_id"]):
            keeper, detail = before[row["source_id"]]
            row.update(duplicate_of=keeper, cluster_id=keeper, detail=detail)
        elif row["reason"] in DUPLICATE_REASONS and row["duplicate_of"]:
            row["cluster_id"] = cluster_of[row["duplicate_of"]]
    return pa.Table.from_pylist(rows, schema=REJECTS_SCHEMA)


def _marker_fields(rejects: pa.Table) -> dict[str, Any]:
    """What a corpus marker records beside its files, for the decisions of later runs: the clusters its
    near-duplicates link to (``clusters``: their text keepers; ``cluster_moves``: those an audio keeper replaced), its
    near-duplicates' keepers (``duplicates``), the sources it dropped as audio duplicates (``audio_dropped``: keeper
    and detail) and its transient rejects."""
    transient = _transient_count(rejects)
    decided = AFTER_DEDUP_REASONS
    if rejects.num_rows:
        rejects = rejects.filter(pc.is_in(rejects["reason"], value_set=decided))
    rows = rejects.select(["source_id", "reason", "detail", "duplicate_of", "cluster_id"]).to_pylist() if rejects.num_rows else []
    linked = {r["duplicate_of"]: r["cluster_id"] for r in rows if r["reason"] in DUPLICATE_REASONS and r["duplicate_of"]}
    fields = {
        "clusters": sorted(linked),
        "cluster_moves": {target: cluster for target, cluster in sorted(linked.items()) if cluster != target},
        "duplicates": {r["source_id"]: r["duplicate_of"] for r in rows if r["reason"] in DUPLICATE_REASONS},
        "transient": transient,
    }
    audio = {r["source_id"]: [r["duplicate_of"], r["detail"]] for r in rows if r["reason"] == RejectReason.AUDIO_DUPLICATE.value}
    if audio:
        fields["audio_dropped"] = audio
    return fields


def summarize(out: OutputDir, found: np.ndarray, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """``summary.json`` from the committed markers, read one at a time: inputs (the keys discovery ``found``, sorted)
    = kept + rejected, each committed exactly once (checked on the keys: what each input is), hours, windows."""
    keys: list[np.ndarray] = []

    def markers():
        for marker in out.iter_markers():
            keys.append(input_keys(marker))
            yield marker

    totals = accounting.tally(markers())
    kept, rejected = totals.get("sources_kept", 0), totals.get("rejected", {})
    hours = accounting.hours
    committed = np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64)
    del keys[:]
    committed.sort()
    return accounting.summary(
        out.fingerprint,
        accounting.inputs(len(found), kept, rejected),
        accounting.check_keys(found, committed, kept, sum(rejected.values()), lambda wanted: ids_of_keys(out, wanted)),
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
        stretches_dropped={k: {"count": v.get("count", 0), "hours": hours(v.get("ms", 0))} for k, v in sorted(totals.get("stretches_dropped", {}).items())},
        **(extra or {}),
    )


def ids_of_keys(out: OutputDir, wanted: np.ndarray) -> dict[int, str]:
    """The committed source ids of some keys (for an accounting problem's message), from the markers."""
    found: dict[int, str] = {}
    for marker in out.iter_markers():
        inputs = marker.get("inputs", {})
        for source_id, key in zip(inputs.get("ids", []), inputs.get("keys", [])):
            if key in wanted:
                found[key] = source_id
    return found
