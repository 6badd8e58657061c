"""A corpus run as one self-contained HTML page: what is in it, what was dropped and why, and examples to look at.

Built from the statistics each committed shard's marker holds (hours per language and task, histograms of window
lengths and characters per second, rejects per stage and reason), plus bounded scans: examples (a few per reason)
and the largest duplicate clusters are found by streaming the rejects table, never holding it; rejected
transcripts are quoted from the run's inputs when they are still where the run found them. Memory stays flat at
any corpus size. Plots are PNG images embedded in the page, so the file can be mailed or attached as it is.
"""

from __future__ import annotations

import base64
import html
import io
import json
import bisect
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from pipeline.io.commit import committed_markers, iter_committed
from pipeline.io.storage import write_atomically
from pipeline.sinks.accounting import tally

REPORT_FILE = "report.html"
SECTIONS = (
    ("hours", "Hours per language and task"),
    ("durations", "Window durations"),
    ("rejects", "Rejects by stage and reason"),
    ("char-rate", "Characters per second"),
    ("agreement", "Transcript agreement"),
    ("examples", "Examples of rejected transcripts"),
    ("duplicates", "Top duplicate clusters"),
)
REJECT_COLUMNS = ["source_id", "source", "reason", "detail", "start_ms", "cluster_id"]
DUPLICATE_REASONS = {"duplicate": "transcript", "eval_overlap": "transcript", "audio_duplicate": "audio"}  # how a member was found
TOP_CLUSTERS = 10
WORST_SOURCES = 15
EXAMPLES_PER_REASON = 3
EXCERPT_CHARS = 400


