"""wspsr fetch against a loopback HTTP server started here: yt-dlp's generic extractor reads HTML5 ``<video>``/
``<audio>`` with ``<track kind="subtitles">``, so the real extraction and download paths run, subtitles included."""

from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import threading
import urllib.parse
from pathlib import Path

import pyarrow as pa
import pytest

from support.data import vtt
from pipeline.schema import RejectReason
from stages.fetch_media import FetchOptions, FetchStageOptions, check_url, classify, fetch_media, safe_component, url_id
from support.output import committed_rows

SAMPLE = Path(__file__).resolve().parent.parent / "sample" / "sources" / "en"
JFK_CUES = [(0.2, 2.2, "And so my fellow Americans,"), (3.1, 10.7, "ask not what your country can do for you, ask what you can do for your country.")]
FAST = FetchOptions(allow_loopback=True, retry_base_delay_s=0.01, retry_max_delay_s=0.05)  # the test sites are on loopback
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$")


class Site:
    """Static files plus a request log and scripted failures (503) for the first requests."""

    def __init__(self, root: Path):
        self.root = root
        self.requests: list[str] = []
        self.fail_first = 0  # the next N requests, whatever their path, get 503
        self.fail_paths: dict[str, int] = {}  # path -> the next N requests of it get 503
        self.lock = threading.Lock()
        handler = functools.partial(_Handler, self, directory=str(root))
        self.server = _Server(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.server_port}/"

    def url(self, path: str) -> str:
        return self.base + path

    def media_requests(self) -> list[str]:
        return [r for r in self.requests if r.endswith((".opus", ".mp3", ".vtt"))]

    def should_fail(self, path: str) -> bool:
        with self.lock:
            self.requests.append(path)
            if self.fail_first > 0:
                self.fail_first -= 1
                return True
            if self.fail_paths.get(path, 0) > 0:
                self.fail_paths[path] -= 1
                return True
        return False


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        pass  # a client that stops reading (a download refused for its size) is expected here


