"""The one accounting rule and the one summary shape of every job.

The rule: every input is named in exactly one committed shard's marker, as kept or as rejected, and the kept and
rejected counts add up to the inputs. Each sink writes its shard's statistics into its marker as a nested dict of
numbers; the summary adds them up over the committed markers (never re-reading rows), so a summary is as cheap as
reading the markers and always agrees with what is committed.

Every ``summary.json`` holds ``inputs`` (``in``, ``kept``, ``rejected``, ``rejected_by_reason``), ``accounting``
(``ok``, ``rule``, and up to 20 inputs ``missing``, ``counted_twice``, ``unexpected``, compared on the inputs' keys:
what each input is, so a source added, removed, reordered or changed between runs can never pass as accounted for),
``shards`` and ``config_fingerprint``; each job adds its own sections (hours, windows, segments...).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from pipeline.schema import RejectScope

RULE = "every input is in exactly one committed shard, as kept or rejected"
SHOWN = 20  # ids listed per accounting problem


def source_reject(row: Mapping[str, Any]) -> dict[str, Any]:
    """The ``rejects`` row of a whole source that a stage rejected (``REJECTS_SCHEMA``)."""
    return {
        "source_id": row["source_id"], "source": row["source"], "scope": RejectScope.SOURCE.value, "stage": row.get("reject_stage"),
        "reason": row["reject_reason"], "detail": row.get("reject_detail"), "duration_ms": row.get("duration_ms"),
        "duplicate_of": row.get("duplicate_of"), "transient": bool(row.get("reject_transient")),
    }


def add_counts(total: dict[str, Any], part: Mapping[str, Any]) -> dict[str, Any]:
    """Add a nested dict of numbers into ``total`` (missing keys start at 0); returns ``total``."""
    for key, value in part.items():
        if isinstance(value, Mapping):
            add_counts(total.setdefault(key, {}), value)
        else:
            total[key] = total.get(key, 0) + value
    return total


def negated(part: Mapping[str, Any]) -> dict[str, Any]:
    """A nested dict of numbers with every number's sign flipped: ``add_counts(total, negated(part))`` takes a part
    back out of a total."""
    return {key: negated(value) if isinstance(value, Mapping) else -value for key, value in part.items()}


def pruned(stats: Mapping[str, Any]) -> dict[str, Any]:
    """Statistics without the entries a subtraction left at zero: zero counts inside dicts, and dicts left empty
    (top-level numbers stay, zero or not). Readers of nested entries take a missing count as 0."""

    def inner(value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        kept = {k: inner(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in (0, {})}

    return {key: inner(value) for key, value in stats.items() if inner(value) != {}}


def count(counter: dict[str, Any], key: str, value: float = 1) -> None:
    counter[key] = counter.get(key, 0) + value


def tally(markers: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The statistics of all committed shards added up, plus ``shards``: their number."""
    total: dict[str, Any] = {"shards": 0}
    for marker in markers:
        total["shards"] += 1
        add_counts(total, marker["stats"])
    return total


def check(expected: set[str], named: Iterable[str], kept: int, rejected: int) -> dict[str, Any]:
    """The ``accounting`` block: ``named`` is every input id the committed markers name (once per naming)."""
    seen = Counter(named)
    missing = sorted(expected - set(seen))
    doubled = sorted(i for i, n in seen.items() if n > 1)
    unexpected = sorted(set(seen) - expected)
    return {
        "ok": not missing and not doubled and not unexpected and kept + rejected == len(expected),
        "rule": RULE,
        "missing": missing[:SHOWN],
        "counted_twice": doubled[:SHOWN],
        "unexpected": unexpected[:SHOWN],
    }