def _png(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _figure(width: float = 7.0, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _hours(ms: float) -> str:
    return f"{ms / 3_600_000:.3f}"


def hours_section(totals: dict[str, Any]) -> str:
    per = {tuple(key.split("\t")): ms for key, ms in totals.get("ms_per_language_task", {}).items()}
    if not per:
        return "<p>No windows were kept.</p>"
    languages = sorted({lang for lang, _ in per}, key=lambda lang: -sum(v for (l2, _), v in per.items() if l2 == lang))
    tasks = sorted({task for _, task in per})
    figure, axis = _figure()
    bottom = [0.0] * len(languages)
    for task in tasks:
        values = [per.get((lang, task), 0.0) / 3_600_000 for lang in languages]
        axis.bar(languages, values, bottom=bottom, label=task)
        bottom = [b + v for b, v in zip(bottom, values)]
    axis.set_ylabel("hours")
    axis.legend()
    rows = [[lang, task, _hours(ms)] for (lang, task), ms in sorted(per.items(), key=lambda kv: -kv[1])]
    return _png(figure) + _table(["language", "task", "hours"], rows)


def _histogram(counts: dict[str, int]) -> tuple[list[int], list[int]]:
    bins = sorted(int(k) for k in counts)
    return bins, [counts[str(b)] for b in bins]


def durations_section(totals: dict[str, Any]) -> str:
    bins, counts = _histogram(totals.get("window_seconds", {}))
    if not bins:
        return "<p>No windows were kept.</p>"
    figure, axis = _figure()
    axis.bar([b + 0.5 for b in bins], counts, width=1.0, color="#4477aa")
    axis.set_xlim(0, 31)
    axis.set_xlabel("window length (s)")
    axis.set_ylabel("windows")
    windows = totals.get("windows", sum(counts))
    mean = totals.get("ms_out", 0) / 1000 / max(windows, 1)
    return _png(figure) + f"<p>{windows} windows; mean {mean:.1f} s, longest in the {bins[-1]}–{bins[-1] + 1} s bin.</p>"


def rejects_section(totals: dict[str, Any]) -> str:
    entries = {tuple(key.split("\t")): value for key, value in totals.get("rejects", {}).items()}
    if not entries:
        return "<p>Nothing was rejected.</p>"
    by_reason: Counter = Counter()
    for (_, reason, _), value in entries.items():
        by_reason[reason] += value["rows"]
    figure, axis = _figure(7.0, 0.3 * len(by_reason) + 1.2)
    reasons = [reason for reason, _ in by_reason.most_common()][::-1]
    axis.barh(reasons, [by_reason[r] for r in reasons], color="#cc6677")
    axis.set_xlabel("rows")
    rows = [[stage, reason, scope, v["rows"], _hours(v.get("ms", 0)), v.get("unknown") or ""]
            for (stage, reason, scope), v in sorted(entries.items(), key=lambda kv: (-kv[1]["rows"], kv[0]))]
    note = ("<p>Hours are the audio each reject dropped (a source's length, decoded or read from its container's header "
            "when it was refused before decoding; a stretch's span). Of unknown duration: files that could not be read.</p>")
    return _png(figure) + _table(["stage", "reason", "scope", "rows", "hours", "of unknown duration"], rows) + note


def char_rate_section(totals: dict[str, Any]) -> str:
    bins, counts = _histogram(totals.get("chars_per_second", {}))
    if not bins:
        return "<p>No speech windows.</p>"
    figure, axis = _figure()
    axis.bar([b + 0.5 for b in bins], counts, width=1.0, color="#228833")
    axis.set_xlabel("characters per second of the window's transcript (60: 60 or more)")
    axis.set_ylabel("windows")
    total, seen, median = sum(counts), 0, bins[0]
    for b, n in zip(bins, counts):
        seen += n
        if seen * 2 >= total:
            median = b
            break
    return _png(figure) + f"<p>Median {median}–{median + 1} characters/s (lowest bin {bins[0]}, highest {bins[-1]}).</p>"


def worst_sources(root: Path, count: int = WORST_SOURCES) -> list[dict[str, Any]]:
    """The kept sources whose scored speech agrees least with their transcripts (lowest mean agreement over their
    windows): a scan of three small columns, one record batch at a time; only per-source sums are held."""
    import pyarrow.compute as pc

    sums: dict[str, list[float]] = {}
    names: dict[str, str] = {}
    for batch in iter_committed(root, "corpus", ["source_id", "source", "agreement_logprob"]):
        scored = batch.filter(pc.is_valid(batch.column("agreement_logprob")))
        for source_id, source, value in zip(*(scored.column(i).to_pylist() for i in range(3))):
            entry = sums.setdefault(source_id, [0.0, 0, 0.0])
            entry[0] += value
            entry[1] += 1
            entry[2] = min(entry[2], value)
            names[source_id] = source
    ranked = sorted(sums.items(), key=lambda kv: (kv[1][0] / kv[1][1], kv[0]))[:count]
    return [{"source_id": k, "source": names[k], "mean": v[0] / v[1], "worst": v[2], "windows": int(v[1])} for k, v in ranked]


def agreement_section(totals: dict[str, Any], worst: list[dict[str, Any]], run: dict[str, Any]) -> str:
    counts = totals.get("agreement_logprob", {})
    if not counts:
        return "<p>No window was scored (language ID off, or no speech).</p>"
    bins = sorted(float(b) for b in counts)
    figure, axis = _figure()
    axis.bar([b + 0.05 for b in bins], [counts[f"{b:.1f}"] for b in bins], width=0.1, color="#AA3377")
    threshold = (run.get("config", {}).get("language", {}) or {}).get("min_agreement_logprob")
    if threshold is not None:
        axis.axvline(threshold, color="black", linestyle="--", label=f"min_agreement_logprob {threshold:g}")
        axis.legend()
    axis.set_xlabel("kept windows' mean log-probability per transcript token (-10: -10 or lower)")
    axis.set_ylabel("windows")
    table = _table(
        ["source", "source_id", "scored windows", "mean agreement", "worst window"],
        [[w["source"], w["source_id"], w["windows"], f"{w['mean']:.2f}", f"{w['worst']:.2f}"] for w in worst],
    )
    note = ("<p>How well each kept window's transcript matches its speech under Whisper (docs/corpus.md, \"Agreement\"); "
            "windows below the threshold were dropped as <code>transcript_mismatch</code> and are in the rejects. "
            "The kept sources that agree least, to listen to first (the paper's manual pass):</p>")
    return _png(figure) + note + table


def _transcripts_of(run: dict[str, Any], source_ids: set[str]) -> dict[str, str]:
    """Excerpts of the named sources' transcripts, re-read from the run's inputs where they still are: discovery
    streamed split by split, only the named sources kept."""
    from pipeline.io.sources import SourceOptions, plan_splits, split_rows

    paths = [p for p in run.get("sources") or [] if Path(p).exists()]
    if not paths or not source_ids:
        return {}
    texts: dict[str, str] = {}
    try:
        for split in plan_splits(paths, SourceOptions()):
            for row in split_rows(split, SourceOptions()):
                if row["source_id"] not in source_ids or row["source_id"] in texts or row.get("reject_reason"):
                    continue
                text = row.get("inline_text")
                if text is None and row.get("transcript_path"):
                    try:
                        raw = Path(row["transcript_path"]).read_bytes()[: EXCERPT_CHARS * 4]
                    except OSError:
                        continue
                    text = raw.decode(row.get("transcript_encoding") or "utf-8", errors="replace")
                if text:
                    texts[row["source_id"]] = text[:EXCERPT_CHARS] + ("…" if len(text) > EXCERPT_CHARS else "")
            if len(texts) == len(source_ids):
                break
    except (OSError, ValueError):
        return texts
    return texts


def scan_rejects(root: Path) -> tuple[dict[str, list[dict[str, Any]]], Counter, dict[str, list[tuple[str, str]]]]:
    """Streaming passes over the rejects table: the first examples per reason (by source id and start), the size
    of every duplicate cluster (by ``cluster_id``: near-duplicate transcripts and the same recording alike), and the
    members of the largest ones with how they were found; memory bounded by the duplicates."""
    chosen: dict[str, list[tuple]] = defaultdict(list)  # per reason: the smallest keys so far, sorted
    clusters: Counter = Counter()
    for batch in iter_committed(root, "rejects", REJECT_COLUMNS):
        for r in batch.to_pylist():
            key = (r["source_id"], r["start_ms"] or 0, r["source"] or "", r["detail"] or "")
            smallest = chosen[r["reason"]]
            if len(smallest) < EXAMPLES_PER_REASON or key < smallest[-1]:
                bisect.insort(smallest, key)
                del smallest[EXAMPLES_PER_REASON:]
            if r["reason"] in DUPLICATE_REASONS and r["cluster_id"]:
                clusters[r["cluster_id"]] += 1
    examples = {reason: [dict(zip(("source_id", "start_ms", "source", "detail"), key)) for key in keys] for reason, keys in chosen.items()}
    top = {kept for kept, _ in sorted(clusters.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_CLUSTERS]}
    members: dict[str, list[tuple[str, str]]] = defaultdict(list)
    if top:
        for batch in iter_committed(root, "rejects", ["source_id", "reason", "cluster_id"]):
            for r in batch.to_pylist():
                if r["cluster_id"] in top and r["reason"] in DUPLICATE_REASONS:
                    members[r["cluster_id"]].append((r["source_id"], DUPLICATE_REASONS[r["reason"]]))
    return examples, clusters, members


def examples_section(examples: dict[str, list[dict[str, Any]]], run: dict[str, Any]) -> str:
    if not examples:
        return "<p>Nothing was rejected.</p>"
    texts = _transcripts_of(run, {r["source_id"] for rows in examples.values() for r in rows})
    parts = []
    for reason in sorted(examples):
        items = []
        for r in examples[reason]:
            quote = texts.get(r["source_id"])
            items.append(
                f"<li><code>{html.escape(r['source'] or r['source_id'])}</code>: {html.escape(r['detail'] or '')}"
                + (f"<pre>{html.escape(quote)}</pre>" if quote else "") + "</li>"
            )
        parts.append(f"<h3>{html.escape(reason)}</h3><ul>{''.join(items)}</ul>")
    return "".join(parts)


def duplicates_section(root: Path, clusters: Counter, members: dict[str, list[tuple[str, str]]]) -> str:
    if not clusters:
        return "<p>No duplicates were found (neither near-duplicate transcripts nor the same recording twice).</p>"
    top = sorted(clusters.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_CLUSTERS]
    wanted = {kept for kept, _ in top}
    first_text: dict[str, tuple[str, str]] = {}
    for batch in iter_committed(root, "corpus", ["segment_id", "source_id", "text"]):
        for w in batch.to_pylist():
            if w["source_id"] in wanted and (w["source_id"] not in first_text or w["segment_id"] < first_text[w["source_id"]][0]):
                first_text[w["source_id"]] = (w["segment_id"], w["text"] or "")

    def dropped(kept: str, kind: str) -> str:
        return ", ".join(sorted(source for source, found_by in members.get(kept, []) if found_by == kind))

    rows = [[kept, n + 1, dropped(kept, "transcript"), dropped(kept, "audio"), first_text.get(kept, ("", ""))[1][:120]] for kept, n in top]
    note = ("<p>A cluster is every source whose rows carry its <code>cluster_id</code>: transcripts that are near-duplicates "
            "(MinHash) and recordings that are the same audio (acoustic fingerprints: re-uploads, re-encodes, clips of a longer "
            "recording, whatever their captions say). Each keeps one source; how each dropped one matched is in its reject "
            "detail, and the audio pairs with their bit error rates are in <code>audio_duplicates.parquet</code>.</p>")
    return note + _table(["kept (or evaluation text)", "size", "dropped: near-duplicate transcript", "dropped: the same recording",
                          "kept text (first window)"], rows)


STYLE = """body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;font-size:.9em}
th{background:#f3f3f3}pre{white-space:pre-wrap;background:#f7f7f7;padding:.5em;font-size:.85em}img{max-width:100%}
nav a{margin-right:1em}"""


def render_report(root: str | Path) -> Path:
    """Write ``ROOT/report.html`` for a corpus output folder and return its path."""
    root = Path(root)
    summary = json.loads((root / "summary.json").read_text(encoding="utf-8")) if (root / "summary.json").exists() else {}
    run = json.loads((root / "run.json").read_text(encoding="utf-8")) if (root / "run.json").exists() else {}
    totals = tally(committed_markers(root))  # (FileNotFoundError for a folder without committed shards)
    examples, clusters, members = scan_rejects(root)
    bodies = {
        "hours": hours_section(totals),
        "durations": durations_section(totals),
        "rejects": rejects_section(totals),
        "char-rate": char_rate_section(totals),
        "agreement": agreement_section(totals, worst_sources(root), run),
        "examples": examples_section(examples, run),
        "duplicates": duplicates_section(root, clusters, members),
    }
    sources = summary.get("inputs", {})
    overview = _table(
        ["sources in", "kept", "rejected", "windows", "hours in", "hours out", "accounting"],
        [[sources.get("in", "?"), sources.get("kept", "?"), sources.get("rejected", "?"), totals.get("windows", 0),
          summary.get("hours", {}).get("in", "?"), summary.get("hours", {}).get("out", "?"),
          "ok" if summary.get("accounting", {}).get("ok") else "see summary.json"]],
    )
    nav = "".join(f'<a href="#{key}">{html.escape(title)}</a>' for key, title in SECTIONS)
    sections = "".join(f'<section id="{key}"><h2>{html.escape(title)}</h2>{bodies[key]}</section>' for key, title in SECTIONS)
    page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>wspsr corpus report</title><style>{STYLE}</style></head>"
            f"<body><h1>wspsr corpus report</h1><p><code>{html.escape(str(root.resolve()))}</code></p>{overview}<nav>{nav}</nav>"
            f"{sections}</body></html>")
    path = root / REPORT_FILE
    write_atomically(path, page.encode("utf-8"))
    return path