class _Handler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, site: Site, *args, **kwargs):
        self.site = site
        super().__init__(*args, **kwargs)

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if self.site.should_fail(path):
            self.send_error(503, "Service Unavailable")
            return
        if path.startswith("/redirect/"):  # /redirect/HOST/PATH: 302 to http://HOST:<this port>/PATH
            host, _, rest = path.removeprefix("/redirect/").partition("/")
            self.send_response(302)
            self.send_header("Location", f"http://{host}:{self.server.server_port}/{rest}")
            self.end_headers()
            return
        if path.startswith("/stream/"):  # no Content-Length: the size limit must hold while bytes arrive
            data = (self.site.root / path.removeprefix("/stream/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "audio/ogg")
            self.end_headers()
            self.wfile.write(data)
            return
        super().do_GET()


def page(title: str, *media: str) -> str:
    return f"<!DOCTYPE html><html><head><title>{title}</title></head><body>{''.join(media)}</body></html>"


def video(src: str, track: str | None = None, lang: str = "en", kind: str = "subtitles") -> str:
    inner = f'<track kind="{kind}" srclang="{lang}" src="{track}">' if track else ""
    return f'<video src="{src}" controls>{inner}</video>'


def build_site(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(SAMPLE / "jfk.opus", root / "jfk.opus")
    (root / "jfk.en.vtt").write_text(vtt(JFK_CUES))
    shutil.copy(SAMPLE / "en_mp3_vtt.mp3", root / "book.mp3")
    shutil.copy(SAMPLE / "en_mp3_vtt.en.vtt", root / "book.en.vtt")
    (root / "big.opus").write_bytes(bytes(range(256)) * 8192)  # 2 MB
    (root / "talk.html").write_text(page("JFK ../../etc/passwd \x07 inaugural", video("jfk.opus", "jfk.en.vtt")))
    (root / "two.html").write_text(page("Two", video("book.mp3", "book.en.vtt"), video("jfk.opus")))
    (root / "auto").mkdir()
    (root / "auto" / "talk.html").write_text(page("Auto", video("../jfk.opus", "../jfk.en.vtt")))
    (root / "nomedia.html").write_text(page("Nothing here", "<p>No media on this page.</p>"))
    (root / "big.en.vtt").write_text(vtt(JFK_CUES))
    (root / "big.html").write_text(page("Big", video("big.opus", "big.en.vtt")))
    (root / "streambig.html").write_text(page("Big, streamed", video("stream/big.opus", "big.en.vtt")))
    (root / "evil name.html").write_text(page("<script>", video("/jfk.opus", "/jfk.en.vtt")))
    # media behind a redirect to another loopback address (not the site's own 127.0.0.1)
    (root / "rebound.html").write_text(page("Rebound", video("/redirect/127.0.0.2/jfk.opus", "jfk.en.vtt")))


@pytest.fixture
def site(tmp_path):
    build_site(tmp_path / "site")
    served = Site(tmp_path / "site")
    yield served
    served.server.shutdown()
    served.server.server_close()


@pytest.fixture
def automatic_tracks(monkeypatch):
    """Pages under /auto/ mark their tracks as automatic captions: what a site like YouTube reports as
    ``automatic_captions`` (the generic extractor itself only knows human ``subtitles``)."""
    from yt_dlp.extractor.genericembeds import HTML5MediaEmbedIE

    original = HTML5MediaEmbedIE._extract_from_webpage

    def extract(self, url, webpage):
        for entry in original(self, url, webpage):
            if "/auto/" in url:
                entry["automatic_captions"] = entry.pop("subtitles", {})
            yield entry

    monkeypatch.setattr(HTML5MediaEmbedIE, "_extract_from_webpage", extract)


def run_stage(urls: list[str], root: Path, options: FetchOptions = FAST) -> list[dict]:
    batch = pa.Table.from_pylist([{"source_id": url_id(u), "url": u, "url_index": i} for i, u in enumerate(urls)])
    return fetch_media(batch, FetchStageOptions(options, str(root))).to_pylist()


def files_under(root: Path) -> list[str]:
    """Files under ``root`` but for .locks/ (one empty lock file per item)."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and not p.relative_to(root).as_posix().startswith("."))


# ------------------------------------------------------------------------------------------ the stage, in process


def test_page_with_human_subtitles_becomes_an_item(site, tmp_path):
    root = tmp_path / "out"
    [row] = run_stage([site.url("talk.html")], root)
    assert row["reject_reason"] is None, row["reject_detail"]
    item = json.loads(row["item"])
    assert row["source_id"] == item["item_id"] and item["item_id"].startswith("html5.talk-1-")
    assert item["extractor"] == "html5" and item["video_id"] == "talk-1" and item["labelled"]
    assert item["title"] == "JFK ../../etc/passwd \x07 inaugural (1)"  # kept as data, never as a name
    assert item["audio"] == f"media/html5/{item['item_id'].split('.', 1)[1]}.opus"
    assert item["subtitles"] == [{"language": "en", "path": item["audio"].replace(".opus", ".en.vtt"), "format": "vtt"}]
    assert item["duration_s"] == pytest.approx(11.0, abs=0.1)  # the site gave none: measured by decoding
    assert (root / item["audio"]).read_bytes() == (site.root / "jfk.opus").read_bytes()
    assert (root / item["subtitles"][0]["path"]).read_text() == (site.root / "jfk.en.vtt").read_text()
    assert files_under(root) == sorted(["archive.txt", item["audio"], item["subtitles"][0]["path"]])


def test_only_automatic_captions_are_rejected_as_machine_generated(site, tmp_path, automatic_tracks):
    root = tmp_path / "out"
    [row] = run_stage([site.url("auto/talk.html")], root)
    assert row["reject_reason"] == RejectReason.MACHINE_GENERATED_CAPTIONS.value
    assert "only automatic captions (en)" in row["reject_detail"]
    assert row["item"] is None and not (root / "media" / "html5").exists()
    assert site.media_requests() == []  # neither the captions nor the audio were downloaded
    # optionally the audio is kept, unlabelled, for wspsr transcribe; the captions still are not
    [row] = run_stage([site.url("auto/talk.html")], root, FetchOptions(allow_loopback=True, retry_base_delay_s=0.01, keep_unlabelled=True))
    assert row["reject_reason"] == RejectReason.MACHINE_GENERATED_CAPTIONS.value and "unlabelled" in row["reject_detail"]
    item = json.loads(row["item"])
    assert not item["labelled"] and item["subtitles"] == [] and item["automatic_caption_languages"] == ["en"]
    assert [p for p in files_under(root) if p.startswith("media/")] == [item["audio"]]
    assert not any(r.endswith(".vtt") for r in site.requests)


@pytest.mark.parametrize(
    "info, reason, detail",
    [
        ({"subtitles": {"en": [{"ext": "vtt", "url": "https://x/a.vtt"}]}}, None, ""),
        ({"automatic_captions": {"en": [{"ext": "vtt", "url": "https://x/a.vtt"}]}}, RejectReason.MACHINE_GENERATED_CAPTIONS, "only automatic captions (en)"),
        ({"subtitles": {"de": [{"ext": "vtt", "url": "https://x/a.vtt"}]}, "automatic_captions": {"en": [{"ext": "vtt", "url": "https://x/b.vtt"}]}},
         RejectReason.MACHINE_GENERATED_CAPTIONS, "human subtitles only in de"),
        ({"subtitles": {"en": [{"ext": "ttml", "url": "https://x/a.ttml"}]}}, RejectReason.MISSING_TRANSCRIPT, "none usable"),
        ({"subtitles": {"en-../../x": [{"ext": "vtt", "url": "https://x/a.vtt"}]}}, RejectReason.MISSING_TRANSCRIPT, "none usable"),
        ({"subtitles": {"en": [{"ext": "vtt", "url": "file:///etc/passwd"}]}}, RejectReason.MISSING_TRANSCRIPT, "none usable"),
        ({}, RejectReason.MISSING_TRANSCRIPT, "no subtitles"),
        ({"is_live": True, "subtitles": {"en": [{"ext": "vtt", "url": "https://x/a.vtt"}]}}, RejectReason.LIVE_STREAM, "live"),
        ({"live_status": "is_upcoming"}, RejectReason.LIVE_STREAM, "is_upcoming"),
        ({"duration": 7201}, RejectReason.AUDIO_TOO_LONG, "7201 s > limit of 7200 s"),
        ({"filesize": 2 * 2**30}, RejectReason.FILE_TOO_LARGE, "limit of 1024 MB"),
    ],
)
def test_classify_info_dicts(info, reason, detail):
    verdict = classify({"id": "x", **info}, FetchOptions(sub_langs=("en",)))
    assert verdict.reason == reason and detail in verdict.detail


def test_sub_langs_choose_human_tracks():
    info = {"subtitles": {lang: [{"ext": "vtt", "url": f"https://x/{lang}.vtt"}] for lang in ("en-US", "de", "fr")}}
    assert classify(info, FetchOptions(sub_langs=("en", "de"))).languages == ("de", "en-US")
    assert classify(info, FetchOptions()).languages == ("de", "en-US", "fr")


@pytest.mark.parametrize(
    "url, refused",
    [
        ("https://example.org/v?id=1", None),
        ("http://127.0.0.1:8000/talk.html", None),
        ("file:///etc/passwd", "scheme file:"),
        ("ftp://example.org/a.mp3", "scheme ftp:"),
        ("javascript:alert(1)", "scheme javascript:"),
        ("example.org/talk", "scheme (none)"),
        ("https://user:pw@example.org/", "credentials"),
        ("https://example.org/a b", "whitespace"),
        ("https:///nohost", "no host"),
    ],
)
def test_only_http_and_https_urls_are_fetched(url, refused):
    problem = check_url(url)
    assert (problem is None) if refused is None else (refused in problem)


def test_failures_become_reject_rows_and_the_batch_goes_on(site, tmp_path):
    urls = [site.url("missing.html"), site.url("nomedia.html"), site.url("big.html"), "file:///etc/passwd", site.url("talk.html")]
    rows = run_stage(urls, tmp_path / "out", FetchOptions(allow_loopback=True, retry_base_delay_s=0.01, max_filesize_mb=1))
    outcome = {row["url"]: (row["reject_reason"], row["reject_detail"]) for row in rows}
    assert outcome[urls[0]][0] == "fetch_failed" and "HTTP Error 404" in outcome[urls[0]][1]
    assert outcome[urls[1]] == ("no_media", f"Unsupported URL: {urls[1]}")
    assert outcome[urls[2]][0] == "file_too_large" and "larger than max-filesize" in outcome[urls[2]][1]
    assert outcome[urls[3]] == ("unsafe_url", "scheme file: not allowed (http and https only)")
    assert outcome[urls[4]] == (None, None)
    assert not any("passwd" in r for r in site.requests)
    assert [r["source_id"] for r in rows if r["item_index"] is None] == [url_id(u) for u in (urls[0], urls[1], urls[3])]  # the URL's id
    assert rows[2]["source_id"].startswith("html5.big-1-")  # big.html did name an item: the item is rejected
    leftovers = [p for p in files_under(tmp_path / "out") if "big" in p or p.endswith(".part")]
    assert leftovers == []


def test_size_limit_holds_without_content_length(site, tmp_path):
    [row] = run_stage([site.url("streambig.html")], tmp_path / "out", FetchOptions(allow_loopback=True, retry_base_delay_s=0.01, max_filesize_mb=1))
    assert row["reject_reason"] == "file_too_large" and "received" in row["reject_detail"]
    assert [p for p in files_under(tmp_path / "out") if p.startswith("media/")] == []


def test_max_duration_is_enforced_when_the_site_gives_none(site, tmp_path):
    [row] = run_stage([site.url("talk.html")], tmp_path / "out", FetchOptions(allow_loopback=True, retry_base_delay_s=0.01, max_duration_s=5))
    assert row["reject_reason"] == "audio_too_long"
    assert [p for p in files_under(tmp_path / "out") if p.startswith("media/")] == []


def test_a_server_failing_the_first_two_requests_succeeds_on_retry(site, tmp_path):
    site.fail_first = 2  # the page itself: retried here, with backoff
    [row] = run_stage([site.url("talk.html")], tmp_path / "a")
    assert row["reject_reason"] is None, row["reject_detail"]
    assert site.requests[:3] == ["/talk.html"] * 3
    site.requests.clear()
    site.fail_paths["/jfk.opus"] = 2  # the media download: retried by yt-dlp, with the same backoff
    [row] = run_stage([site.url("talk.html")], tmp_path / "b")
    assert row["reject_reason"] is None, row["reject_detail"]
    assert site.requests.count("/jfk.opus") == 3
    assert (tmp_path / "b" / json.loads(row["item"])["audio"]).stat().st_size == (site.root / "jfk.opus").stat().st_size
    site.fail_paths["/jfk.opus"] = 10  # more failures than retries: a reject with yt-dlp's message
    shutil.rmtree(tmp_path / "b")
    [row] = run_stage([site.url("talk.html")], tmp_path / "b", FetchOptions(allow_loopback=True, retries=1, retry_base_delay_s=0.01))
    assert row["reject_reason"] == "fetch_failed" and "503" in row["reject_detail"]


def test_rerun_downloads_nothing_new(site, tmp_path):
    root = tmp_path / "out"
    first = run_stage([site.url("talk.html"), site.url("two.html")], root)
    assert len(site.media_requests()) == 4  # jfk.opus + vtt, book.mp3 + vtt (the second video has no track)
    site.requests.clear()
    again = run_stage([site.url("talk.html"), site.url("two.html")], root)
    assert site.media_requests() == []  # the download archive: only the pages were read again
    strip = lambda rows: [dict(r, item=r["item"] and dict(json.loads(r["item"]), downloaded=None)) for r in rows]  # noqa: E731
    assert strip(again) == strip(first)
    assert [json.loads(r["item"])["downloaded"] for r in again if r["item"]] == [False, False]
    # files gone but still archived: fetched again rather than trusted
    item = json.loads(first[0]["item"])
    (root / item["audio"]).unlink()
    run_stage([site.url("talk.html")], root)
    assert (root / item["audio"]).is_file() and "/jfk.opus" in site.requests
    assert len((root / "archive.txt").read_text().splitlines()) == 2


def test_playlist_pages_expand_to_items(site, tmp_path):
    rows = run_stage([site.url("two.html")], tmp_path / "out")
    assert [(r["item_index"], r["reject_reason"]) for r in rows] == [(0, None), (1, "missing_transcript")]
    assert [r["source_id"].split(".", 1)[1].rsplit("-", 1)[0] for r in rows] == ["two-1", "two-2"]
    assert len({r["source_id"] for r in rows}) == 2 and {r["url_id"] for r in rows} == {url_id(site.url("two.html"))}


def test_names_come_from_ids_only(site, tmp_path):
    root = tmp_path / "out"
    evil = site.url("weird/%2E%2E%2Fevil%20name.html")  # yt-dlp's generic id: "../evil name"
    [row] = run_stage([evil], root)
    assert row["reject_reason"] is None, row["reject_detail"]
    for path in files_under(root):
        assert path == "archive.txt" or (path.startswith("media/html5/") and SAFE_NAME.match(path.rsplit("/", 1)[1])), path
    assert safe_component("../evil name-1").startswith("evil_name-1-")
    assert safe_component("abc-DEF_1") == "abc-DEF_1"


# ------------------------------------------------------------------------------------------ the job's parts, no Ray


def test_url_lists(tmp_path):
    from jobs.fetch import read_urls, url_rows

    listing = tmp_path / "urls.txt"
    listing.write_text("\ufeff# comment\nhttp://a.test/x\n\n  file:///etc/passwd  \nhttp://a.test/x\n")
    urls = read_urls([str(listing), "https://b.test/y"])
    assert urls == [
        ("http://a.test/x", f"{listing}:2"), ("file:///etc/passwd", f"{listing}:4"), ("http://a.test/x", f"{listing}:5"), ("https://b.test/y", "argument"),
    ]
    rows, rejects = url_rows(urls)
    assert [(r["url"], r["url_index"]) for r in rows] == [("http://a.test/x", 0), ("https://b.test/y", 3)]
    assert [(r["reason"], r["stage"]) for r in rejects] == [("unsafe_url", "read_urls"), ("duplicate_source", "read_urls")]
    assert f"same URL as {listing}:2" in rejects[1]["detail"] and len({r["source_id"] for r in rows + rejects}) == 4
    with pytest.raises(FileNotFoundError):
        read_urls([str(tmp_path / "missing.txt")])


def _item(item_id: str, labelled: bool = True) -> str:
    stem = item_id.split(".", 1)[1]
    return json.dumps({
        "item_id": item_id, "extractor": "html5", "extractor_key": "HTML5MediaEmbed", "video_id": stem, "title": "T", "uploader": None,
        "channel": None, "license": None, "webpage_url": "http://a.test/p", "duration_s": 2.0, "audio": f"media/html5/{stem}.opus",
        "audio_bytes": 10, "subtitles": [{"language": "en-US", "path": f"media/html5/{stem}.en-US.vtt", "format": "vtt"}] if labelled else [],
        "automatic_caption_languages": [] if labelled else ["en"], "labelled": labelled, "downloaded": True,
    })


def test_sink_accounting_manifest_and_retry_failed(tmp_path):
    from jobs.fetch import forget_failed_fetches
    from pipeline.io.commit import OutputDir, OutputOptions
    from pipeline.sinks.fetch import FETCH_TABLES, commit_fetch_batch, committed_items, manifest_lines, summarize_fetch
    from pipeline.schema import table_from_rows
    from stages.fetch_media import manifest_language

    out = OutputDir(tmp_path / "out", FETCH_TABLES, "fp")
    urls = [{"source_id": f"url-{k}", "source": f"http://{k}.test/", "url": f"http://{k}.test/", "url_index": i} for i, k in enumerate("ab")]
    refused = [{"source_id": "url-c", "source": "file:///x", "scope": "source", "stage": "read_urls", "reason": "unsafe_url", "detail": "scheme file:"}]
    keys, todo = out.start(urls, refused, {"job": "fetch"}, False, OutputOptions())
    expected = {"url-a", "url-b", "url-c"}
    assert len(keys) == 3 and len(todo) == 2
    base = {"reject_stage": None, "reject_reason": None, "reject_detail": None, "duration_ms": 2000}
    failed = {**base, "source_id": "url-a", "url_id": "url-a", "url": "http://a.test/", "url_index": 0, "source": "http://a.test/",
              "item_index": None, "item": None, "reject_stage": "fetch_media", "reject_reason": "fetch_failed", "reject_detail": "HTTP Error 404"}
    playlist = [
        {**base, "source_id": f"html5.p-{n}", "url_id": "url-b", "url": "http://b.test/", "url_index": 1, "source": "http://b.test/",
         "item_index": n - 1, "item": _item(f"html5.p-{n}", labelled=n == 1)}
        for n in (1, 2)
    ]
    playlist[1].update(reject_stage="fetch_media", reject_reason="machine_generated_captions", reject_detail="only automatic captions (en)")
    commit_fetch_batch(table_from_rows([failed]), out, OutputOptions())
    commit_fetch_batch(table_from_rows(playlist), out, OutputOptions())
    summary = summarize_fetch(out, expected, {})
    assert summary["accounting"]["ok"], summary["accounting"]
    assert summary["urls"] == {"in": 3, "expanded": 1, "rejected": 2, "rejected_by_reason": {"fetch_failed": 1, "unsafe_url": 1}}
    assert summary["items"] == {"in": 2, "kept": 1, "rejected": 1, "rejected_by_reason": {"machine_generated_captions": 1}, "unlabelled_audio": 1}
    assert summary["inputs"] == {"in": 4, "kept": 1, "rejected": 3,
                                 "rejected_by_reason": {"fetch_failed": 1, "machine_generated_captions": 1, "unsafe_url": 1}}
    lines, unlabelled = manifest_lines(committed_items(out), manifest_language)
    assert [(line["id"], line["language"], line["subtitle_language"]) for line in lines] == [("html5.p-1.en-US", "en-us", "en-US")]
    assert [u["id"] for u in unlabelled] == ["html5.p-2"] and "transcript" not in unlabelled[0]
    # --retry-failed: the shard with the failed fetch is taken back (marker, then its files), the others stay
    assert forget_failed_fetches(out) == 1
    keys, todo = out.start(urls, refused, {"job": "fetch"}, False, OutputOptions())
    assert [r["source_id"] for r in todo] == ["url-a"] and len(out.committed_keys()) == 2
    assert len(list((out.root / "rejects").glob("*.parquet"))) == 2
    assert forget_failed_fetches(OutputDir(tmp_path / "out", FETCH_TABLES, "other")) == 0  # another config's folder: untouched


# ------------------------------------------------------------------------------------------ the job, on Ray


@pytest.fixture(scope="module")
def fetched(tmp_path_factory, local_ray):
    """The fetch job over a URL file with good, failing and unsafe lines."""
    tmp = tmp_path_factory.mktemp("fetch")
    build_site(tmp / "site")
    served = Site(tmp / "site")
    from jobs.fetch import run

    urls = [
        served.url("talk.html"), "# a comment", "", served.url("two.html"), served.url("missing.html"), served.url("nomedia.html"),
        served.url("big.html"), "file:///etc/passwd", served.url("talk.html"), "ftp://127.0.0.1/a.mp3",
    ]
    (tmp / "urls.txt").write_text("\n".join(urls) + "\n")
    out = tmp / "out"
    argv = ["--urls", str(tmp / "urls.txt"), "--out", str(out), "--max-filesize", "1", "--sub-langs", "en", "--quiet",
            "--set", "fetch.retry_base_delay_s=0.01", "--set", "fetch.allow_loopback=true"]
    summary = run(argv)
    yield {"out": out, "summary": summary, "site": served, "argv": argv, "run": run, "urls": tmp / "urls.txt"}
    served.server.shutdown()
    served.server.server_close()


@pytest.mark.slow
def test_fetch_job_writes_a_corpus_manifest(fetched):
    out, summary = fetched["out"], fetched["summary"]
    lines = [json.loads(line) for line in (out / "sources.jsonl").read_text().splitlines()]
    assert [line["title"] for line in lines] == ["JFK ../../etc/passwd \x07 inaugural (1)", "Two (1)"]
    first = lines[0]
    assert list(first)[:6] == ["id", "audio", "transcript", "language", "transcript_origin", "subtitle_language"]
    assert first["language"] == "en" and first["transcript_origin"] == "subtitles" and first["subtitle_language"] == "en"
    assert first["url"] == fetched["site"].url("talk.html") and first["extractor"] == "html5" and first["video_id"] == "talk-1"
    assert first["id"] == f"{first['audio'].split('/')[1]}.{first['audio'].split('/')[2].rsplit('.', 1)[0]}.en"
    assert {"uploader", "channel", "duration", "license", "webpage_url"} <= set(first) and first["duration"] == pytest.approx(11.0, abs=0.1)
    assert lines[1]["playlist_title"] == "Two" and lines[1]["playlist_index"] == 1
    for line in lines:
        assert (out / line["audio"]).is_file() and (out / line["transcript"]).is_file()
    # wspsr corpus reads it as it is
    from pipeline.io.sources import discover_sources

    found = discover_sources([str(out / "sources.jsonl")])
    assert found.rejects == [] and sorted(s["source_id"] for s in found.sources) == sorted(line["id"] for line in lines)
    assert all(s["transcript_origin"] == "subtitles" and json.loads(s["metadata"])["url"] for s in found.sources)
    assert summary["manifest"]["lines"] == 2 and summary["accounting"]["ok"]


@pytest.mark.slow
def test_fetch_job_accounts_for_every_url(fetched):
    out, summary = fetched["out"], fetched["summary"]
    assert summary["urls"] == {
        "in": 8, "expanded": 3, "rejected": 5,
        "rejected_by_reason": {"duplicate_source": 1, "fetch_failed": 1, "no_media": 1, "unsafe_url": 2},
    }
    # big.html names one item, refused at download time: its URL is expanded, its item rejected
    assert summary["items"] == {
        "in": 4, "kept": 2, "rejected": 2, "rejected_by_reason": {"file_too_large": 1, "missing_transcript": 1}, "unlabelled_audio": 0,
    }
    assert summary["inputs"]["in"] == summary["inputs"]["kept"] + summary["inputs"]["rejected"]
    rejects = committed_rows(out, "rejects")
    by_reason = {r["reason"]: r for r in rejects}
    assert "HTTP Error 404" in by_reason["fetch_failed"]["detail"] and by_reason["fetch_failed"]["stage"] == "fetch_media"
    assert by_reason["duplicate_source"]["stage"] == "read_urls" and "same URL as" in by_reason["duplicate_source"]["detail"]
    assert len(rejects) == 7 and json.loads((out / "summary.json").read_text()) == summary


@pytest.mark.slow
def test_fetch_job_rerun_downloads_nothing(fetched):
    out, site = fetched["out"], fetched["site"]
    manifest = (out / "sources.jsonl").read_bytes()
    before = list(site.requests)
    summary = fetched["run"](fetched["argv"])
    assert site.requests == before  # nothing fetched, not even a page
    assert (out / "sources.jsonl").read_bytes() == manifest
    assert summary["this_run"]["urls_fetched"] == 0 and summary["urls"] == fetched["summary"]["urls"]
    # the shards lost (a crash before commit): pages are read again, media comes from the archive
    for marker in (out / "_commits").glob("*.json"):
        if "urls" in json.loads(marker.read_text())["sources"]:
            marker.unlink()
    summary = fetched["run"](fetched["argv"])
    new = site.requests[len(before):]
    assert new and not any(r.endswith((".opus", ".mp3", ".vtt")) for r in new if "big" not in r)
    assert (out / "sources.jsonl").read_bytes() == manifest and summary["downloads"]["from_archive"] == 2


@pytest.mark.slow
def test_corpus_from_urls_in_one_command(fetched, tmp_path):
    """``wspsr corpus --sources urls.txt``: fetched into OUT/fetched first (filters off here: only the plumbing)."""
    from jobs.corpus import run

    out = tmp_path / "corpus"
    off = ["--set", "machine_generated.enabled=false", "--set", "dedup.enabled=false", "--set", "language.enabled=false"]
    summary = run(["--sources", str(fetched["urls"]), "--out", str(out), "--quiet", *off, "--set", "fetch.allow_loopback=true"])
    assert (out / "fetched" / "sources.jsonl").is_file() and summary["accounting"]["ok"]
    # without --max-filesize, big.html's random bytes are fetched too: the corpus judges them (bad_audio)
    assert summary["inputs"]["in"] == 3 and summary["inputs"]["kept"] == 2
    assert summary["inputs"]["rejected_by_reason"] == {"bad_audio": 1}


@pytest.mark.slow
def test_a_fetched_page_ends_as_a_corpus_source(fetched, tmp_path):
    """Every filter on, Whisper base language ID included: the fetched items are kept as training windows."""
    from jobs.corpus import run

    out = tmp_path / "corpus"
    summary = run(["--sources", str(fetched["out"] / "sources.jsonl"), "--out", str(out), "--quiet"])
    assert summary["accounting"]["ok"] and summary["inputs"]["in"] == 2 and summary["inputs"]["kept"] == 2, summary["inputs"]
    rows = committed_rows(out, "corpus")
    [jfk] = [r for r in rows if "ask not what your country" in r["text"]]
    assert jfk["language"] == "en" and jfk["task"] == "transcribe" and jfk["text"].startswith("And so my fellow Americans,")
    metadata = json.loads(jfk["metadata"])
    assert metadata["url"] == fetched["site"].url("talk.html") and metadata["extractor"] == "html5" and metadata["subtitle_language"] == "en"


@pytest.mark.parametrize(
    "address, problem",
    [
        ("93.184.216.34", None), ("2606:4700::1111", None),
        ("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.1.2.3", "private"), ("192.168.0.10", "private"),
        ("172.16.5.4", "private"), ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
        ("224.0.0.251", "multicast"), ("0.0.0.0", "unspecified"), ("::ffff:10.0.0.1", "private"), ("fd00::1", "private"),
    ],
)
def test_addresses_that_are_not_public_are_refused(address, problem):
    from pipeline.io.ytdlp import address_problem

    assert address_problem(address, FetchOptions()) == problem
    assert address_problem("127.0.0.1", FetchOptions(allow_loopback=True)) is None
    assert address_problem("10.8.1.2", FetchOptions(allowed_networks=("10.8.0.0/16",))) is None
    assert address_problem("10.9.1.2", FetchOptions(allowed_networks=("10.8.0.0/16",))) == "private"


def test_loopback_is_refused_by_default(site, tmp_path):
    """URLs come from crawls: a page on this machine (or the cloud metadata service) is never fetched by default."""
    [row] = run_stage([site.url("talk.html")], tmp_path / "out", FetchOptions(retry_base_delay_s=0.01))
    assert row["reject_reason"] == "unsafe_url" and "not a public address" in row["reject_detail"], row["reject_detail"]
    assert "127.0.0.1 (loopback)" in row["reject_detail"] and site.requests == []  # refused before connecting


def test_a_redirect_to_a_refused_address_is_caught(site, tmp_path):
    """The check runs at every connection: the page's own host is allowed, its media redirects elsewhere."""
    options = FetchOptions(retry_base_delay_s=0.01, allowed_networks=("127.0.0.1/32",))
    [row] = run_stage([site.url("rebound.html")], tmp_path / "out", options)
    assert row["reject_reason"] == "unsafe_url" and "127.0.0.2" in row["reject_detail"], row["reject_detail"]
    assert "/redirect/127.0.0.2/jfk.opus" in site.requests
    assert not list((tmp_path / "out" / "media").rglob("*.opus"))
