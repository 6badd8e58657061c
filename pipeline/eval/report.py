"""A corpus run as one self-contained HTML page: what is in it, what was dropped and why, and examples to look at.

Reads only the committed shards (``corpus/`` without its audio column, ``rejects/``), ``summary.json`` and
``run.json``; rejected transcripts are quoted from the run's inputs when they are still where the run found them.
Plots are PNG images embedded in the page, so the file can be mailed or attached to a review as it is.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any


from pipeline.io.commit import read_committed
from pipeline.io.storage import write_atomically

REPORT_FILE = "report.html"
SECTIONS = (
    ("hours", "Hours per language and task"),
    ("durations", "Window durations"),
    ("rejects", "Rejects by stage and reason"),
    ("char-rate", "Characters per second"),
    ("examples", "Examples of rejected transcripts"),
    ("duplicates", "Top duplicate clusters"),
)
CORPUS_COLUMNS = ["segment_id", "source_id", "source", "start_ms", "end_ms", "text", "language", "task", "has_speech"]
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


def hours_section(windows: list[dict[str, Any]]) -> str:
    per: dict[tuple[str, str], float] = defaultdict(float)
    for w in windows:
        per[(w["language"] or "?", w["task"] or "transcribe")] += w["end_ms"] - w["start_ms"]
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


def durations_section(windows: list[dict[str, Any]]) -> str:
    seconds = [(w["end_ms"] - w["start_ms"]) / 1000 for w in windows]
    if not seconds:
        return "<p>No windows were kept.</p>"
    figure, axis = _figure()
    axis.hist(seconds, bins=[i for i in range(0, 31)], color="#4477aa")
    axis.set_xlabel("window length (s)")
    axis.set_ylabel("windows")
    mean = sum(seconds) / len(seconds)
    return _png(figure) + f"<p>{len(seconds)} windows; mean {mean:.1f} s, longest {max(seconds):.1f} s.</p>"


def rejects_section(rejects: list[dict[str, Any]]) -> str:
    if not rejects:
        return "<p>Nothing was rejected.</p>"
    counts: Counter = Counter()
    ms: dict[tuple[str, str, str], int] = defaultdict(int)
    unknown: Counter = Counter()
    for r in rejects:
        key = (r["stage"] or "?", r["reason"], r["scope"])
        counts[key] += 1
        if r["duration_ms"] is None:
            unknown[key] += 1
        else:
            ms[key] += r["duration_ms"]
    by_reason: Counter = Counter()
    for (_, reason, _), n in counts.items():
        by_reason[reason] += n
    figure, axis = _figure(7.0, 0.3 * len(by_reason) + 1.2)
    reasons = [reason for reason, _ in by_reason.most_common()][::-1]
    axis.barh(reasons, [by_reason[r] for r in reasons], color="#cc6677")
    axis.set_xlabel("rows")
    rows = [[stage, reason, scope, n, _hours(ms[(stage, reason, scope)]), unknown[(stage, reason, scope)] or ""]
            for (stage, reason, scope), n in sorted(counts.items(), key=lambda kv: -kv[1])]
    note = "<p>Hours are the audio each reject dropped; sources refused before decoding have no known duration.</p>"
    return _png(figure) + _table(["stage", "reason", "scope", "rows", "hours", "of unknown duration"], rows) + note


def char_rate_section(windows: list[dict[str, Any]]) -> str:
    rates = [len((w["text"] or "").strip()) / ((w["end_ms"] - w["start_ms"]) / 1000)
             for w in windows if w["has_speech"] and w["end_ms"] > w["start_ms"]]
    if not rates:
        return "<p>No speech windows.</p>"
    figure, axis = _figure()
    axis.hist(rates, bins=30, color="#228833")
    axis.set_xlabel("characters per second of the window's transcript")
    axis.set_ylabel("windows")
    ordered = sorted(rates)
    median = ordered[len(ordered) // 2]
    return _png(figure) + f"<p>Median {median:.1f} characters/s (lowest {ordered[0]:.1f}, highest {ordered[-1]:.1f}).</p>"


def _transcripts_of(run: dict[str, Any], source_ids: set[str]) -> dict[str, str]:
    """Excerpts of the named sources' transcripts, re-read from the run's inputs where they still are."""
    from pipeline.io.sources import discover_sources

    paths = [p for p in run.get("sources") or [] if Path(p).exists()]
    if not paths or not source_ids:
        return {}
    try:
        found = discover_sources(paths)
    except (OSError, ValueError):
        return {}
    texts = {}
    for row in found.sources:
        if row["source_id"] not in source_ids:
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
    return texts


def examples_section(rejects: list[dict[str, Any]], run: dict[str, Any]) -> str:
    chosen: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in sorted(rejects, key=lambda r: (r["reason"], r["source_id"], r["start_ms"] or 0)):
        if len(chosen[r["reason"]]) < EXAMPLES_PER_REASON:
            chosen[r["reason"]].append(r)
    if not chosen:
        return "<p>Nothing was rejected.</p>"
    texts = _transcripts_of(run, {r["source_id"] for rows in chosen.values() for r in rows})
    parts = []
    for reason in sorted(chosen):
        items = []
        for r in chosen[reason]:
            quote = texts.get(r["source_id"])
            items.append(
                f"<li><code>{html.escape(r['source'] or r['source_id'])}</code>: {html.escape(r['detail'] or '')}"
                + (f"<pre>{html.escape(quote)}</pre>" if quote else "") + "</li>"
            )
        parts.append(f"<h3>{html.escape(reason)}</h3><ul>{''.join(items)}</ul>")
    return "".join(parts)


def duplicates_section(rejects: list[dict[str, Any]], windows: list[dict[str, Any]]) -> str:
    clusters: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rejects:
        if r["reason"] in ("duplicate", "eval_overlap") and r["duplicate_of"]:
            clusters[r["duplicate_of"]].append(r)
    if not clusters:
        return "<p>No near-duplicates were found.</p>"
    first_text = {}
    for w in sorted(windows, key=lambda w: w["segment_id"]):
        first_text.setdefault(w["source_id"], w["text"] or "")
    rows = []
    for kept, members in sorted(clusters.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:10]:
        rows.append([kept, len(members) + 1, ", ".join(sorted(m["source_id"] for m in members)), (first_text.get(kept) or "")[:120]])
    return _table(["kept (or evaluation text)", "size", "dropped as its duplicates", "kept text (first window)"], rows)


STYLE = """body{font-family:system-ui,sans-serif;max-width:960px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left;font-size:.9em}
th{background:#f3f3f3}pre{white-space:pre-wrap;background:#f7f7f7;padding:.5em;font-size:.85em}img{max-width:100%}
nav a{margin-right:1em}"""


def render_report(root: str | Path) -> Path:
    """Write ``ROOT/report.html`` for a corpus output folder and return its path."""
    root = Path(root)
    summary = json.loads((root / "summary.json").read_text(encoding="utf-8")) if (root / "summary.json").exists() else {}
    run = json.loads((root / "run.json").read_text(encoding="utf-8")) if (root / "run.json").exists() else {}
    corpus = read_committed(root, "corpus", CORPUS_COLUMNS)
    windows = corpus.to_pylist() if corpus is not None else []
    rejected = read_committed(root, "rejects")
    rejects = rejected.to_pylist() if rejected is not None else []
    bodies = {
        "hours": hours_section(windows),
        "durations": durations_section(windows),
        "rejects": rejects_section(rejects),
        "char-rate": char_rate_section(windows),
        "examples": examples_section(rejects, run),
        "duplicates": duplicates_section(rejects, windows),
    }
    sources = summary.get("inputs", {})
    overview = _table(
        ["sources in", "kept", "rejected", "windows", "hours in", "hours out", "accounting"],
        [[sources.get("in", "?"), sources.get("kept", "?"), sources.get("rejected", "?"), len(windows),
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
