"""Object storage: the corpus job reads its sources from and writes its corpus to an S3-compatible server on loopback
(moto in server mode), with credentials and endpoint from the environment only; the result, read back through
pyarrow's S3 filesystem, has the rows and ids of the same job run on local folders."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipeline.io.storage import Store, is_uri, list_files

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
BUCKET = "wspsr-test"
MANIFEST_IDS = ("en-inline-m4a", "en-webm-json")  # an inline text and a JSON transcript, from the sample's manifest


@pytest.fixture(scope="module")
def s3_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "wspsr-test", "AWS_SECRET_ACCESS_KEY": "wspsr-test-secret", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_EC2_METADATA_DISABLED": "true",
    }
    s3 = pafs.S3FileSystem(
        access_key=env["AWS_ACCESS_KEY_ID"], secret_key=env["AWS_SECRET_ACCESS_KEY"], region="us-east-1",
        endpoint_override=env["AWS_ENDPOINT_URL"], allow_bucket_creation=True,
    )
    s3.create_dir(BUCKET)
    try:
        yield s3, env
    finally:
        server.stop()


def source_tree(folder: Path) -> Path:
    """A folder of paired files (the sample's English) and a manifest beside it, as a user would upload them."""
    shutil.copytree(REPO / "sample" / "sources" / "en", folder / "en")
    lines = (REPO / "sample" / "manifest.jsonl").read_text(encoding="utf-8").splitlines()
    chosen = [json.loads(line) for line in lines if any(f'"id": "{i}"' in line for i in MANIFEST_IDS)]
    (folder / "media").mkdir()
    for line in chosen:
        for key in ("audio", "transcript"):
            if key in line:
                shutil.copy(REPO / "sample" / line[key], folder / line[key])
    (folder / "manifest.jsonl").write_text("".join(json.dumps(line) + "\n" for line in chosen), encoding="utf-8")
    return folder


def upload(s3: pafs.S3FileSystem, folder: Path, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with s3.open_output_stream(f"{prefix}/{path.relative_to(folder).as_posix()}") as stream:
                stream.write(path.read_bytes())


def corpus_job(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "jobs.corpus", "--quiet", "--set", "language.enabled=false", "--set", "ray.num_cpus=2", *args]
    return subprocess.run(command, cwd=REPO, env=dict(os.environ, **(env or {})), capture_output=True, text=True, timeout=600)


def read_s3_table(s3: pafs.S3FileSystem, root: str, table: str) -> pa.Table:
    markers = [e.path for e in s3.get_file_info(pafs.FileSelector(f"{root}/_commits")) if e.path.endswith(".json")]
    files = []
    for marker in markers:
        with s3.open_input_stream(marker) as stream:
            files += [f"{root}/{table}/{name}" for name in json.loads(stream.read())["files"].get(table, [])]
    return pq.read_table(sorted(files), filesystem=s3)


def sorted_rows(table: pa.Table) -> list[dict]:
    # (a reject's duration_ms: probed from local files only, see the summary's hours)
    rows = [{k: v for k, v in row.items() if k != "duration_ms"} for row in table.to_pylist()]
    return sorted(rows, key=lambda row: [str(row[k]) for k in row if k not in ("source", "audio")])


def test_corpus_job_reads_and_writes_s3(s3_server, tmp_path, monkeypatch):
    s3, env = s3_server
    for key, value in env.items():  # for list_files below; the jobs get them as their environment
        monkeypatch.setenv(key, value)
    local = source_tree(tmp_path / "data")
    upload(s3, local, f"{BUCKET}/data")

    done = corpus_job(["--sources", str(local / "en"), str(local / "manifest.jsonl"), "--out", str(tmp_path / "local")])
    assert done.returncode == 0, done.stderr[-4000:]
    remote_out = f"s3://{BUCKET}/corpus/v1"
    done = corpus_job(["--sources", f"s3://{BUCKET}/data/en", f"s3://{BUCKET}/data/manifest.jsonl", "--out", remote_out], env)
    assert done.returncode == 0, done.stderr[-4000:]

    summary = json.loads(s3.open_input_stream(f"{BUCKET}/corpus/v1/summary.json").read())
    expected = json.loads((tmp_path / "local" / "summary.json").read_text())
    assert summary["accounting"]["ok"] and summary["output"] == remote_out
    assert summary["inputs"] == expected["inputs"] and summary["inputs"]["kept"] >= 5
    # Sources rejected before decoding are probed for their length from local files only (an object is not
    # downloaded just to be measured), so the hours in and rejected differ by design; the audio kept does not.
    kept_hours = ("out", "out_speech", "per_language", "per_task")
    assert {k: summary["hours"][k] for k in kept_hours} == {k: expected["hours"][k] for k in kept_hours} and summary["windows"] == expected["windows"]
    assert summary["hours"]["in"] <= expected["hours"]["in"]

    # Same rows and ids; `source` names each file where that run found it.
    for table in ("corpus", "rejects"):
        got = read_s3_table(s3, f"{BUCKET}/corpus/v1", table)
        want = pa.concat_tables([pq.read_table(f) for f in sorted((tmp_path / "local" / table).glob("*.parquet"))])
        assert got.schema == want.schema and got.num_rows == want.num_rows > 0
        have, reference = sorted_rows(got), sorted_rows(want)
        for row, ref in zip(have, reference):
            relative = Path(ref["source"]).relative_to(local).as_posix() if ref["source"].startswith(str(local)) else None
            if relative:
                assert row["source"] == f"s3://{BUCKET}/data/{relative}", (row["source"], relative)
                row["source"] = ref["source"]
        assert have == reference
    sources = set(read_s3_table(s3, f"{BUCKET}/corpus/v1", "corpus")["source"].to_pylist())
    assert {f"s3://{BUCKET}/data/media/{i}.{ext}" for i, ext in (("en-inline-m4a", "m4a"), ("en-webm-json", "webm"))} <= sources

    # Nothing temporary went to the bucket; a rerun finds everything committed and changes nothing.
    listed = list_files(remote_out)
    assert not [name for name in listed if ".tmp-" in name] and "run.json" in listed
    before = {name: s3.get_file_info(f"{BUCKET}/corpus/v1/{name}").mtime for name in listed if name not in ("summary.json", "run.json")}
    done = corpus_job(["--sources", f"s3://{BUCKET}/data/en", f"s3://{BUCKET}/data/manifest.jsonl", "--out", remote_out], env)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "0 to process" in done.stderr
    assert {name: s3.get_file_info(f"{BUCKET}/corpus/v1/{name}").mtime for name in list_files(remote_out) if name not in ("summary.json", "run.json")} == before


def test_a_missing_bucket_fails_with_a_clear_message(s3_server, tmp_path):
    _, env = s3_server
    done = corpus_job(["--sources", f"s3://no-such-bucket-{os.getpid()}/data", "--out", str(tmp_path / "out")], env)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "error:" in done.stderr and "no-such-bucket" in done.stderr


def test_store_round_trip_on_s3(s3_server, monkeypatch):
    """The output folder primitives on an object store: atomic puts, listing, deletes."""
    _, env = s3_server
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    store = Store(f"s3://{BUCKET}/store")
    assert is_uri(store.location) and not store.local
    store.write_bytes("a/x.json", b"{}")
    store.write_bytes("a/b/y.txt", b"y")
    assert store.exists("a/x.json") and not store.exists("a/missing.json")
    assert store.list("a") == ["x.json"] and store.list("a", recursive=True) == ["b/y.txt", "x.json"]
    assert store.read_bytes("a/b/y.txt") == b"y"
    store.delete_dir("a")
    assert store.list("a", recursive=True) == []
