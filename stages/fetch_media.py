"""Fetch audio and human-made subtitles from the web with yt-dlp: the only module that calls yt-dlp.

One input row is one URL. A URL that names a playlist or a channel expands to one output row per item; a URL
that fails (unsafe scheme, 404, no media, a live stream) becomes one rejected row carrying yt-dlp's message. Only
subtitles a person uploaded (yt-dlp's ``subtitles``) become transcripts: an item with nothing but automatic
captions (``automatic_captions``) is rejected as ``machine_generated_captions``, optionally with its audio kept
as unlabelled audio for ``wspsr transcribe``.

Safety: http and https only, checked before yt-dlp sees a URL (playlist entries too); yt-dlp runs through its
Python API, which reads no configuration file (only its command line does), without cookies, netrc, external
downloaders, post-processors or ffmpeg; downloads use direct or native-HLS protocols only; every file name comes
from the extractor and the video id, sanitised to ``[A-Za-z0-9_-]`` (subtitle languages too), never from titles.
Limits: duration (before the download when the site reports it, else by decoding the file), size (the server's
Content-Length, then the bytes actually received), wall clock per download. Transient failures (HTTP 5xx/429,
connection errors) are retried with exponential backoff, by yt-dlp for downloads and here for page extraction.
yt-dlp's download archive records finished items: a rerun skips what is archived and still on disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import re
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa

from pipeline.io.media import DecodeError, DecodeLimits, decode_audio, duration_ms
from pipeline.schema import RejectReason, table_from_rows

MEDIA_DIR = "media"
ARCHIVE_FILE = "archive.txt"
LOCKS_DIR = ".locks"  # one lock file per item while it downloads
SUBTITLE_FORMATS = ("vtt", "srt")  # what the corpus job reads; other subtitle formats are not downloaded
SAFE_SCHEMES = ("http", "https")
# Extractors whose video ids come from the page's URL path (``talk.html`` -> ``talk-1``): not unique across sites,
# so their items are named with a hash of the page URL too.
URL_DERIVED_ID_EXTRACTORS = frozenset({"Generic", "HTML5MediaEmbed"})
LIVE_STATUSES = frozenset({"is_live", "is_upcoming", "post_live"})
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9_-]+")
_EXT = re.compile(r"^[A-Za-z0-9]{1,10}$")
_LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}([-_][a-z0-9]{2,8})*$")
_UNDETERMINED = frozenset({"und", "zxx", "mul", "mis"})


@dataclass(frozen=True)
class FetchOptions:
    sub_langs: tuple[str, ...] = ()  # subtitle languages to take (``en`` also takes ``en-US``); empty: every language
    max_duration_s: float = 7200.0  # longer items are refused (before the download when the site reports a duration)
    max_filesize_mb: float = 1024.0  # per downloaded file
    retries: int = 3  # per request, on HTTP 5xx/429 and connection errors
    retry_base_delay_s: float = 1.0  # backoff: base * 2^attempt ...
    retry_max_delay_s: float = 30.0  # ... capped here
    socket_timeout_s: float = 30.0
    max_download_s: float = 3600.0  # wall clock per file
    max_items_per_url: int = 1000  # a playlist or channel expands to at most this many items
    keep_unlabelled: bool = False  # keep the audio of items with only automatic captions (listed in unlabelled.jsonl)
    format: str = "bestaudio/best"  # yt-dlp format selection
    protocols: tuple[str, ...] = ("http", "https", "m3u8_native")  # download protocols allowed (yt-dlp's names)
    allowed_extractors: tuple[str, ...] = ("default",)  # yt-dlp extractor name patterns ("default": all of them)

    def __post_init__(self) -> None:
        if self.max_duration_s <= 0 or self.max_filesize_mb <= 0 or self.socket_timeout_s <= 0 or self.max_download_s <= 0:
            raise ValueError("max_duration_s, max_filesize_mb, socket_timeout_s and max_download_s must be positive")
        if self.retries < 0 or self.retry_base_delay_s < 0 or self.retry_max_delay_s < 0:
            raise ValueError("retries and retry delays must not be negative")
        if self.max_items_per_url < 1:
            raise ValueError("max_items_per_url must be at least 1")
        for lang in self.sub_langs:
            if not _LANGUAGE_CODE.match(lang.lower()):
                raise ValueError(f"sub_langs: {lang!r} is not a language code like 'en' or 'pt-BR'")
        unknown = set(self.protocols) - {"http", "https", "m3u8_native", "http_dash_segments"}
        if unknown:
            raise ValueError(f"protocols: {', '.join(sorted(unknown))} not allowed (http, https, m3u8_native, http_dash_segments)")

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt + 1``."""
        return min(self.retry_base_delay_s * 2**attempt, self.retry_max_delay_s)


