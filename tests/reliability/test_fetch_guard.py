"""The fetch's address guard holds outside Python too: HLS streams whose download yt-dlp would hand to ffmpeg,
subtitle playlists, addresses that are not globally routable, oversized or trickling pages, proxies from the
environment. Loopback HTTP servers play the sites (Linux routes all of 127/8 to loopback, so 127.0.0.2 is a second,
refused host); a fake ffmpeg on PATH fetches what real ffmpeg would, and records that it ran."""

from __future__ import annotations

import gzip
import http.server
import json
import os
import socketserver
import stat
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.io.ytdlp import (
    FetchOptions, YtdlpLog, address_problem, base_params, native_downloader_problem, subtitle_track_problem,
)
from stages.fetch_media import FetchStageOptions, fetch_media, url_id
from support.data import vtt

CUES = [(0.2, 2.2, "And so my fellow Americans,")]
KEY = bytes(range(16))
IV = bytes(15) + b"\x01"
SEGMENTS = [bytes((n * 7 + k) % 251 for k in range(3000)) for n in range(2)]  # plaintext, 3000 bytes each


class Host:
    """One HTTP server on a loopback address: fixed responses by path, every request recorded."""

    def __init__(self, address: str = "127.0.0.1"):
        self.routes: dict[str, object] = {}  # path -> (content type, bytes[, headers]) or a callable(handler)
        self.requests: list[str] = []
        host = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                path = urllib.parse.urlsplit(self.path).path
                host.requests.append(path)
                route = host.routes.get(path)
                if route is None:
                    self.send_error(404)
                elif callable(route):
                    route(self)
                else:
                    content_type, body, *headers = route
                    self.send_response(200)
                    self.send_header("Content-Type", content_type)
                    self.send_header("Content-Length", str(len(body)))
                    for name, value in (headers[0] if headers else {}).items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(body)

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address) -> None:
                pass  # a client that stops reading (a page refused for its size or pace) is expected

        self.server = Server((address, 0), Handler)
        self.base = f"http://{address}:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def url(self, path: str) -> str:
        return f"{self.base}/{path.lstrip('/')}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site():
    host = Host("127.0.0.1")
    yield host
    host.close()


@pytest.fixture
def elsewhere():
    """A host the fetch refuses (127.0.0.2 with only 127.0.0.1 allowed)."""
    host = Host("127.0.0.2")
    yield host
    host.close()


ONLY_SITE = FetchOptions(allowed_networks=("127.0.0.1/32",), allow_loopback=False, retries=1, retry_base_delay_s=0.01)


def run_stage(urls: list[str], root: Path, options: FetchOptions = ONLY_SITE) -> list[dict]:
    batch = pa.Table.from_pylist([{"source_id": url_id(u), "url": u, "url_index": i} for i, u in enumerate(urls)])
    return fetch_media(batch, FetchStageOptions(options, str(root))).to_pylist()


FAKE_FFMPEG = '''#!{python}
"""Answers yt-dlp's version probes like ffmpeg; asked to download, fetches the playlist, key and segments as
ffmpeg would (urllib, no proxy), and records that it ran."""
import re, sys, urllib.parse, urllib.request
args = sys.argv[1:]
if "-i" not in args:
    print("ffmpeg version 6.1.1 Copyright (c) 2000-2023 the FFmpeg developers")
    sys.exit(0)
with open({marker!r}, "a") as out:
    out.write(" ".join(args) + "\\n")
opener = urllib.request.build_opener(urllib.request.ProxyHandler({{}}))
playlist = args[args.index("-i") + 1]
text = opener.open(playlist, timeout=5).read().decode()
for uri in re.findall(r'URI="([^"]+)"', text) + [l for l in text.splitlines() if l and not l.startswith("#")]:
    try:
        opener.open(urllib.parse.urljoin(playlist, uri), timeout=5).read()
    except OSError:
        pass
sys.exit(1)
'''


