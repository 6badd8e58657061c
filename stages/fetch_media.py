"""Fetch audio and human-made subtitles from the web (yt-dlp through ``pipeline.io.ytdlp``).

One input row is one URL. A URL that names a playlist or a channel expands to one output row per item; a URL
that fails (unsafe scheme, 404, no media, a live stream) becomes one rejected row carrying yt-dlp's message. Only
subtitles a person uploaded (yt-dlp's ``subtitles``) become transcripts: an item with nothing but automatic
captions (``automatic_captions``) is rejected as ``machine_generated_captions``, optionally with its audio kept
as unlabelled audio for ``wspsr transcribe``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.io.ytdlp import (
    LANGUAGE_CODE, LIVE_STATUSES, SAFE_NAME, SUBTITLE_FORMATS, Downloader, FetchAbort, FetchOptions, check_url, safe_component, url_id,
    usable_tracks,
)
from pipeline.schema import RejectReason, table_from_rows

__all__ = ["FetchOptions", "FetchStageOptions", "Verdict", "check_url", "classify", "fetch_media", "manifest_language", "safe_component", "url_id"]

_UNDETERMINED = frozenset({"und", "zxx", "mul", "mis"})


@dataclass(frozen=True)
class FetchStageOptions:
    fetch: FetchOptions
    root: str  # the output folder: media/ and archive.txt go here


def manifest_language(lang: str) -> str | None:
    """A subtitle language as the corpus manifest accepts it (``en-US`` -> ``en-us``), or None when it is not
    a language code (``English``, ``und``): the corpus then relies on text language ID."""
    code = lang.lower().replace("_", "-")
    return code if LANGUAGE_CODE.match(code) and code not in _UNDETERMINED else None


# ---------------------------------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Verdict:
    reason: RejectReason | None  # None: fetch it
    detail: str = ""
    languages: tuple[str, ...] = ()  # human subtitle languages to download
    automatic: tuple[str, ...] = ()  # languages with automatic captions only (recorded, never downloaded)
    unlabelled: bool = False  # rejected as a label source, but its audio is kept


def _selected(lang: str, wanted: tuple[str, ...]) -> bool:
    if not wanted:
        return True
    code = lang.lower().replace("_", "-")
    return any(code == w.lower() or code.split("-")[0] == w.lower() for w in wanted)


def classify(info: dict[str, Any], options: FetchOptions) -> Verdict:
    """Decide from yt-dlp's info dict alone (nothing downloaded yet) whether and what to fetch."""
    if info.get("is_live") or info.get("live_status") in LIVE_STATUSES:
        return Verdict(RejectReason.LIVE_STREAM, f"live_status {info.get('live_status') or 'is_live'}: live streams are not fetched")
    duration = info.get("duration")
    if isinstance(duration, (int, float)) and duration > options.max_duration_s:
        return Verdict(RejectReason.AUDIO_TOO_LONG, f"duration {duration:g} s > limit of {options.max_duration_s:g} s")
    size = info.get("filesize") or info.get("filesize_approx")
    if isinstance(size, (int, float)) and size > options.max_filesize_mb * 2**20:
        return Verdict(RejectReason.FILE_TOO_LARGE, f"{int(size)} bytes > limit of {options.max_filesize_mb:g} MB (size reported by the site)")
    human = info.get("subtitles") or {}
    automatic = info.get("automatic_captions") or {}
    human_langs = sorted(str(k) for k, tracks in human.items() if tracks)
    chosen = tuple(
        lang for lang in human_langs if _selected(lang, options.sub_langs) and SAFE_NAME.match(lang) and len(lang) <= 16 and usable_tracks(human[lang])
    )
    auto_langs = tuple(sorted(str(k) for k, tracks in automatic.items() if tracks and _selected(str(k), options.sub_langs)))
    if chosen:
        return Verdict(None, languages=chosen, automatic=auto_langs)
    wanted = f" in {','.join(options.sub_langs)}" if options.sub_langs else ""
    if auto_langs:
        also = f"; human subtitles only in {', '.join(human_langs)}" if human_langs else ""
        detail = f"only automatic captions ({', '.join(auto_langs)}): machine-generated, not used as labels{also}"
        return Verdict(RejectReason.MACHINE_GENERATED_CAPTIONS, detail, automatic=auto_langs, unlabelled=options.keep_unlabelled)
    if human_langs:
        detail = (f"human subtitles only in {', '.join(human_langs)}, none usable{wanted} (need one {'/'.join(SUBTITLE_FORMATS)} file "
                  "over http(s), not a playlist, and a plain language code)")
    else:
        detail = "no subtitles"
    return Verdict(RejectReason.MISSING_TRANSCRIPT, detail, unlabelled=options.keep_unlabelled)