@dataclass(frozen=True)
class FetchStageOptions:
    fetch: FetchOptions
    root: str  # the output folder: media/ and archive.txt go here


# ---------------------------------------------------------------------------------------------------- names


def _hash(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def url_id(url: str) -> str:
    """The stable id of an input URL (reject rows of URLs that never became items carry it)."""
    return "url-" + _hash(url, 16)


def safe_component(text: str, max_len: int = 64) -> str:
    """A file-name component of ``[A-Za-z0-9_-]`` only, starting with a letter or digit; a changed or shortened
    name gets a hash of the original, so two different ids never share a name."""
    if _SAFE.match(text) and len(text) <= max_len:
        return text
    cleaned = _UNSAFE_RUN.sub("_", text).strip("_-")[: max_len - 9] or "x"
    return f"{cleaned}-{_hash(text)}"


def check_url(url: str) -> str | None:
    """Why a URL is refused before anything fetches it, or None."""
    if not isinstance(url, str) or not url:
        return "empty URL"
    if len(url) > 4096:
        return "URL longer than 4096 characters"
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        return "URL contains whitespace or control characters"
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme.lower() not in SAFE_SCHEMES:
        return f"scheme {parts.scheme + ':' if parts.scheme else '(none)'} not allowed (http and https only)"
    if not host:
        return "URL has no host"
    if parts.username is not None or parts.password is not None:
        return "URL carries credentials"
    return None


def manifest_language(lang: str) -> str | None:
    """A subtitle language as the corpus manifest accepts it (``en-US`` -> ``en-us``), or None when it is not
    a language code (``English``, ``und``): the corpus then relies on text language ID."""
    code = lang.lower().replace("_", "-")
    return code if _LANGUAGE_CODE.match(code) and code not in _UNDETERMINED else None


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


def _usable_tracks(tracks: Any) -> list[dict[str, Any]]:
    return [t for t in tracks or [] if isinstance(t, dict) and t.get("ext") in SUBTITLE_FORMATS and check_url(str(t.get("url") or "")) is None]


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
        lang for lang in human_langs if _selected(lang, options.sub_langs) and _SAFE.match(lang) and len(lang) <= 16 and _usable_tracks(human[lang])
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
        detail = f"human subtitles only in {', '.join(human_langs)}, none usable{wanted} (need {'/'.join(SUBTITLE_FORMATS)} and a plain language code)"
    else:
        detail = "no subtitles"
    return Verdict(RejectReason.MISSING_TRANSCRIPT, detail, unlabelled=options.keep_unlabelled)


def _unwrap(exc: BaseException | None) -> list[BaseException]:
    """An error and its causes (yt-dlp wraps them: DownloadError -> ExtractorError -> HTTPError)."""
    chain: list[BaseException] = []
    while exc is not None and all(exc is not seen for seen in chain):
        chain.append(exc)
        following = getattr(exc, "cause", None)
        exc_info = getattr(exc, "exc_info", None)
        if following is None and exc_info:
            following = exc_info[1]
        exc = following if following is not None else (exc.__cause__ or exc.__context__)
    return chain


def is_transient(error: BaseException) -> bool:
    """HTTP 5xx/429 and connection problems are worth retrying; 404, unsupported pages, TLS failures are not."""
    from yt_dlp.networking.exceptions import CertificateVerifyError, HTTPError, TransportError

    for exc in _unwrap(error):
        if isinstance(exc, HTTPError):
            return exc.status >= 500 or exc.status == 429
        if isinstance(exc, CertificateVerifyError):
            return False
        if isinstance(exc, TransportError):
            return True
    return False


def error_reason(error: BaseException) -> RejectReason:
    from yt_dlp.utils import UnsupportedError

    chain = _unwrap(error)
    if any(isinstance(exc, UnsupportedError) for exc in chain) or "no video formats found" in str(error).lower():
        return RejectReason.NO_MEDIA
    return RejectReason.FETCH_FAILED


def clean_message(message: str) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(message)).strip()
    return text[len("ERROR: ") :] if text.startswith("ERROR: ") else text


