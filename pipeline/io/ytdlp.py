"""The only module that calls yt-dlp: page extraction, playlist expansion and downloads, with their limits.

Safety: http and https only, checked before yt-dlp sees a URL (playlist entries too); hosts that resolve to an
address that is not globally routable (loopback, private, carrier-grade NAT, link-local, multicast, documentation,
reserved) refused at every connection (``guarded_connections``). That check lives in this process, so nothing may
connect from elsewhere: yt-dlp finds no ffmpeg, downloads natively (``external_downloader`` "native"), a format or
subtitle track whose download needs another program is refused, and while yt-dlp runs it may start no program at
all. It never uses a proxy, from its options or the environment (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``...):
the check must see the address wspsr connects to, not a proxy's. yt-dlp runs through its Python API, which reads no
configuration file (only its command line does), without cookies, netrc or post-processors; downloads use direct or
native-HLS protocols only; every file name comes from the extractor and the video id, sanitised to
``[A-Za-z0-9_-]`` (subtitle languages too), never from titles.
Limits: page reads (pages, playlists, manifests, keys: whatever yt-dlp reads into memory) by size and wall clock;
duration (before the download when the site reports it, else by decoding the file), size (the server's
Content-Length, then the bytes actually received), wall clock per download. Transient failures (HTTP 5xx/429,
connection errors) are retried with exponential backoff, by yt-dlp for downloads and here for page extraction.
yt-dlp's download archive records finished items: a rerun skips what is archived and still on disk. Which items
and subtitles to fetch is the stage's decision (``stages.fetch_media``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import os
import re
import socket
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn

from pipeline.io.media import DecodeError, DecodeLimits, decode_audio, duration_ms
from pipeline.schema import RejectReason

MEDIA_DIR = "media"
ARCHIVE_FILE = "archive.txt"
LOCKS_DIR = ".locks"  # one lock file per item while it downloads
SUBTITLE_FORMATS = ("vtt", "srt")  # what the corpus job reads; other subtitle formats are not downloaded
SAFE_SCHEMES = ("http", "https")
# Extractors whose video ids come from the page's URL path (``talk.html`` -> ``talk-1``): not unique across sites,
# so their items are named with a hash of the page URL too.
URL_DERIVED_ID_EXTRACTORS = frozenset({"Generic", "HTML5MediaEmbed"})
LIVE_STATUSES = frozenset({"is_live", "is_upcoming", "post_live"})
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9_-]+")
_EXT = re.compile(r"^[A-Za-z0-9]{1,10}$")
LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}([-_][a-z0-9]{2,8})*$")
# A subtitle track is one file fetched over http(s): playlists (HLS, DASH...) are refused, whatever their ``ext``.
SUBTITLE_PROTOCOLS = frozenset({"http", "https"})
PLAYLIST_EXTS = frozenset({"m3u8", "m3u", "mpd", "f4m", "ism", "isml", "ismc"})
# Where yt-dlp is told ffmpeg lives: a file that is never a program, so it finds none (and skips its PATH search).
NO_PROGRAM = os.devnull


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
    # Destinations: URLs come from crawls, so hosts that resolve to an address that is not globally routable
    # (loopback, private, carrier-grade NAT, link-local such as cloud metadata at 169.254.169.254, multicast,
    # documentation, reserved) are refused, at every connection (redirects included).
    allow_loopback: bool = False  # true: 127.0.0.0/8 and ::1 may be fetched (tests, a mirror on this machine)
    allowed_networks: tuple[str, ...] = ()  # CIDRs fetched although not public, e.g. a mirror inside your network ("10.8.0.0/16")
    # Page reads: what yt-dlp reads into memory (pages, playlists, manifests, HLS keys), per response. A stalled read
    # ends after socket_timeout_s, so a read lasts at most max_page_s + socket_timeout_s.
    max_page_mb: float = 16.0
    max_page_s: float = 120.0  # wall clock from the request to the last byte

    def __post_init__(self) -> None:
        positive = ("max_duration_s", "max_filesize_mb", "socket_timeout_s", "max_download_s", "max_page_mb",
                    "max_page_s")
        if min(getattr(self, name) for name in positive) <= 0:
            raise ValueError(f"{', '.join(positive)} must be positive")
        if self.retries < 0 or self.retry_base_delay_s < 0 or self.retry_max_delay_s < 0:
            raise ValueError("retries and retry delays must not be negative")
        if self.max_items_per_url < 1:
            raise ValueError("max_items_per_url must be at least 1")
        for lang in self.sub_langs:
            if not LANGUAGE_CODE.match(lang.lower()):
                raise ValueError(f"sub_langs: {lang!r} is not a language code like 'en' or 'pt-BR'")
        for network in self.allowed_networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError as exc:
                raise ValueError(f"allowed_networks: {exc}") from None
        unknown = set(self.protocols) - {"http", "https", "m3u8_native", "http_dash_segments"}
        if unknown:
            raise ValueError(f"protocols: {', '.join(sorted(unknown))} not allowed (http, https, m3u8_native, http_dash_segments)")

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt + 1``."""
        return min(self.retry_base_delay_s * 2**attempt, self.retry_max_delay_s)