@pytest.fixture
def fake_ffmpeg(tmp_path, monkeypatch):
    """An ``ffmpeg`` first on PATH (wspsr's own decoding keeps the real one). Yields the file its runs go to."""
    from pipeline.io.media import ffmpeg_binary

    monkeypatch.setenv("WSPSR_FFMPEG", ffmpeg_binary())
    folder = tmp_path / "fake-bin"
    folder.mkdir()
    marker = tmp_path / "ffmpeg-ran.txt"
    program = folder / "ffmpeg"
    program.write_text(FAKE_FFMPEG.format(python=sys.executable, marker=str(marker)))
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
    yield marker


def encrypted(segment: bytes) -> bytes:
    from yt_dlp.aes import aes_cbc_encrypt_bytes

    return aes_cbc_encrypt_bytes(segment, KEY, IV)


def serve_hls_page(site: Host, media_host: Host, method: str = "AES-128") -> None:
    """``talk.html`` on ``site``: an HLS stream (playlist on ``site``) whose key and segments are on ``media_host``,
    plus a human VTT track, so the stage decides to download it."""
    iv = "0x" + IV.hex()
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", "#EXT-X-TARGETDURATION:4", "#EXT-X-MEDIA-SEQUENCE:0",
             "#EXT-X-PLAYLIST-TYPE:VOD",
             f'#EXT-X-KEY:METHOD={method},URI="{media_host.url("key")}",IV={iv}']
    for n in range(len(SEGMENTS)):
        lines += ["#EXTINF:4.0,", media_host.url(f"seg{n}.ts")]
        media_host.routes[f"/seg{n}.ts"] = ("video/mp2t", encrypted(SEGMENTS[n]))
    lines.append("#EXT-X-ENDLIST")
    media_host.routes["/key"] = ("application/octet-stream", KEY)
    site.routes["/stream.m3u8"] = ("application/vnd.apple.mpegurl", ("\n".join(lines) + "\n").encode())
    site.routes["/talk.en.vtt"] = ("text/vtt", vtt(CUES).encode())
    page = '<html><head><title>HLS</title></head><body><video src="stream.m3u8"><track kind="subtitles" srclang="en" ' \
           'src="talk.en.vtt"></video></body></html>'
    site.routes["/talk.html"] = ("text/html", page.encode())


def unguarded_download(url: str, root: Path) -> None:
    """yt-dlp as it comes, without wspsr's guard: the control that shows a stream really goes to ffmpeg."""
    import yt_dlp
    from yt_dlp.postprocessor.ffmpeg import FFmpegPostProcessor

    FFmpegPostProcessor._version_cache.pop("ffmpeg", None)  # found again on this PATH
    params = {"logger": YtdlpLog(), "quiet": True, "outtmpl": str(root / "%(id)s.%(ext)s"), "retries": 0, "proxy": ""}
    with yt_dlp.YoutubeDL(params) as ydl:
        try:
            ydl.download([url])
        except yt_dlp.utils.DownloadError:
            pass


# ------------------------------------------------------------------------------------------ HLS and ffmpeg


@pytest.mark.slow
def test_hls_key_and_segments_on_a_refused_host_are_never_requested(site, elsewhere, fake_ffmpeg, tmp_path):
    serve_hls_page(site, elsewhere)
    unguarded_download(site.url("talk.html"), tmp_path / "control")
    assert fake_ffmpeg.is_file() and "/key" in elsewhere.requests  # unguarded, ffmpeg fetches from 127.0.0.2
    fake_ffmpeg.unlink()
    elsewhere.requests.clear()

    [row] = run_stage([site.url("talk.html")], tmp_path / "out")
    assert row["reject_reason"] == "unsafe_url" and "127.0.0.2" in row["reject_detail"], row["reject_detail"]
    assert elsewhere.requests == []
    assert not fake_ffmpeg.exists()
    assert not list((tmp_path / "out" / "media").rglob("*.*"))