# ---------------------------------------------------------------------------------------------------- yt-dlp


class _Log:
    """yt-dlp's logger: keeps its messages, so a reject can say what yt-dlp said."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def _keep(self, message: str) -> None:
        self.lines.append(clean_message(message))
        del self.lines[:-200]

    debug = info = warning = error = _keep

    def find(self, needle: str) -> str | None:
        return next((line for line in reversed(self.lines) if needle in line), None)


class _Abort(Exception):
    def __init__(self, reason: RejectReason, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def youtube_dl(params: dict[str, Any]):
    """The one constructor of yt-dlp objects. The Python API reads no config file (only yt-dlp's command line
    does); plugins from the user's yt-dlp folders are turned off too, as ``--no-plugin-dirs`` would."""
    import yt_dlp
    from yt_dlp.globals import plugin_dirs

    plugin_dirs.value = []
    return yt_dlp.YoutubeDL(params)


def base_params(options: FetchOptions, log: _Log) -> dict[str, Any]:
    sleep: Callable[..., float] = lambda n: options.backoff(n)  # noqa: E731
    return {
        # The Python API never reads yt-dlp's config files (only its command line does); nothing here asks for
        # cookies, netrc, external downloaders, post-processors or an --exec hook.
        "logger": log,
        "quiet": True,
        "no_warnings": False,
        "noprogress": True,
        "color": "no_color",
        "noplaylist": True,  # a URL naming one item (e.g. a video inside a playlist) fetches that item only
        "extract_flat": "in_playlist",  # playlist entries are resolved one by one, each its own item or reject
        "playlist_items": f"1:{options.max_items_per_url}",
        "format": options.format,
        "writesubtitles": True,
        "writeautomaticsub": False,
        "subtitlesformat": "/".join(SUBTITLE_FORMATS),
        "max_filesize": int(options.max_filesize_mb * 2**20),
        "retries": options.retries,
        "fragment_retries": options.retries,
        "extractor_retries": options.retries,
        "file_access_retries": 1,
        "retry_sleep_functions": {"http": sleep, "fragment": sleep, "extractor": sleep},
        "socket_timeout": options.socket_timeout_s,
        "allowed_extractors": list(options.allowed_extractors),
        "restrictfilenames": True,
        "windowsfilenames": True,
        "fixup": "never",  # no ffmpeg from yt-dlp: pipeline/media.py is the only ffmpeg caller
        "postprocessors": [],
        "cachedir": False,
        "usenetrc": False,
        "cookiefile": None,
        "cookiesfrombrowser": None,
        "external_downloader": {},
        "enable_file_urls": False,
        "live_from_start": False,
        "wait_for_video": None,
        "updatetime": False,
        "writeinfojson": False,
        "writethumbnail": False,
        "writedescription": False,
        "check_formats": False,
    }


def _match_filter(options: FetchOptions) -> Callable[..., str | None]:
    def refuse(info: dict[str, Any], incomplete: bool = False) -> str | None:
        if info.get("is_live") or info.get("live_status") in LIVE_STATUSES:
            return "live stream"
        duration = info.get("duration")
        if isinstance(duration, (int, float)) and duration > options.max_duration_s:
            return f"duration {duration:g} s > limit of {options.max_duration_s:g} s"
        return None

    return refuse