class Fetcher:
    """One URL's output rows: its items (fetched, or rejected with the reason) or the URL itself rejected."""

    def __init__(self, options: FetchStageOptions):
        self.options = options.fetch
        self.downloader = Downloader(options.fetch, options.root)

    def fetch_url(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        """All output rows of one input URL row."""
        url = row["url"]
        base = {"url_id": row["source_id"], "url": url, "url_index": row.get("url_index")}
        problem = check_url(url)
        if problem:
            return [self._reject_url(base, RejectReason.UNSAFE_URL, problem)]
        try:
            info = self.downloader.extract(url)
        except FetchAbort as abort:
            return [self._reject_url(base, abort.reason, abort.detail)]
        if info is None:
            return [self._reject_url(base, RejectReason.FETCH_FAILED, "yt-dlp returned nothing (refused by a filter)")]
        entries = list(self.downloader.items(info, url, depth=0))
        if not entries:
            return [self._reject_url(base, RejectReason.NO_MEDIA, f"{info.get('_type') or 'page'} {info.get('id')!r} has no entries")]
        rows = []
        seen: set[str] = set()
        for index, (entry, playlist, error) in enumerate(entries):
            rows.append(self._fetch_entry(base, index, entry, playlist, error, seen))
        return rows

    # -- one item

    def _reject_url(self, base: dict[str, Any], reason: RejectReason, detail: str) -> dict[str, Any]:
        return dict(base, source_id=base["url_id"], source=base["url"], item_index=None, item=None, duration_ms=None,
                    reject_reason=reason.value, reject_detail=detail)

    def _fetch_entry(self, base, index, info, playlist, error, seen: set[str]) -> dict[str, Any]:
        if error is not None:
            ident = str(info.get("id") or info.get("webpage_url") or index)
            source_id = f"{base['url_id']}.{safe_component(ident, 48)}"
            return dict(base, source_id=source_id, source=info.get("webpage_url") or base["url"], item_index=index, item=None,
                        duration_ms=None, reject_reason=error[0].value, reject_detail=error[1])
        _, _, item_id = self.downloader.names(info)
        source = info.get("webpage_url") or info.get("original_url") or base["url"]
        duration = info.get("duration")
        row = dict(base, source_id=item_id, source=source, item_index=index, item=None,
                   duration_ms=int(duration * 1000) if isinstance(duration, (int, float)) else None)
        if item_id in seen:
            return dict(row, reject_reason=RejectReason.DUPLICATE_SOURCE.value, reject_detail=f"{item_id} appears twice behind {base['url']}")
        seen.add(item_id)
        verdict = classify(info, self.options)
        if verdict.reason is not None and not verdict.unlabelled:
            return dict(row, reject_reason=verdict.reason.value, reject_detail=verdict.detail)
        try:
            item = self.downloader.download(info, verdict.languages)
        except FetchAbort as abort:
            return dict(row, reject_reason=abort.reason.value, reject_detail=abort.detail)
        item.update(
            item_id=item_id, extractor=info.get("extractor"), extractor_key=info.get("extractor_key"), video_id=info.get("id"),
            title=info.get("title"), uploader=info.get("uploader"), channel=info.get("channel"),
            license=info.get("license"), webpage_url=source, automatic_caption_languages=list(verdict.automatic),
            labelled=verdict.reason is None, **(playlist or {}),
            playlist_index=info.get("playlist_index") if playlist else None,
        )
        row.update(item=json.dumps(item, sort_keys=True, ensure_ascii=False), duration_ms=round(item["duration_s"] * 1000) if item["duration_s"] is not None else None)
        if verdict.reason is not None:  # unlabelled audio: kept on disk, rejected as a labelled source
            row.update(reject_reason=verdict.reason.value, reject_detail=verdict.detail + "; audio kept as unlabelled")
        return row


def fetch_media(batch: pa.Table, options: FetchStageOptions) -> pa.Table:
    """URL rows (``source_id``, ``url``, ``url_index``) in; one row per item or failed URL out, with the item as
    JSON in ``item``, or ``reject_reason``/``reject_detail``."""
    fetcher = Fetcher(options)
    rows: list[dict[str, Any]] = []
    for row in batch.to_pylist():
        for out in fetcher.fetch_url(row):
            out.setdefault("reject_reason", None)
            out.setdefault("reject_detail", None)
            rows.append(out)
    return table_from_rows(rows) if rows else batch
