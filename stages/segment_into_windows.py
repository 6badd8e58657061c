"""Cut each recording into training windows of at most 30 s aligned with its transcript's cues.

The rules (docs/corpus.md, "Segmentation"):

1. Cues are cleaned first. Cues with no text are ignored; cues with impossible times (negative, end not after
   start) and cues the parser could not time at all (unreadable) are dropped and counted, and cues starting after the audio ends (or ending more than ``beyond_audio_tolerance_ms``
   after it) are dropped and counted; a cue ending within the tolerance is clipped to the audio's end. Cues are
   sorted by start. Two cues overlapping by at most ``overlap_trim_ms`` are separated by ending the first where
   the second starts; cues overlapping more are merged into one cue (text in order, one span: timestamps never go
   backwards).
2. A cue longer than the window cannot be a training example: its stretch is dropped and counted, and no window
   reaches into it.
3. Windows are packed greedily: a window starts just before a cue (``boundary_pad_ms`` of lead-in where the
   previous window allows) and takes following cues while the last one ends within 30 s of the window start.
   It ends after its last cue (plus the pad, never into the next cue's audio). A cue that would cross 30 s
   starts the next window, so no window holds text whose audio lies outside it.
4. Timestamps are relative to the window start, on Whisper's 20 ms grid, and never beyond the window's end.
5. Stretches of at least ``min_no_speech_ms`` that no window covers become no-speech windows (at most 30 s each),
   kept at ``no_speech_keep_rate``, chosen by a hash of the source id and start time (same choice every run).
6. An untimed transcript (plain text) pairs with its audio only when the whole recording fits one window.
7. ``prev_text`` is the transcript text spoken just before the window (the previous window's text, or a dropped
   cue's text when one lies in between), for Whisper's ``<|startofprev|>`` conditioning.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.audio import MAX_WINDOW_MS, TIMESTAMP_RESOLUTION_MS, ms_to_samples, snap_to_timestamp_grid, timestamp_token
from pipeline.io.media import encode_flac
from pipeline.schema import RejectReason
from pipeline.stage import Reject, map_rows
from pipeline.text import join_texts, leading_space

STAGE = "segment_into_windows"


@dataclass(frozen=True)
class SegmentOptions:
    max_window_ms: int = MAX_WINDOW_MS  # Whisper's input length; shorter only for experiments
    boundary_pad_ms: int = 200  # audio kept before the first and after the last cue of a window, when free
    overlap_trim_ms: int = 1000  # cues overlapping at most this much are separated, more are merged
    beyond_audio_tolerance_ms: int = 1000  # a cue may end this much after the audio and be clipped
    min_no_speech_ms: int = 5000  # shorter uncovered stretches are not worth a no-speech window
    no_speech_keep_rate: float = 0.2  # the paper kept no-speech windows "with sub-sampled probability"

    def __post_init__(self) -> None:
        if not 1000 <= self.max_window_ms <= MAX_WINDOW_MS:
            raise ValueError(f"max_window_ms must be between 1000 and {MAX_WINDOW_MS}")
        if not 0.0 <= self.no_speech_keep_rate <= 1.0:
            raise ValueError("no_speech_keep_rate must be between 0 and 1")
        for name in ("boundary_pad_ms", "overlap_trim_ms", "beyond_audio_tolerance_ms", "min_no_speech_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


@dataclass(frozen=True)
class Unit:
    """A cue after cleaning (possibly several merged): the smallest piece a window boundary may not split."""

    start_ms: int
    end_ms: int
    texts: tuple[tuple[int, int, str], ...]  # the cues inside, for timestamps

    @property
    def text(self) -> str:
        return join_texts([t for _, _, t in self.texts])


@dataclass(frozen=True)
class PlannedWindow:
    start_ms: int
    end_ms: int
    units: tuple[Unit, ...] = ()  # empty: a no-speech window

    @property
    def has_speech(self) -> bool:
        return bool(self.units)


@dataclass
class WindowPlan:
    windows: list[PlannedWindow] = field(default_factory=list)
    prev_texts: list[str] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)


def _dropped(reason: RejectReason, detail: str, start_ms: int | None, end_ms: int | None) -> dict[str, Any]:
    return {"stage": STAGE, "reason": reason.value, "detail": detail, "start_ms": start_ms, "end_ms": end_ms}


def clean_cues(cues: list[dict[str, Any]], duration_ms: int, options: SegmentOptions, plan: WindowPlan, unreadable: int = 0) -> list[Unit]:
    """``unreadable``: cues the parser could not time at all (counted there, never seen here), recorded too."""
    invalid = beyond = 0
    kept: list[tuple[int, int, int, str]] = []
    for index, cue in enumerate(cues):
        text, start, end = (cue["text"] or "").strip(), cue["start_ms"], cue["end_ms"]
        if not text:
            continue
        if start < 0 or end <= start:
            invalid += 1
            continue
        if start >= duration_ms or end > duration_ms + options.beyond_audio_tolerance_ms:
            beyond += 1
            continue
        kept.append((start, min(end, duration_ms), index, text))
    if invalid:
        plan.dropped.append(_dropped(RejectReason.INVALID_CUE_TIMING, f"{invalid} cue(s) with impossible times", None, None))
    if unreadable:
        plan.dropped.append(_dropped(RejectReason.INVALID_CUE_TIMING, f"{unreadable} cue(s) with unreadable times", None, None))
    if beyond:
        plan.dropped.append(
            _dropped(RejectReason.CUE_BEYOND_AUDIO, f"{beyond} cue(s) beyond the audio's end ({duration_ms / 1000:.2f} s)", None, None)
        )
    kept.sort()
    units: list[Unit] = []
    for start, end, _, text in kept:
        if units:
            last = units[-1]
            overlap = last.end_ms - start
            if 0 < overlap <= options.overlap_trim_ms and start > last.start_ms:
                trimmed = tuple((s, min(e, start), t) for s, e, t in last.texts)
                units[-1] = Unit(last.start_ms, start, trimmed)
            elif overlap > 0:  # one span for the merged text: its own times would make timestamps go backwards
                merged_end = max(last.end_ms, end)
                units[-1] = Unit(last.start_ms, merged_end, ((last.start_ms, merged_end, join_texts([last.text, text])),))
                continue
        if end <= start:
            continue
        units.append(Unit(start, end, ((start, end, text),)))
    return units


def plan_windows(
    cues: list[dict[str, Any]] | None, text: str, duration_ms: int, source_id: str, options: SegmentOptions, unreadable_cues: int = 0,
) -> WindowPlan | Reject:
    """Decide the windows of one recording from its cues and duration (no audio needed)."""
    plan = WindowPlan()
    if cues is None:
        if duration_ms > options.max_window_ms:
            return Reject(
                RejectReason.UNTIMED_TRANSCRIPT_TOO_LONG,
                f"untimed transcript and {duration_ms / 1000:.2f} s of audio: only recordings up to "
                f"{options.max_window_ms / 1000:g} s can use a transcript without timings",
            )
        whole = " ".join(text.split())
        plan.windows.append(PlannedWindow(0, duration_ms, (Unit(0, duration_ms, ((0, duration_ms, whole),)),)))
        plan.prev_texts.append("")
        return plan
    units = clean_cues(cues, duration_ms, options, plan, unreadable_cues)
    speech = [u for u in units if u.end_ms - u.start_ms <= options.max_window_ms]
    if not speech:
        reasons = [f"{len(units)} cue(s) longer than {options.max_window_ms / 1000:g} s"] if units else []
        reasons += [d["detail"] for d in plan.dropped]
        return Reject(RejectReason.NO_USABLE_CUES, "; ".join(reasons) or "no cue with text")

    items: list[tuple[str, Any]] = []  # ("window", PlannedWindow) | ("barrier", Unit) in time order
    floor = 0
    i = 0
    while i < len(units):
        unit = units[i]
        if unit.end_ms - unit.start_ms > options.max_window_ms:
            plan.dropped.append(
                _dropped(
                    RejectReason.CUE_TOO_LONG,
                    f"cue of {(unit.end_ms - unit.start_ms) / 1000:.2f} s is longer than a window",
                    unit.start_ms,
                    unit.end_ms,
                )
            )
            items.append(("barrier", unit))
            floor = unit.end_ms
            i += 1
            continue
        start = max(floor, unit.start_ms - options.boundary_pad_ms, unit.end_ms - options.max_window_ms)
        members = [unit]
        i += 1
        while i < len(units):
            nxt = units[i]
            if nxt.end_ms - nxt.start_ms > options.max_window_ms or nxt.end_ms - start > options.max_window_ms:
                break
            members.append(nxt)
            i += 1
        limit = units[i].start_ms if i < len(units) else duration_ms
        end = min(members[-1].end_ms + options.boundary_pad_ms, start + options.max_window_ms, limit, duration_ms)
        items.append(("window", PlannedWindow(start, end, tuple(members))))
        floor = end

    gaps, cursor = [], 0
    for start, end in [(item.start_ms, item.end_ms) for _, item in items]:
        if start > cursor:
            gaps.append((cursor, start))
        cursor = max(cursor, end)
    if duration_ms > cursor:
        gaps.append((cursor, duration_ms))
    for gap_start, gap_end in gaps:
        length = gap_end - gap_start
        if length < options.min_no_speech_ms:
            continue
        pieces = -(-length // options.max_window_ms)
        bounds = [gap_start + length * k // pieces for k in range(pieces + 1)]
        for a, b in zip(bounds, bounds[1:]):
            if _sampled(source_id, a, options.no_speech_keep_rate):
                items.append(("window", PlannedWindow(a, b)))
            else:
                plan.dropped.append(
                    _dropped(RejectReason.NO_SPEECH_NOT_SAMPLED, f"no-speech stretch of {(b - a) / 1000:.2f} s not sampled", a, b)
                )
    items.sort(key=lambda item: (item[1].start_ms, item[1].end_ms))
    last_text = ""
    for kind, item in items:
        if kind == "barrier":
            last_text = item.text
            continue
        plan.windows.append(item)
        plan.prev_texts.append(last_text)
        if item.has_speech:
            last_text = join_texts([u.text for u in item.units])
    plan.dropped.sort(key=lambda d: (d["start_ms"] is not None, d["start_ms"] or 0, d["reason"]))
    return plan


def _sampled(source_id: str, start_ms: int, rate: float) -> bool:
    digest = hashlib.sha256(f"{source_id}:{start_ms}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < rate


def timestamped_text(window: PlannedWindow) -> str:
    """``<|0.00|> Hello.<|1.84|><|2.00|> Next.<|3.00|>``, times relative to the window on the 20 ms grid."""
    last_step = (window.end_ms - window.start_ms) // TIMESTAMP_RESOLUTION_MS * TIMESTAMP_RESOLUTION_MS
    parts, previous = [], 0
    for unit in window.units:
        for start, end, text in unit.texts:  # never backwards: a trainer learns the order of time from these
            t0 = min(max(snap_to_timestamp_grid(start - window.start_ms), previous), last_step)
            t1 = min(max(snap_to_timestamp_grid(end - window.start_ms), t0), last_step)
            previous = t1
            parts.append(f"{timestamp_token(t0)}{leading_space(text)}{text}{timestamp_token(t1)}")
    return "".join(parts)


def segment_into_windows(batch: pa.Table, options: SegmentOptions) -> pa.Table:
    return map_rows(batch, lambda row: _segment(row, options)).drop_columns(["pcm", "cues"])


def _segment(row: dict[str, Any], options: SegmentOptions) -> dict[str, Any] | Reject:
    plan = plan_windows(row["cues"], row["transcript_text"] or "", row["duration_ms"], row["source_id"], options, row.get("invalid_cues") or 0)
    if isinstance(plan, Reject):
        return plan
    pcm = np.frombuffer(row["pcm"], dtype="<i2")
    windows = []
    for index, (window, prev_text) in enumerate(zip(plan.windows, plan.prev_texts)):
        audio = pcm[ms_to_samples(window.start_ms) : ms_to_samples(window.end_ms)]
        timed = row["cues"] is not None
        windows.append(
            {
                "segment_id": f"{row['source_id']}-{index:05d}",
                "window_index": index,
                "start_ms": window.start_ms,
                "end_ms": window.end_ms,
                "flac": encode_flac(audio),
                "text": join_texts([u.text for u in window.units]),
                "text_timestamped": timestamped_text(window) if timed else None,
                "prev_text": prev_text,
                "has_speech": window.has_speech,
            }
        )
    return dict(row, windows=windows, dropped=plan.dropped, pcm=None, cues=None)