def test_aes128_without_pycryptodomex_is_decrypted_here_not_by_ffmpeg(site, fake_ffmpeg, tmp_path):
    """yt-dlp hands AES-128 streams to ffmpeg when pycryptodomex is missing and ffmpeg is found; the fetch finds
    none, so yt-dlp decrypts in this process, where every key and segment request is checked."""
    from yt_dlp.dependencies import Cryptodome

    serve_hls_page(site, site)
    if not Cryptodome.AES:
        unguarded_download(site.url("talk.html"), tmp_path / "control")
        assert fake_ffmpeg.is_file()
        fake_ffmpeg.unlink()
    site.requests.clear()

    [row] = run_stage([site.url("talk.html")], tmp_path / "out")
    assert row["reject_reason"] is None, row["reject_detail"]
    item = json.loads(row["item"])
    assert (tmp_path / "out" / item["audio"]).read_bytes() == b"".join(SEGMENTS)
    assert {"/key", "/seg0.ts", "/seg1.ts"} <= set(site.requests)
    assert not fake_ffmpeg.exists()


def test_a_stream_only_ffmpeg_can_download_is_refused(site, fake_ffmpeg, tmp_path):
    """SAMPLE-AES: yt-dlp's native downloader delegates it to ffmpeg whatever the options; the fetch refuses."""
    serve_hls_page(site, site, method="SAMPLE-AES")
    [row] = run_stage([site.url("talk.html")], tmp_path / "out")
    assert row["reject_reason"] == "unsafe_url", row["reject_detail"]
    assert "ffmpeg" in row["reject_detail"] and "bypass" in row["reject_detail"]
    assert not fake_ffmpeg.exists()
    assert not {"/key", "/seg0.ts", "/seg1.ts"} & set(site.requests)
    assert not list((tmp_path / "out" / "media").rglob("*.*"))


@pytest.mark.parametrize(
    "fmt, refused",
    [
        ({"url": "https://a.test/x.mp3", "protocol": "https"}, None),
        ({"url": "https://a.test/x.m3u8", "protocol": "m3u8_native"}, None),
        ({"url": "https://a.test/x.m3u8", "protocol": "m3u8"}, None),  # yt-dlp's ffmpeg HLS protocol, told native
        ({"url": "https://a.test/x.m3u8", "protocol": "m3u8_native", "is_live": True}, "ffmpeg"),
        ({"url": "rtmp://a.test/x", "protocol": "rtmp"}, "rtmpdump"),
    ],
)
def test_formats_yt_dlp_would_download_with_another_program(fmt, refused):
    problem = native_downloader_problem({"format_id": "f", **fmt}, base_params(FetchOptions(), YtdlpLog()))
    assert (problem is None) if refused is None else (refused in problem and "not natively" in problem), problem


def test_no_program_starts_while_the_guard_holds(fake_ffmpeg):
    """yt-dlp's Popen is the one way it starts programs; inside the guard it refuses, as a missing program."""
    from yt_dlp.downloader.external import FFmpegFD
    from yt_dlp.utils import Popen, check_executable

    from pipeline.io.ytdlp import ProgramRefused, guarded_connections

    with guarded_connections(FetchOptions()):
        assert not FFmpegFD.available()
        assert check_executable("ffmpeg", ["-version"]) is False
        with pytest.raises(ProgramRefused, match="'ffmpeg'"):
            Popen(["ffmpeg", "-version"])
    assert not fake_ffmpeg.exists()
    assert Popen.run(["ffmpeg", "-version"], stdout=-1)[2] == 0  # outside it, yt-dlp is itself again


# ------------------------------------------------------------------------------------------ subtitles