# ---------------------------------------------------------------------------------------------------- names


def _hash(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def url_id(url: str) -> str:
    """The stable id of an input URL (reject rows of URLs that never became items carry it)."""
    return "url-" + _hash(url, 16)


def safe_component(text: str, max_len: int = 64) -> str:
    """A file-name component of ``[A-Za-z0-9_-]`` only, starting with a letter or digit; a changed or shortened
    name gets a hash of the original, so two different ids never share a name."""
    if SAFE_NAME.match(text) and len(text) <= max_len:
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


_NAMED_NETWORKS = tuple(
    (kind, tuple(ipaddress.ip_network(network) for network in networks))
    for kind, networks in (
        ("carrier-grade NAT / shared address space", ("100.64.0.0/10",)),
        ("documentation (TEST-NET)", ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")),
        ("benchmarking", ("198.18.0.0/15", "2001:2::/48")),
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # the well-known NAT64 prefix: the last 32 bits are the IPv4 address


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _embedded_ipv4(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address reaches (mapped, NAT64, 6to4), judged instead of the wrapper."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.sixtofour is not None:
            return ip.sixtofour
    return ip


def address_problem(address: str, options: FetchOptions) -> str | None:
    """Why a resolved address may not be fetched from (``"private"``...), or None: only globally routable addresses
    pass, unless ``allowed_networks`` or ``allow_loopback`` name them."""
    try:
        ip = _embedded_ipv4(ipaddress.ip_address(address.split("%", 1)[0]))
    except ValueError:
        return "unparseable"
    if any(ip in ipaddress.ip_network(network, strict=False) for network in options.allowed_networks):
        return None
    if ip.is_loopback:
        return None if options.allow_loopback else "loopback"
    for flag, kind in (("is_link_local", "link-local"), ("is_multicast", "multicast"),
                       ("is_unspecified", "unspecified")):
        if getattr(ip, flag):
            return kind
    for kind, networks in _NAMED_NETWORKS:
        if any(ip in network for network in networks):
            return kind
    if ip.is_reserved:
        return "reserved"
    if ip.is_private:
        return "private"
    return None if ip.is_global else "not globally routable"


class ProgramRefused(PermissionError):
    """yt-dlp tried to start a program while fetching. A ``PermissionError``, so that yt-dlp's probes for optional
    programs (ffmpeg, JavaScript runtimes) take the program as missing."""


def _program(downloader: type) -> str:
    """The program a yt-dlp downloader class runs (``ffmpeg``, ``rtmpdump``, ``aria2c``...), or its own name."""
    from yt_dlp.downloader.external import ExternalFD
    from yt_dlp.downloader.rtmp import RtmpFD

    if issubclass(downloader, ExternalFD):
        return downloader.get_basename()
    return "rtmpdump" if issubclass(downloader, RtmpFD) else downloader.FD_NAME


def _refuse_program(fd: Any, filename: str, info_dict: dict[str, Any]) -> NoReturn:
    """Stands in for the ``real_download`` of yt-dlp's downloaders that run a program."""
    log = fd.ydl.params.get("logger")
    said = log.find("delegated to") if isinstance(log, YtdlpLog) else None
    why = f" ({said})" if said else ""
    format_id = info_dict.get("format_id") or info_dict.get("ext") or "?"
    program = _program(type(fd))
    raise FetchAbort(
        RejectReason.UNSAFE_URL,
        f"yt-dlp would hand the download of {format_id} to {program}{why}: an external program's connections bypass "
        "wspsr's address check, so it is never started",
    )


@contextlib.contextmanager
def no_programs() -> Iterator[None]:
    """While yt-dlp runs it starts no program: ffmpeg cannot be found, a download handed to ffmpeg or another
    external downloader is refused (``FetchAbort``), and any other start through yt-dlp's ``Popen`` (the one way it
    starts programs) fails with ``ProgramRefused``."""
    from yt_dlp.downloader.external import ExternalFD
    from yt_dlp.downloader.rtmp import RtmpFD
    from yt_dlp.postprocessor.ffmpeg import FFmpegPostProcessor
    from yt_dlp.utils import Popen

    def refuse(self, args, *rest, **kwargs):
        program = args if isinstance(args, str) else (list(args)[:1] or ["?"])[0]
        raise ProgramRefused(f"wspsr refused to let yt-dlp start {os.path.basename(str(program))!r} while fetching")

    patched = [(Popen, "__init__", refuse), (ExternalFD, "real_download", _refuse_program),
               (RtmpFD, "real_download", _refuse_program)]
    originals = [(owner, name, owner.__dict__[name]) for owner, name, _ in patched]
    location = FFmpegPostProcessor._ffmpeg_location.set(NO_PROGRAM)  # yt-dlp's default when no params are at hand
    for owner, name, replacement in patched:
        setattr(owner, name, replacement)
    try:
        yield
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
        FFmpegPostProcessor._ffmpeg_location.reset(location)


@contextlib.contextmanager
def guarded_connections(options: FetchOptions) -> Iterator[list[str]]:
    """While yt-dlp runs, every host it connects to (the page, its redirects, media, subtitles, HLS keys and
    segments) is resolved through a check: addresses that are not globally routable are dropped, and a host left with
    none fails as if it did not resolve. The check sees the addresses the connection then uses, so a name that
    resolves differently the second time (DNS rebinding) gains nothing. It holds only in this process: yt-dlp may
    start no program meanwhile (``no_programs``). Yields the refusals, for the reject's detail."""
    original = socket.getaddrinfo
    refusals: list[str] = []

    def checked(host, port, *args, **kwargs):
        found = original(host, port, *args, **kwargs)
        allowed = [entry for entry in found if address_problem(entry[4][0], options) is None]
        if not allowed:
            refused = ", ".join(sorted({f"{entry[4][0]} ({address_problem(entry[4][0], options)})" for entry in found}))
            refusals.append(f"{host} resolves to {refused}: not a public address (fetch.allow_loopback / fetch.allowed_networks allow some)")
            raise socket.gaierror(socket.EAI_NONAME, f"wspsr refused to connect to {host}: not a public address")
        return allowed

    socket.getaddrinfo = checked
    try:
        with no_programs():
            yield refusals
    finally:
        socket.getaddrinfo = original


def subtitle_track_problem(track: Any) -> str | None:
    """Why a subtitle track is not downloaded, or None: one VTT or SRT file over http(s), never a playlist (whose
    download yt-dlp may hand to ffmpeg, and whose segments could be anywhere)."""
    if not isinstance(track, dict):
        return "not a track"
    url = str(track.get("url") or "")
    if track.get("ext") not in SUBTITLE_FORMATS:
        return f"format {track.get('ext')!r} (need {'/'.join(SUBTITLE_FORMATS)})"
    problem = check_url(url)
    if problem:
        return problem
    protocol = track.get("protocol")
    path_ext = urllib.parse.urlsplit(url).path.rpartition("/")[2].rpartition(".")[2].lower()
    if (protocol is not None and protocol not in SUBTITLE_PROTOCOLS) or path_ext in PLAYLIST_EXTS:
        return f"a playlist ({protocol or path_ext}), not a subtitle file"
    return None


def usable_tracks(tracks: Any) -> list[dict[str, Any]]:
    return [t for t in tracks or [] if subtitle_track_problem(t) is None]


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


class YtdlpLog:
    """yt-dlp's logger: keeps its messages, so a reject can say what yt-dlp said."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def _keep(self, message: str) -> None:
        self.lines.append(clean_message(message))
        del self.lines[:-200]

    debug = info = warning = error = _keep

    def find(self, needle: str) -> str | None:
        return next((line for line in reversed(self.lines) if needle in line), None)


class FetchAbort(Exception):
    """An item refused while fetching it: the reject reason and detail."""

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


def _read_some(response: Any, size: int, read: Callable[[int], bytes]) -> bytes:
    """Up to ``size`` bytes, returning as soon as some arrive (a trickle cannot hold a read past the clock)."""
    from yt_dlp.networking.exceptions import TransportError

    raw = response.fp
    try:
        if type(raw).__module__.startswith("urllib3."):  # yt-dlp's requests handler: decode gzip/br as it arrives
            data = raw.read1(size, decode_content=True)
        elif hasattr(raw, "read1"):  # its urllib handler (http.client)
            data = raw.read1(size)
        else:
            return read(size)
    except Exception as exc:
        raise TransportError(cause=exc) from exc
    if raw.closed:
        response.close()
    return data


def limit_page_reads(ydl: Any, options: FetchOptions, whole_reads_only: bool = False) -> None:
    """Every response ``ydl`` opens is read within ``max_page_mb`` and ``max_page_s`` (counted from the request),
    else ``FetchAbort``. ``whole_reads_only``: only reads of a whole body (``read()``: HLS playlists and keys while
    downloading) are limited; media, read in blocks, has the download limits."""
    urlopen = ydl.urlopen
    max_bytes = int(options.max_page_mb * 2**20)

    def opened(*args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        response = urlopen(*args, **kwargs)
        read, received = response.read, 0

        def limited(amt: int | None = None) -> bytes:
            nonlocal received
            whole = amt is None or amt < 0
            if whole_reads_only and not whole:
                return read(amt)
            if response.closed:
                return b""
            parts: list[bytes] = []
            wanted = None if whole else amt
            while wanted is None or wanted > 0:
                if time.monotonic() - started > options.max_page_s:
                    response.close()
                    raise FetchAbort(RejectReason.FETCH_FAILED, f"reading {response.url} took longer than "
                                     f"fetch.max_page_s ({options.max_page_s:g} s)")
                chunk = _read_some(response, min(wanted or 1 << 16, 1 << 16), read)
                if not chunk:
                    break
                received += len(chunk)
                if received > max_bytes:
                    response.close()
                    raise FetchAbort(RejectReason.FETCH_FAILED, f"{response.url} is larger than fetch.max_page_mb "
                                     f"({options.max_page_mb:g} MB)")
                parts.append(chunk)
                if wanted is not None:
                    wanted -= len(chunk)
            return b"".join(parts)

        response.read = limited
        return response

    ydl.urlopen = opened


def native_downloader_problem(fmt: dict[str, Any], params: dict[str, Any]) -> str | None:
    """Why yt-dlp would not download a format in this process (it would hand it to ffmpeg, rtmpdump, curl...), or
    None. Decided by yt-dlp's own choice of downloader, with the fetch's parameters."""
    from yt_dlp.downloader import get_suitable_downloader
    from yt_dlp.downloader.dash import DashSegmentsFD
    from yt_dlp.downloader.hls import HlsFD
    from yt_dlp.downloader.http import HttpFD

    with no_programs():
        downloader = get_suitable_downloader(dict(fmt), params)
    if downloader in (HttpFD, HlsFD, DashSegmentsFD):
        return None
    name = _program(downloader) if downloader is not None else "no single downloader"
    return f"yt-dlp would download format {fmt.get('format_id')} with {name}, not natively in wspsr's process"


def base_params(options: FetchOptions, log: YtdlpLog) -> dict[str, Any]:
    sleep: Callable[..., float] = lambda n: options.backoff(n)  # noqa: E731
    return {
        # The Python API never reads yt-dlp's config files (only its command line does); nothing here asks for
        # cookies, netrc, post-processors or an --exec hook.
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
        # Downloads stay in this process, where the address check holds: no external downloader for any protocol,
        # native HLS, no ffmpeg to be found (``no_programs`` refuses the rest).
        "external_downloader": {"default": "native"},
        "hls_prefer_native": True,
        "ffmpeg_location": NO_PROGRAM,
        "proxy": "",  # direct connections, whatever HTTP_PROXY/HTTPS_PROXY/ALL_PROXY say
        "enable_file_urls": False,
        "live_from_start": False,
        "wait_for_video": None,
        "updatetime": False,
        "writeinfojson": False,
        "writethumbnail": False,
        "writedescription": False,
        "check_formats": False,
    }


def _guard_abort(error: BaseException, refusals: list[str]) -> FetchAbort | None:
    """The reject for an error the guard caused (a refused address, program or page limit, however yt-dlp wrapped
    it), or None."""
    for exc in _unwrap(error):
        if isinstance(exc, FetchAbort):
            return exc
        if isinstance(exc, ProgramRefused):
            return FetchAbort(RejectReason.UNSAFE_URL, f"{exc}: its connections would bypass the address check")
    return FetchAbort(RejectReason.UNSAFE_URL, refusals[-1]) if refusals else None


def _match_filter(options: FetchOptions) -> Callable[..., str | None]:
    def refuse(info: dict[str, Any], incomplete: bool = False) -> str | None:
        if info.get("is_live") or info.get("live_status") in LIVE_STATUSES:
            return "live stream"
        duration = info.get("duration")
        if isinstance(duration, (int, float)) and duration > options.max_duration_s:
            return f"duration {duration:g} s > limit of {options.max_duration_s:g} s"
        return None

    return refuse


class Downloader:
    """Fetches items into ``root/media/<extractor>/<id>.<ext>`` (+ ``<id>.<lang>.vtt``), with yt-dlp's archive in
    ``root/archive.txt``."""

    def __init__(self, options: FetchOptions, root: str | Path):
        self.options = options
        self.root = Path(root)
        self.archive = self.root / ARCHIVE_FILE
        (self.root / MEDIA_DIR).mkdir(parents=True, exist_ok=True)

    def extract(self, url: str, ie_key: str | None = None) -> dict[str, Any] | None:
        """yt-dlp's info dict of a page (nothing downloaded); ``FetchAbort`` when it cannot be read."""
        from yt_dlp.utils import YoutubeDLError

        for attempt in range(self.options.retries + 1):
            log = YtdlpLog()
            try:
                with guarded_connections(self.options) as refusals, youtube_dl(base_params(self.options, log)) as ydl:
                    limit_page_reads(ydl, self.options)
                    info = ydl.extract_info(url, download=False, ie_key=ie_key)
                    return ydl.sanitize_info(info) if info is not None else None
            except (YoutubeDLError, ProgramRefused) as err:
                refused = _guard_abort(err, refusals)
                if refused is not None:
                    raise refused from err
                if attempt < self.options.retries and is_transient(err):
                    time.sleep(self.options.backoff(attempt))
                    continue
                raise FetchAbort(error_reason(err), clean_message(str(err))) from err
        raise AssertionError("unreachable")

    def items(self, info: dict[str, Any], url: str, depth: int):
        """(item info, playlist info, error) for every item behind a URL, flat entries resolved one by one."""
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
                resolved = self.extract(target, info.get("ie_key"))
            except FetchAbort as abort:
                yield {"id": info.get("id"), "webpage_url": target}, None, (abort.reason, abort.detail)
                return
            if resolved is not None:
                yield from self.items(resolved, target, depth)
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
                for item, _, error in self.items(entry, url, depth + 1):
                    yield item, playlist, error

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

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        locks = self.root / LOCKS_DIR
        locks.mkdir(exist_ok=True)
        with open(locks / key, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def download(self, info: dict[str, Any], languages: tuple[str, ...]) -> dict[str, Any]:
        """Download one item's audio and the human subtitles in ``languages``, once (the archive and the files on
        disk decide); every file checked. Raises ``FetchAbort`` with the reject reason; nothing of a refused item
        stays on disk."""
        extractor, name, _ = self.names(info)
        with self.lock(f"{extractor}.{name}"):  # the same item behind two URLs: one download, then the archive
            info = self._prepared(info, name, languages)
            folder = self.root / MEDIA_DIR / extractor
            media = folder / f"{name}.{info['ext']}"
            subs = {lang: folder / f"{name}.{lang}.{self._subtitle_ext(info, lang)}" for lang in languages}
            log = YtdlpLog()
            downloaded = self._fetch_files(info, extractor, name, languages, [media, *subs.values()], log)
            try:
                size, duration = self._verified(info, media, subs, log)
            except FetchAbort:
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

    def _prepared(self, info: dict[str, Any], name: str, languages: tuple[str, ...]) -> dict[str, Any]:
        """The info dict yt-dlp downloads from: only the chosen human subtitles, no automatic captions, and only
        allowed protocols and file extensions (else ``FetchAbort``)."""
        info = dict(info)
        if info.get("extractor_key") in URL_DERIVED_ID_EXTRACTORS or str(info.get("extractor") or "").startswith("generic"):
            info["id"] = name  # the archive key follows the name: two sites' "talk-1" stay apart
            info.pop("_old_archive_ids", None)
        info["subtitles"] = {lang: usable_tracks(info["subtitles"][lang]) for lang in languages}
        info["automatic_captions"] = {}
        info.pop("requested_subtitles", None)
        params = base_params(self.options, YtdlpLog())
        for fmt in info.get("requested_formats") or [info]:
            protocol = fmt.get("protocol") or "https"
            if protocol not in self.options.protocols or check_url(str(fmt.get("url") or "")):
                raise FetchAbort(RejectReason.UNSAFE_URL, f"format {info.get('format_id')} uses protocol {protocol}, not allowed ({', '.join(self.options.protocols)})")
            problem = native_downloader_problem(fmt, params)
            if problem:
                raise FetchAbort(RejectReason.UNSAFE_URL, problem)
        if not _EXT.match(str(info.get("ext") or "")):
            raise FetchAbort(RejectReason.FETCH_FAILED, f"unexpected media file extension {str(info.get('ext') or '')!r}")
        return info

    @staticmethod
    def _subtitle_ext(info: dict[str, Any], lang: str) -> str:
        return next(t["ext"] for fmt in SUBTITLE_FORMATS for t in info["subtitles"][lang] if t["ext"] == fmt)

    def _fetch_files(self, info: dict[str, Any], extractor: str, name: str, languages: tuple[str, ...], wanted: list[Path], log: YtdlpLog) -> bool:
        """Run yt-dlp's download unless the archive has the item and its files are on disk; True when it downloaded."""
        from yt_dlp.utils import YoutubeDLError

        params = base_params(self.options, log)
        params.update(
            paths={"home": str(self.root)},
            outtmpl={"default": f"{MEDIA_DIR}/{extractor}/{name}.%(ext)s"},
            writesubtitles=bool(languages),
            subtitleslangs=list(languages),
            progress_hooks=[self._guard()],
            # the stage decided already; this second guard acts in yt-dlp itself (not while extracting, where it
            # would drop playlist entries without a trace)
            match_filter=_match_filter(self.options),
        )
        with youtube_dl(dict(params, download_archive=str(self.archive))) as ydl:
            archived = ydl.in_download_archive(info)
        if archived and all(p.is_file() for p in wanted):
            return False
        # An archived item whose files are gone is downloaded without the archive (which would skip it).
        if not archived:
            params["download_archive"] = str(self.archive)
        folder = self.root / MEDIA_DIR / extractor
        try:
            with guarded_connections(self.options) as refusals, youtube_dl(params) as ydl:
                limit_page_reads(ydl, self.options, whole_reads_only=True)
                ydl.process_ie_result(info, download=True)
        except FetchAbort:
            self._remove(folder, name)
            raise
        except (YoutubeDLError, ProgramRefused) as err:
            self._remove(folder, name)
            raise _guard_abort(err, refusals) or FetchAbort(error_reason(err), clean_message(str(err))) from None
        return True

    def _verified(self, info: dict[str, Any], media: Path, subs: dict[str, Path], log: YtdlpLog) -> tuple[int, float | None]:
        """(bytes, seconds) of the downloaded audio, after checking that every file is there and within limits."""
        if not media.is_file():
            too_large = log.find("larger than max-filesize")
            if too_large:
                raise FetchAbort(RejectReason.FILE_TOO_LARGE, too_large)
            said = log.find("does not pass filter") or (log.lines[-1] if log.lines else "no file written")
            raise FetchAbort(RejectReason.FETCH_FAILED, f"yt-dlp wrote no media file: {said}")
        size = media.stat().st_size
        if size > self.options.max_filesize_mb * 2**20:
            raise FetchAbort(RejectReason.FILE_TOO_LARGE, f"{size} bytes > limit of {self.options.max_filesize_mb:g} MB")
        missing = [lang for lang, path in subs.items() if not path.is_file()]
        if missing:
            raise FetchAbort(RejectReason.FETCH_FAILED, f"subtitles {', '.join(missing)} were not written: {log.lines[-1] if log.lines else ''}")
        duration = info.get("duration")
        if not isinstance(duration, (int, float)):
            try:  # the site did not say: decode (stops just past the limit) to enforce it and record the real length
                limits = DecodeLimits(max_seconds=self.options.max_duration_s, max_file_mb=self.options.max_filesize_mb)
                duration = duration_ms(decode_audio(media, limits)) / 1000
            except DecodeError as err:
                if err.reason is RejectReason.AUDIO_TOO_LONG:
                    raise FetchAbort(err.reason, err.detail) from None
                duration = None  # undecodable audio is judged (and rejected) by the corpus job, with ffmpeg's message
        return size, duration

    def _guard(self) -> Callable[[dict[str, Any]], None]:
        limit = self.options.max_filesize_mb * 2**20
        started = time.monotonic()

        def hook(progress: dict[str, Any]) -> None:
            if progress.get("status") != "downloading":
                return
            if (progress.get("downloaded_bytes") or 0) > limit:
                raise FetchAbort(RejectReason.FILE_TOO_LARGE, f"more than {self.options.max_filesize_mb:g} MB received (no or wrong Content-Length)")
            if time.monotonic() - started > self.options.max_download_s:
                raise FetchAbort(RejectReason.FETCH_FAILED, f"download took longer than {self.options.max_download_s:g} s")

        return hook

    @staticmethod
    def _remove(folder: Path, name: str) -> None:
        """Every file of an item (names are [A-Za-z0-9_-], so ``name.`` starts only this item's files)."""
        if folder.is_dir():
            for path in folder.iterdir():
                if path.name.startswith(f"{name}."):
                    path.unlink(missing_ok=True)