def check_keys(found: Any, committed: Any, kept: int, rejected: int,
               name: Callable[[set[int]], dict[int, str]] | None = None) -> dict[str, Any]:
    """The ``accounting`` block from the keys of the inputs ``found`` and of the inputs the committed markers account
    for (NumPy arrays, repeats kept): every input committed exactly as often as it is found, none committed that is
    not an input, and kept + rejected = inputs. Up to 20 of each problem are named (``name``: keys -> {key: source
    id} for those it knows; the others are shown by their key)."""
    from pipeline.io.commit import key_counts

    found, committed = np.asarray(found, np.int64), np.asarray(committed, np.int64)
    if np.array_equal(found, committed):  # both sorted: the same inputs, each as often (no further arrays needed)
        return {"ok": len(found) == kept + rejected, "rule": RULE, "found": int(len(found)), "committed": int(len(committed)),
                "missing": 0, "missing_keys": [], "counted_twice": [], "unexpected": []}
    keys, in_found, in_committed = key_counts(found, committed)
    missing = keys[in_found > in_committed]
    doubled = keys[(in_committed > in_found) & (in_found > 0)]
    unexpected = keys[(in_committed > 0) & (in_found == 0)]
    shown = {int(k) for k in (*missing[:SHOWN], *doubled[:SHOWN], *unexpected[:SHOWN])}
    names = name(shown) if (name and shown) else {}
    label = lambda key: names.get(int(key), f"key {int(key) & (2**64 - 1):016x}")  # noqa: E731
    return {
        "ok": not len(missing) and not len(doubled) and not len(unexpected) and len(found) == kept + rejected,
        "rule": RULE,
        "found": int(len(found)),
        "committed": int(len(committed)),
        "missing": int(len(missing)),
        "missing_keys": [label(k) for k in missing[:SHOWN]],
        "counted_twice": [label(k) for k in doubled[:SHOWN]],
        "unexpected": [label(k) for k in unexpected[:SHOWN]],
    }


def named_ids(markers: Iterable[Mapping[str, Any]], kinds: tuple[str, ...] = ("kept", "rejected")) -> Iterable[str]:
    for marker in markers:
        for kind in kinds:
            yield from marker["sources"].get(kind, [])


def inputs(n_in: int, kept: int, rejected_by_reason: Mapping[str, int]) -> dict[str, Any]:
    return {"in": n_in, "kept": kept, "rejected": sum(rejected_by_reason.values()), "rejected_by_reason": dict(sorted(rejected_by_reason.items()))}


def hours(ms: float) -> float:
    return round(ms / 3_600_000, 4)


def hours_by(ms_by_key: Mapping[str, float]) -> dict[str, float]:
    return {key: hours(ms) for key, ms in sorted(ms_by_key.items())}


def summary(fingerprint: str, inputs_block: dict[str, Any], accounting: dict[str, Any], shards: int, **sections: Any) -> dict[str, Any]:
    """A job's summary in the shared shape: the common blocks first, then the job's own sections."""
    return {"config_fingerprint": fingerprint, "inputs": inputs_block, "accounting": accounting, "shards": shards, **sections}


def reject_fraction(summary_doc: dict[str, Any], limit: float | None) -> None:
    """Record whether the share of rejected inputs stays within ``--max-reject-fraction``: a run that rejects most
    of its inputs usually means a wrong path, codec or config, not bad data."""
    block = summary_doc["inputs"]
    fraction = block["rejected"] / block["in"] if block["in"] else 0.0
    summary_doc["reject_fraction"] = {"value": round(fraction, 4), "max": limit, "ok": limit is None or fraction <= limit}


INTERNAL_ERROR = "internal_error"
DEFAULT_MAX_ERROR_FRACTION = 0.01


def error_budget(summary_doc: dict[str, Any], limit: float) -> None:
    """Record whether the inputs that a stage raised on (``internal_error`` rejects) stay within
    ``--max-error-fraction``: a few are inputs no rule foresaw; more means a bug that every input meets, and the run
    fails after committing everything else."""
    block = summary_doc["inputs"]
    errors = block["rejected_by_reason"].get(INTERNAL_ERROR, 0)
    fraction = errors / block["in"] if block["in"] else 0.0
    summary_doc["error_fraction"] = {"internal_errors": errors, "value": round(fraction, 4), "max": limit, "ok": fraction <= limit}
