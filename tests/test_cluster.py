"""The corpus job on a real Ray cluster: a head and a worker node on loopback with token authentication
(``tools.cluster``, what ``make cluster-up`` starts), the job sent with ``ray job submit``, its output compared
with the in-process run's; a job with a bad config is reported failed by ``ray job status``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from support.output import committed_table

from tools.cluster import Cluster, alive_nodes, down, up

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).parent / "ray")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Its own folder, token, ports and Ray temp folder: the pytest process's in-process Ray and any other Ray on the
    machine are untouched, and teardown stops only these two nodes."""
    started = up(tmp_path_factory.mktemp("cluster"), workers=1, cpus=1)
    try:
        yield started
    finally:
        down(started.dir)


def ray_cli(cluster: Cluster, *args: str, timeout: float = 120) -> tuple[int, str, str]:
    """A ``ray`` command as a user runs it after ``source .ray-cluster/env``: exit code, stdout, stdout + stderr."""
    result = subprocess.run([RAY, *args], env=cluster.environ(), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return result.returncode, result.stdout, ANSI.sub("", result.stdout + result.stderr)


def read_table(root: Path, table: str) -> pa.Table:
    return committed_table(root, table)


def same_row(row: dict, reference: dict) -> bool:
    """Equal, except that model scores may differ in their last bits: they come from batched float arithmetic, and
    another cluster layout batches the windows differently (decisions, ids, text and audio are exact)."""
    if row.keys() != reference.keys():
        return False
    for key, value in row.items():
        expected = reference[key]
        if isinstance(value, float) and isinstance(expected, float):
            if abs(value - expected) > 1e-4:
                return False
        elif key == "audio_language_probs" and value and expected:
            a, b = json.loads(value), json.loads(expected)
            if a.keys() != b.keys() or any(abs(a[k] - b[k]) > 1e-3 for k in a):
                return False
        elif value != expected:
            return False
    return True


def sorted_rows(table: pa.Table) -> list[dict]:
    skip = {"source", "audio", "audio_language_probs"} | {f.name for f in table.schema if pa.types.is_floating(f.type)}
    return sorted(table.to_pylist(), key=lambda row: [str(row[k]) for k in table.column_names if k not in skip])


def test_corpus_job_submitted_to_a_two_node_cluster_gives_the_in_process_output(sample_run, cluster, tmp_path):
    in_process, _ = sample_run
    assert alive_nodes(cluster) == 2
    out = tmp_path / "out"  # same machine: every node sees the folder
    code, _, output = ray_cli(
        cluster, "job", "submit", "--submission-id", "corpus-sample", "--working-dir", str(REPO),
        "--", "python", "-m", "jobs.corpus", "--out", str(out), "--quiet", timeout=1500,
    )
    assert code == 0, output[-5000:]
    assert "Job 'corpus-sample' succeeded" in output
    code, _, status = ray_cli(cluster, "job", "status", "corpus-sample")
    assert code == 0 and "Job 'corpus-sample' succeeded" in status, status

    # The work was spread over both nodes (the model actor holds one node's CPU, decoding runs beside it).
    code, listed, output = ray_cli(cluster, "list", "tasks", "--detail", "--format", "json", "--limit", "10000", "--filter", "state=FINISHED")
    assert code == 0, output
    nodes = {task["node_id"] for task in json.loads(listed) if task.get("node_id")}
    assert len(nodes) == 2

    # Same rows, same ids. `source` names the audio as the run was given it: the bundled sample by absolute path, here
    # in the repository, there in Ray's copy of the working dir; the path inside the repository is the same.
    for table in ("corpus", "rejects"):
        expected, got = read_table(in_process, table), read_table(out, table)
        assert got.schema == expected.schema
        assert got.num_rows == expected.num_rows > 0
        want, have = sorted_rows(expected), sorted_rows(got)
        for row, reference in zip(have, want):
            in_repo = Path(reference["source"]).relative_to(REPO).as_posix()
            assert row["source"].endswith("/" + in_repo), (row["source"], in_repo)
            row["source"] = reference["source"]
            assert same_row(row, reference), (row["segment_id"] if "segment_id" in row else row["source_id"])


def test_a_job_with_a_bad_config_is_reported_failed_with_the_reason(cluster, tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("[segment]\nno_such_key = 1\n", encoding="utf-8")
    code, _, output = ray_cli(
        cluster, "job", "submit", "--submission-id", "corpus-bad-config", "--working-dir", str(REPO),
        "--", "python", "-m", "jobs.corpus", "--config", str(config), "--out", str(tmp_path / "out"), timeout=600,
    )
    assert code != 0, output
    reason = "wspsr corpus: error: unknown key(s) in [segment]: no_such_key"
    _, _, status = ray_cli(cluster, "job", "status", "corpus-bad-config")
    assert "Job 'corpus-bad-config' failed" in status, status
    assert "Job entrypoint command failed with exit code 2" in status and reason in status, status
    code, _, logs = ray_cli(cluster, "job", "logs", "corpus-bad-config")
    assert code == 0 and reason in logs, logs
    assert not (tmp_path / "out").exists()


def test_fetch_then_transcribe_submitted_to_the_cluster(cluster, tmp_path):
    """The other jobs go through `ray job submit` too: fetch a page from a loopback web server, then transcribe what
    it fetched (its manifest) with Whisper base on the cluster's nodes."""
    from test_fetch import Site, build_site

    build_site(tmp_path / "site")
    site = Site(tmp_path / "site")
    urls = tmp_path / "urls.txt"
    urls.write_text(f"http://127.0.0.1:{site.server.server_address[1]}/talk.html\n", encoding="utf-8")
    try:
        code, _, output = ray_cli(
            cluster, "job", "submit", "--submission-id", "fetch-page", "--working-dir", str(REPO),
            "--", "python", "-m", "jobs.fetch", "--urls", str(urls), "--out", str(tmp_path / "web"), "--quiet",
            "--set", "fetch.allow_loopback=true", timeout=600,
        )
    finally:
        site.server.shutdown()
    assert code == 0 and "Job 'fetch-page' succeeded" in output, output[-5000:]
    fetched = json.loads((tmp_path / "web" / "summary.json").read_text())
    assert fetched["accounting"]["ok"] and fetched["items"]["kept"] == 1

    code, _, output = ray_cli(
        cluster, "job", "submit", "--submission-id", "transcribe-fetched", "--working-dir", str(REPO),
        "--", "python", "-m", "jobs.transcribe", "--inputs", str(tmp_path / "web" / "sources.jsonl"), "--out", str(tmp_path / "tr"),
        "--language", "en", "--quiet", timeout=900,
    )
    assert code == 0 and "Job 'transcribe-fetched' succeeded" in output, output[-5000:]
    summary = json.loads((tmp_path / "tr" / "summary.json").read_text())
    assert summary["accounting"]["ok"] and summary["inputs"]["kept"] == 1
    text = " ".join(read_table(tmp_path / "tr", "transcripts")["text"].to_pylist()).lower()
    assert "ask not what your country can do for you" in text, text


def test_train_submitted_to_the_cluster_recovers_a_killed_worker(sample_run, cluster, tmp_path):
    """`wspsr train` through `ray job submit`: LoRA on the tiny random model over the sample corpus, one Ray Train
    worker on the cluster (the working dir shipped by Ray), checkpoints and metrics in a folder every node sees. The
    worker is killed at step 3 (a fault given in the job's runtime environment); with train.max_failures=1 Ray Train
    starts it again from the step-2 checkpoint and the job succeeds with every step trained once."""
    corpus, _ = sample_run
    out, faults = tmp_path / "train", tmp_path / "faults"
    faults.mkdir()
    runtime = json.dumps({"env_vars": {"WSPSR_FAULTS": "kill@train:step-3", "WSPSR_FAULTS_DIR": str(faults)}})
    code, _, output = ray_cli(
        cluster, "job", "submit", "--submission-id", "train-sample", "--working-dir", str(REPO), "--runtime-env-json", runtime,
        "--", "python", "-m", "jobs.train", "--corpus", str(corpus), "--out", str(out), "--model", "tiny-random", "--lora-rank", "4",
        "--steps", "4", "--batch-size", "2", "--lr", "1e-3", "--quiet", "--set", "data.max_windows=8", "--set", "train.warmup_steps=0",
        "--set", "train.checkpoint_every=2", "--set", "train.max_failures=1", "--set", "train.eval_max_examples=1",
        "--set", "ray.cpus_per_worker=0.5", timeout=900,
    )
    assert code == 0 and "Job 'train-sample' succeeded" in output, output[-5000:]
    assert (faults / "kill@train_step-3").exists()  # the worker was killed once
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and len(metrics["train_loss"]) == 4 and metrics["method"] == "lora" and Path(metrics["checkpoint"]).exists()