# ---------------------------------------------------------------------------------------------------- the stage


class Fetcher:
    """Fetches one URL's items into ``root/media/<extractor>/<id>.<ext>`` (+ ``<id>.<lang>.vtt``)."""

    def __init__(self, options: FetchStageOptions):
        self.options = options.fetch
        self.root = Path(options.root)
        self.archive = self.root / ARCHIVE_FILE

    # -- extraction

    def _extract(self, url: str, ie_key: str | None = None) -> dict[str, Any]:
        from yt_dlp.utils import YoutubeDLError

        for attempt in range(self.options.retries + 1):
            log = _Log()
            try:
                with youtube_dl(base_params(self.options, log)) as ydl:
                    info = ydl.extract_info(url, download=False, ie_key=ie_key)
                    return ydl.sanitize_info(info) if info is not None else None
            except YoutubeDLError as err:
                if attempt < self.options.retries and is_transient(err):
                    time.sleep(self.options.backoff(attempt))
                    continue
                raise
        raise AssertionError("unreachable")

    def fetch_url(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        """All output rows of one input URL row."""
        url = row["url"]
        base = {"url_id": row["source_id"], "url": url, "url_index": row.get("url_index")}
        problem = check_url(url)
        if problem:
            return [self._reject_url(base, RejectReason.UNSAFE_URL, problem)]
        from yt_dlp.utils import YoutubeDLError

        try:
            info = self._extract(url)
        except YoutubeDLError as err:
            return [self._reject_url(base, error_reason(err), clean_message(str(err)))]
        if info is None:
            return [self._reject_url(base, RejectReason.FETCH_FAILED, "yt-dlp returned nothing (refused by a filter)")]
        entries = list(self._items(info, url, depth=0))
        if not entries:
            return [self._reject_url(base, RejectReason.NO_MEDIA, f"{info.get('_type') or 'page'} {info.get('id')!r} has no entries")]
        rows = []
        seen: set[str] = set()
        for index, (entry, playlist, error) in enumerate(entries):
            rows.append(self._fetch_entry(base, index, entry, playlist, error, seen))
        return rows

    def _items(self, info: dict[str, Any], url: str, depth: int):
        """(item info, playlist info, error) for every item behind a URL, flat entries resolved one by one."""
        from yt_dlp.utils import YoutubeDLError

        kind = info.get("_type") or "video"
        if kind == "video":
            yield info, None, None
            return
        if kind in ("url", "url_transparent"):
            target = info.get("url") or ""
            problem = check_url(target)
            if problem:
                yield {"id": info.get("id"), "webpage_url": target}, None, (RejectReason.UNSAFE_URL, problem)
                return
            try:
                resolved = self._extract(target, info.get("ie_key"))
            except YoutubeDLError as err:
                yield {"id": info.get("id"), "webpage_url": target}, None, (error_reason(err), clean_message(str(err)))
                return
            if resolved is not None:
                yield from self._items(resolved, target, depth)
            return
        # playlist, multi_video: entries are full items or flat references to resolve
        playlist = {"playlist_id": info.get("id"), "playlist_title": info.get("title")}
        count = 0
        for entry in info.get("entries") or []:
            if entry is None:
                continue
            if count >= self.options.max_items_per_url:
                break
            count += 1
            if (entry.get("_type") or "video") == "video":
                yield entry, playlist, None
            elif depth >= 2:  # a channel's playlists' playlists: recorded, not followed
                yield {"id": entry.get("id"), "webpage_url": entry.get("url")}, playlist, (RejectReason.NO_MEDIA, "playlist nested too deep")
            else:
                for item, _, error in self._items(entry, url, depth + 1):
                    yield item, playlist, error

    # -- one item

    def _reject_url(self, base: dict[str, Any], reason: RejectReason, detail: str) -> dict[str, Any]:
        return dict(base, source_id=base["url_id"], source=base["url"], item_index=None, item=None, duration_ms=None,
                    reject_reason=reason.value, reject_detail=detail)

    def names(self, info: dict[str, Any]) -> tuple[str, str, str]:
        """(extractor folder, file name stem, item id): ids only, never titles."""
        extractor = safe_component(str(info.get("extractor") or info.get("extractor_key") or "unknown").lower(), 32)
        video_id = str(info.get("id") or "")
        if info.get("extractor_key") in URL_DERIVED_ID_EXTRACTORS or str(info.get("extractor") or "").startswith("generic"):
            # ids made from the URL's last path segment repeat across sites: name them by the page too
            name = f"{safe_component(video_id, 48)}-{_hash(str(info.get('webpage_url') or info.get('original_url') or ''))}"
        else:
            name = safe_component(video_id or "x", 64)
        return extractor, name, f"{extractor}.{name}"

    def _fetch_entry(self, base, index, info, playlist, error, seen: set[str]) -> dict[str, Any]:
        if error is not None:
            ident = str(info.get("id") or info.get("webpage_url") or index)
            source_id = f"{base['url_id']}.{safe_component(ident, 48)}"
            return dict(base, source_id=source_id, source=info.get("webpage_url") or base["url"], item_index=index, item=None,
                        duration_ms=None, reject_reason=error[0].value, reject_detail=error[1])
        extractor, name, item_id = self.names(info)
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
            with self._lock(f"{extractor}.{name}"):  # the same item behind two URLs: one download, then the archive
                item = self._download(info, extractor, name, verdict)
        except _Abort as abort:
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

    @contextlib.contextmanager
    def _lock(self, key: str) -> Iterator[None]:
        locks = self.root / LOCKS_DIR
        locks.mkdir(exist_ok=True)
        with open(locks / key, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _download(self, info: dict[str, Any], extractor: str, name: str, verdict: Verdict) -> dict[str, Any]:
        from yt_dlp.utils import YoutubeDLError

        info = dict(info)
        if info.get("extractor_key") in URL_DERIVED_ID_EXTRACTORS or str(info.get("extractor") or "").startswith("generic"):
            info["id"] = name  # the archive key follows the name: two sites' "talk-1" stay apart
            info.pop("_old_archive_ids", None)
        info["subtitles"] = {lang: _usable_tracks(info["subtitles"][lang]) for lang in verdict.languages}
        info["automatic_captions"] = {}
        info.pop("requested_subtitles", None)
        formats = info.get("requested_formats") or [info]
        for fmt in formats:
            protocol = fmt.get("protocol") or "https"
            if protocol not in self.options.protocols or check_url(str(fmt.get("url") or "")):
                raise _Abort(RejectReason.UNSAFE_URL, f"format {info.get('format_id')} uses protocol {protocol}, not allowed ({', '.join(self.options.protocols)})")
        ext = str(info.get("ext") or "")
        if not _EXT.match(ext):
            raise _Abort(RejectReason.FETCH_FAILED, f"unexpected media file extension {ext!r}")
        folder = self.root / MEDIA_DIR / extractor
        media = folder / f"{name}.{ext}"
        subs = {}
        for lang in verdict.languages:
            preferred = [t for fmt_ in SUBTITLE_FORMATS for t in info["subtitles"][lang] if t["ext"] == fmt_]
            sub_ext = preferred[0]["ext"]
            subs[lang] = folder / f"{name}.{lang}.{sub_ext}"
        wanted = [media, *subs.values()]

        log = _Log()
        params = base_params(self.options, log)
        params.update(
            paths={"home": str(self.root)},
            outtmpl={"default": f"{MEDIA_DIR}/{extractor}/{name}.%(ext)s"},
            writesubtitles=bool(verdict.languages),
            subtitleslangs=list(verdict.languages),
            progress_hooks=[self._guard()],
            # classify() decided already; this second guard acts in yt-dlp itself (not while extracting, where it
            # would drop playlist entries without a trace)
            match_filter=_match_filter(self.options),
        )
        downloaded = True
        with youtube_dl(dict(params, download_archive=str(self.archive))) as ydl:
            archived = ydl.in_download_archive(info)
        if archived and all(p.is_file() for p in wanted):
            downloaded = False
        else:
            # An archived item whose files are gone is downloaded without the archive (which would skip it).
            if not archived:
                params["download_archive"] = str(self.archive)
            try:
                with youtube_dl(params) as ydl:
                    ydl.process_ie_result(info, download=True)
            except _Abort:
                self._remove(folder, name)
                raise
            except YoutubeDLError as err:
                self._remove(folder, name)
                raise _Abort(error_reason(err), clean_message(str(err))) from None
        try:
            if not media.is_file():
                too_large = log.find("larger than max-filesize")
                if too_large:
                    raise _Abort(RejectReason.FILE_TOO_LARGE, too_large)
                said = log.find("does not pass filter") or (log.lines[-1] if log.lines else "no file written")
                raise _Abort(RejectReason.FETCH_FAILED, f"yt-dlp wrote no media file: {said}")
            size = media.stat().st_size
            if size > self.options.max_filesize_mb * 2**20:
                raise _Abort(RejectReason.FILE_TOO_LARGE, f"{size} bytes > limit of {self.options.max_filesize_mb:g} MB")
            missing = [lang for lang, path in subs.items() if not path.is_file()]
            if missing:
                raise _Abort(RejectReason.FETCH_FAILED, f"subtitles {', '.join(missing)} were not written: {log.lines[-1] if log.lines else ''}")
            duration = info.get("duration")
            if not isinstance(duration, (int, float)):
                try:  # the site did not say: decode (stops just past the limit) to enforce it and record the real length
                    duration = duration_ms(decode_audio(media, DecodeLimits(max_seconds=self.options.max_duration_s, max_file_mb=self.options.max_filesize_mb))) / 1000
                except DecodeError as err:
                    if err.reason is RejectReason.AUDIO_TOO_LONG:
                        raise _Abort(err.reason, err.detail) from None
                    duration = None  # undecodable audio is judged (and rejected) by the corpus job, with ffmpeg's message
        except _Abort:
            self._remove(folder, name)  # nothing of a refused item stays (subtitles written before the audio failed)
            raise
        rel = lambda p: p.relative_to(self.root).as_posix()  # noqa: E731
        return {
            "audio": rel(media),
            "audio_bytes": size,
            "duration_s": round(float(duration), 3) if duration is not None else None,
            "subtitles": [{"language": lang, "path": rel(path), "format": path.suffix[1:]} for lang, path in sorted(subs.items())],
            "downloaded": downloaded,
        }

    def _guard(self) -> Callable[[dict[str, Any]], None]:
        limit = self.options.max_filesize_mb * 2**20
        started = time.monotonic()

        def hook(progress: dict[str, Any]) -> None:
            if progress.get("status") != "downloading":
                return
            if (progress.get("downloaded_bytes") or 0) > limit:
                raise _Abort(RejectReason.FILE_TOO_LARGE, f"more than {self.options.max_filesize_mb:g} MB received (no or wrong Content-Length)")
            if time.monotonic() - started > self.options.max_download_s:
                raise _Abort(RejectReason.FETCH_FAILED, f"download took longer than {self.options.max_download_s:g} s")

        return hook

    @staticmethod
    def _remove(folder: Path, name: str) -> None:
        """Every file of an item (names are [A-Za-z0-9_-], so ``name.`` starts only this item's files)."""
        if folder.is_dir():
            for path in folder.iterdir():
                if path.name.startswith(f"{name}."):
                    path.unlink(missing_ok=True)


def fetch_media(batch: pa.Table, options: FetchStageOptions) -> pa.Table:
    """URL rows (``source_id``, ``url``, ``url_index``) in; one row per item or failed URL out, with the item as
    JSON in ``item``, or ``reject_reason``/``reject_detail``."""
    fetcher = Fetcher(options)
    (fetcher.root / MEDIA_DIR).mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for row in batch.to_pylist():
        for out in fetcher.fetch_url(row):
            out.setdefault("reject_reason", None)
            out.setdefault("reject_detail", None)
            rows.append(out)
    return table_from_rows(rows) if rows else batch
