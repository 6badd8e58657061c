"""Scoring a corpus run against a labels file: what should have happened to each source, and what did.

A labels file is JSONL (the bundled sample's ``labels.jsonl`` is one): each line names a source by ``audio``
(a path relative to the labels file) or ``manifest_line``, and its ``expected`` outcome: ``keep``,
``translate`` (kept as an X->en example) or a reject reason. Members of a near-duplicate group are all labelled
``duplicate`` with a ``duplicate_group``: the one member the run keeps counts as correct.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.io.commit import read_committed


@dataclass(frozen=True)
class Outcome:
    label: dict[str, Any]
    predicted: str  # keep | translate | a reject reason | missing
    detail: str = ""


def read_labels(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _key(label: dict[str, Any]) -> str:
    if label.get("audio"):
        return "/" + label["audio"].lstrip("./")
    return f".jsonl:{label['manifest_line']}"


def outcomes(out_dir: str | Path, labels: list[dict[str, Any]]) -> list[Outcome]:
    """Match each label to the run's rows by the end of the ``source`` path (or the manifest line)."""
    corpus_rows = read_committed(out_dir, "corpus", columns=["source", "task", "window_index"])
    reject_rows = read_committed(out_dir, "rejects")
    corpus = corpus_rows.to_pylist() if corpus_rows is not None else []
    rejects = [r for r in (reject_rows.to_pylist() if reject_rows is not None else []) if r["scope"] == "source"]
    kept: dict[str, str] = {}
    for row in corpus:
        kept[row["source"]] = row["task"]
    found = []
    for label in labels:
        key = _key(label)
        tasks = [task for source, task in kept.items() if source.endswith(key)]
        rejected = [r for r in rejects if r["source"].endswith(key)]
        if tasks:
            found.append(Outcome(label, "translate" if tasks[0] == "translate" else "keep"))
        elif rejected:
            found.append(Outcome(label, rejected[0]["reason"], rejected[0]["detail"] or ""))
        else:
            found.append(Outcome(label, "missing"))
    return found


def expected_of(outcome: Outcome, kept_in_group: Counter) -> str:
    """The label's expectation, where the one kept member of a duplicate group is expected to be kept."""
    label = outcome.label
    if label["expected"] == "duplicate" and outcome.predicted == "keep" and kept_in_group[label.get("duplicate_group")] == 1:
        return "keep"
    return label["expected"]


def score(found: list[Outcome]) -> dict[str, Any]:
    """Per-outcome precision and recall, and the list of disagreements."""
    kept_in_group: Counter = Counter(o.label.get("duplicate_group") for o in found if o.label["expected"] == "duplicate" and o.predicted == "keep")
    pairs = [(expected_of(o, kept_in_group), o.predicted) for o in found]
    classes = sorted({e for e, _ in pairs} | {p for _, p in pairs})
    table = {}
    for name in classes:
        tp = sum(e == p == name for e, p in pairs)
        predicted = sum(p == name for _, p in pairs)
        expected = sum(e == name for e, _ in pairs)
        table[name] = {
            "expected": expected,
            "predicted": predicted,
            "correct": tp,
            "precision": round(tp / predicted, 3) if predicted else None,
            "recall": round(tp / expected, 3) if expected else None,
        }
    errors = [
        {
            "source": o.label.get("audio") or f"manifest line {o.label.get('manifest_line')}",
            "language": o.label.get("audio_language") or o.label.get("language"),
            "expected": e,
            "got": p,
            "detail": o.detail,
        }
        for o, (e, p) in zip(found, pairs)
        if e != p
    ]
    groups: dict[str, list[str]] = defaultdict(list)
    for o in found:
        if o.label.get("duplicate_group"):
            groups[o.label["duplicate_group"]].append(o.predicted)
    return {
        "sources": len(found),
        "accuracy": round(sum(e == p for e, p in pairs) / max(len(pairs), 1), 3),
        "per_outcome": table,
        "duplicate_groups": {g: sorted(v) for g, v in sorted(groups.items())},
        "disagreements": errors,
    }


def format_report(report: dict[str, Any]) -> str:
    lines = [f"{'outcome':30s} {'expected':>8s} {'got':>5s} {'right':>5s} {'precision':>9s} {'recall':>7s}"]
    for name, row in report["per_outcome"].items():
        p = "-" if row["precision"] is None else f"{row['precision']:.2f}"
        r = "-" if row["recall"] is None else f"{row['recall']:.2f}"
        lines.append(f"{name:30s} {row['expected']:8d} {row['predicted']:5d} {row['correct']:5d} {p:>9s} {r:>7s}")
    lines.append(f"accuracy {report['accuracy']:.3f} over {report['sources']} labelled sources")
    if report["disagreements"]:
        lines.append("disagreements:")
        for e in report["disagreements"]:
            lines.append(f"  {e['source']} [{e['language']}]: expected {e['expected']}, got {e['got']}: {e['detail']}")
    return "\n".join(lines)