@pytest.mark.parametrize(
    "track, problem",
    [
        ({"ext": "vtt", "url": "https://a.test/en.vtt"}, None),
        ({"ext": "srt", "url": "https://a.test/en.srt", "protocol": "https"}, None),
        ({"ext": "vtt", "url": "https://a.test/subs/en.m3u8", "protocol": "m3u8_native"}, "playlist"),
        ({"ext": "vtt", "url": "https://a.test/subs/en", "protocol": "m3u8"}, "playlist"),
        ({"ext": "vtt", "url": "https://a.test/subs/en.m3u8?x=.vtt"}, "playlist"),
        ({"ext": "vtt", "url": "https://a.test/manifest.mpd"}, "playlist"),
        ({"ext": "vtt", "url": "https://a.test/en.vtt", "protocol": "http_dash_segments"}, "playlist"),
        ({"ext": "ttml", "url": "https://a.test/en.ttml"}, "format"),
        ({"ext": "vtt", "url": "file:///etc/passwd"}, "scheme file:"),
    ],
)
def test_subtitle_tracks_are_single_files(track, problem):
    found = subtitle_track_problem(track)
    assert (found is None) if problem is None else (problem in found), found


def test_a_subtitle_track_that_is_a_playlist_is_refused(site, fake_ffmpeg, tmp_path):
    """An HLS master playlist with a WebVTT rendition: yt-dlp lists it as a ``vtt`` track with an HLS protocol."""
    site.routes["/master.m3u8"] = ("application/vnd.apple.mpegurl", (
        '#EXTM3U\n#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID="subs",NAME="English",LANGUAGE="en",URI="subs/en.m3u8"\n'
        '#EXT-X-STREAM-INF:BANDWIDTH=64000,CODECS="mp4a.40.2",SUBTITLES="subs"\nmedia.m3u8\n').encode())
    site.routes["/media.m3u8"] = ("application/vnd.apple.mpegurl",
                                  b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4.0,\nseg0.ts\n#EXT-X-ENDLIST\n")
    site.routes["/subs/en.m3u8"] = ("application/vnd.apple.mpegurl",
                                    b"#EXTM3U\n#EXT-X-TARGETDURATION:4\n#EXTINF:4.0,\nen0.vtt\n#EXT-X-ENDLIST\n")
    site.routes["/subs/en0.vtt"] = ("text/vtt", vtt(CUES).encode())
    [row] = run_stage([site.url("master.m3u8")], tmp_path / "out")
    assert row["reject_reason"] == "missing_transcript"
    assert "human subtitles only in en, none usable" in row["reject_detail"] and "not a playlist" in row["reject_detail"]
    assert not {"/subs/en.m3u8", "/subs/en0.vtt", "/seg0.ts"} & set(site.requests), site.requests
    assert not fake_ffmpeg.exists()


# ------------------------------------------------------------------------------------------ addresses


@pytest.mark.parametrize(
    "address, kind",
    [
        ("100.64.0.1", "carrier-grade NAT / shared address space"),
        ("100.100.100.200", "carrier-grade NAT / shared address space"),  # a cloud metadata service
        ("10.0.0.1", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"), ("127.0.0.1", "loopback"), ("::1", "loopback"),
        ("fc00::1", "private"), ("fe80::1", "link-local"), ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"),
        ("192.0.2.1", "documentation (TEST-NET)"), ("2001:db8::1", "documentation (TEST-NET)"),
        # IPv4 inside IPv6: mapped, NAT64, 6to4
        ("::ffff:10.0.0.1", "private"), ("64:ff9b::a00:1", "private"), ("2002:a00:1::1", "private"),
        ("198.18.0.1", "benchmarking"), ("240.0.0.1", "reserved"), ("ff0e::1", "multicast"),
        ("8.8.8.8", None), ("2001:4860:4860::8888", None), ("64:ff9b::808:808", None), ("::ffff:8.8.8.8", None),
    ],
)
def test_only_globally_routable_addresses_pass(address, kind):
    assert address_problem(address, FetchOptions()) == kind


def test_allowed_networks_and_loopback_override_the_rule():
    cgnat = FetchOptions(allowed_networks=("100.64.0.0/10", "fd00::/8"))
    assert address_problem("100.100.100.200", cgnat) is None and address_problem("fd12::1", cgnat) is None
    assert address_problem("100.128.0.1", cgnat) is None  # outside 100.64/10: public
    assert address_problem("10.0.0.1", cgnat) == "private"
    assert address_problem("::ffff:10.8.0.1", FetchOptions(allowed_networks=("10.8.0.0/16",))) is None
    assert address_problem("127.0.0.2", FetchOptions(allow_loopback=True)) is None
    assert address_problem("127.0.0.2", FetchOptions(allowed_networks=("127.0.0.1/32",))) == "loopback"


# ------------------------------------------------------------------------------------------ page limits


def _trickle(handler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "text/html")
    handler.send_header("Content-Length", "100000")
    handler.end_headers()
    handler.wfile.write(b"<html><body>")
    for _ in range(100):  # 10 bytes every 50 ms: never a stall long enough for the socket timeout
        time.sleep(0.05)
        handler.wfile.write(b"slow text ")
        handler.wfile.flush()


@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_a_page_over_the_size_limit_is_refused(site, tmp_path, encoding):
    body = b"<html><body>" + b"<p>filler text</p>" * 20000 + b"</body></html>"  # 360 kB
    headers = {"Content-Encoding": "gzip"} if encoding else {}
    site.routes["/huge.html"] = ("text/html", gzip.compress(body) if encoding else body, headers)
    [row] = run_stage([site.url("huge.html")], tmp_path / "out", FetchOptions(allow_loopback=True, max_page_mb=0.1))
    assert row["reject_reason"] == "fetch_failed", row["reject_detail"]
    assert row["reject_detail"] == f"{site.url('huge.html')} is larger than fetch.max_page_mb (0.1 MB)"
    assert site.requests == ["/huge.html"]  # not retried


def test_a_page_that_trickles_past_the_time_limit_is_refused(site, tmp_path):
    site.routes["/slow.html"] = _trickle
    started = time.monotonic()
    options = FetchOptions(allow_loopback=True, max_page_s=0.5, socket_timeout_s=5)
    [row] = run_stage([site.url("slow.html")], tmp_path / "out", options)
    assert time.monotonic() - started < 2.5
    assert row["reject_reason"] == "fetch_failed", row["reject_detail"]
    assert row["reject_detail"] == f"reading {site.url('slow.html')} took longer than fetch.max_page_s (0.5 s)"


def test_page_limits_are_validated():
    with pytest.raises(ValueError, match="max_page_mb"):
        FetchOptions(max_page_mb=0)
    with pytest.raises(ValueError, match="max_page_s"):
        FetchOptions(max_page_s=-1)


# ------------------------------------------------------------------------------------------ proxies


class ProxyRecorder(socketserver.ThreadingTCPServer):
    """Takes connections meant for a proxy and records them (answers nothing)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        self.connections = 0

        class Handler(socketserver.BaseRequestHandler):
            def handle(inner) -> None:
                self.connections += 1

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()


def test_proxies_from_the_environment_are_not_used(site, monkeypatch, tmp_path):
    site.routes["/talk.vtt"] = ("text/vtt", vtt(CUES).encode())
    site.routes["/talk.mp3"] = ("audio/mpeg", bytes(4000))
    page = b'<video src="talk.mp3"><track kind="subtitles" srclang="en" src="talk.vtt"></video>'
    site.routes["/talk.html"] = ("text/html", page)
    proxy = ProxyRecorder()
    try:
        address = f"http://127.0.0.1:{proxy.server_address[1]}"
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.setenv(name, address)
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        import yt_dlp

        with yt_dlp.YoutubeDL({"logger": YtdlpLog(), "quiet": True, "socket_timeout": 1, "retries": 0}) as ydl:
            with pytest.raises(yt_dlp.utils.DownloadError):  # the control: yt-dlp alone goes through the proxy
                ydl.extract_info(site.url("talk.html"), download=False)
        assert proxy.connections >= 1
        proxy.connections = 0

        [row] = run_stage([site.url("talk.html")], tmp_path / "out", FetchOptions(allow_loopback=True))
        assert row["reject_reason"] is None, row["reject_detail"]
        assert proxy.connections == 0 and {"/talk.html", "/talk.mp3", "/talk.vtt"} <= set(site.requests)
    finally:
        proxy.shutdown()
        proxy.server_close()
