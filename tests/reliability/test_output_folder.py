"""The output folder's lifecycle, through the jobs: a folder the job did not create is refused and left byte for byte
as it was (``--overwrite`` too), a linked folder is never followed, ``--overwrite`` in the job's own folder removes
only what the job wrote, a second run on a folder in use is refused while the first finishes, and output names never
leave ``--out``."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from support.data import DATA, JFK, ffmpeg, srt
from support.output import assert_accounted, committed_rows

pytestmark = pytest.mark.slow
SPEECH = DATA / "speech"
REPO = Path(__file__).resolve().parents[2]
FAST = ["--set", "machine_generated.enabled=false", "--set", "language.enabled=false", "--set", "audio_dedup.enabled=false",
        "--set", "ray.num_cpus=2", "--quiet"]


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file and link under the roots with its content's hash (links by their target, never followed)."""
    found = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_symlink():
                found[str(path)] = "link:" + os.readlink(path)
            elif path.is_file():
                found[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                found[str(path)] = "folder"
    return found


@pytest.fixture
def used_folder(tmp_path) -> tuple[Path, Path]:
    """A user's recordings folder (a talk, an interview, notes) with a link to a folder of theirs elsewhere."""
    rec, elsewhere = tmp_path / "rec", tmp_path / "elsewhere"
    (rec / "files" / "2024").mkdir(parents=True)
    elsewhere.mkdir()
    ffmpeg("-t", "3", "-i", str(JFK), str(rec / "talk.wav"))
    ffmpeg("-ss", "3", "-t", "3", "-i", str(JFK), str(rec / "files" / "2024" / "interview.wav"))
    (rec / "files" / "notes.txt").write_text("call back on monday\n")
    (rec / "talk.en.srt").write_text(srt([(0.0, 2.9, "And so my fellow Americans,")]))
    (elsewhere / "keep.parquet").write_bytes(b"not ours")
    (rec / "corpus").symlink_to(elsewhere, target_is_directory=True)
    return rec, elsewhere


def test_a_folder_the_job_did_not_create_is_refused_untouched(used_folder, tmp_path):
    from jobs.corpus import main as corpus
    from jobs.transcribe import main as transcribe

    rec, elsewhere = used_folder
    before = snapshot(rec, elsewhere)
    for overwrite in ([], ["--overwrite"]):
        assert transcribe(["--inputs", str(rec / "talk.wav"), "--out", str(rec), "--model", "tiny-random", "--quiet", *overwrite]) == 2
        assert corpus(["--sources", str(rec), "--out", str(rec), *FAST, *overwrite]) == 2
        assert snapshot(rec, elsewhere) == before
    # A link given as --out is refused too: the folder it points to is the one to name.
    link = tmp_path / "out-link"
    link.symlink_to(elsewhere, target_is_directory=True)
    assert corpus(["--sources", str(rec), "--out", str(link), *FAST]) == 2
    assert snapshot(rec, elsewhere) == before


def test_overwrite_removes_only_what_the_job_wrote(used_folder, tmp_path, local_ray):
    from jobs.corpus import run as corpus

    rec, elsewhere = used_folder
    sources = tmp_path / "sources"
    sources.mkdir()
    (sources / "talk.wav").write_bytes((rec / "talk.wav").read_bytes())
    (sources / "talk.en.srt").write_text(srt([(0.0, 2.9, "And so my fellow Americans,")]))
    out = tmp_path / "out"
    corpus(["--sources", str(sources), "--out", str(out), *FAST])
    # The user adds their own things inside the job's folder: a note among the tables, a link to a folder elsewhere.
    (out / "corpus" / "notes.txt").write_text("mine\n")
    (out / "rejects" / "part-0123456789abcdef0123-000.parquet").write_bytes(b"a file named like a shard, not named by a marker")
    (out / "linked").symlink_to(elsewhere, target_is_directory=True)
    theirs = snapshot(elsewhere) | {p: h for p, h in snapshot(out).items() if "notes.txt" in p or "0123456789" in p or p.endswith("linked")}
    corpus(["--sources", str(sources), "--out", str(out), *FAST, "--set", "segment.max_window_ms=20000", "--overwrite"])
    after = snapshot(elsewhere, out)
    assert all(after.get(path) == digest for path, digest in theirs.items())
    assert_accounted(out, "corpus", foreign={"linked/keep.parquet", "rejects/part-0123456789abcdef0123-000.parquet"})
    assert len(committed_rows(out, "corpus")) == 1
    # wspsr train follows the same lifecycle: the user's folder, and the corpus folder itself, are refused untouched.
    from jobs.train import main as train

    before = snapshot(rec, elsewhere, out)
    for target in (rec, out):
        assert train(["--corpus", str(out), "--out", str(target), "--model", "tiny-random", "--steps", "1", "--quiet", "--overwrite"]) == 2
    assert snapshot(rec, elsewhere, out) == before


def test_a_second_run_on_a_folder_in_use_is_refused_while_the_first_finishes(tmp_path):
    from jobs.corpus import main as corpus

    sources = tmp_path / "sources"
    sources.mkdir()
    for name in sorted(os.listdir(SPEECH))[:6]:
        if name.endswith(".flac"):
            (sources / name).write_bytes((SPEECH / name).read_bytes())
            (sources / name.replace(".flac", ".txt")).write_text("Some words said here.\n")
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-m", "jobs.corpus", "--sources", str(sources), "--out", str(out), *FAST],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "run.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (out / ".wspsr.lock").exists()
    assert corpus(["--sources", str(sources), "--out", str(out), *FAST]) == 2  # refused: the folder is in use
    assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    assert not (out / ".wspsr.lock").exists()
    assert_accounted(out, "corpus")


def test_output_names_from_a_table_never_leave_the_output_folder(tmp_path, local_ray):
    from jobs.transcribe import run as transcribe

    song = tmp_path / "elsewhere" / "song.wav"
    song.parent.mkdir()
    ffmpeg("-t", "4", "-i", str(JFK), str(song))
    table = tmp_path / "inputs" / "list.parquet"
    table.parent.mkdir()
    climbing = f"{tmp_path}/inputs/../elsewhere/song.wav"  # a source column that climbs out of every folder
    pq.write_table(pa.table({"source": [climbing]}), table)
    out = tmp_path / "inputs" / "out"
    before = snapshot(tmp_path / "elsewhere")
    transcribe(["--inputs", str(table), "--out", str(out), "--model", "tiny-random", "--engine", "openai-whisper", "--language", "en",
                "--formats", "parquet,srt,json", "--set", "decoding.temperatures=[0.0]", "--quiet"])
    assert snapshot(tmp_path / "elsewhere") == before
    written = [p for p in (out / "files").rglob("*") if p.is_file()]
    assert written and all(out in p.resolve().parents for p in written)
    assert {p.suffix for p in written} == {".srt", ".json"} and all(".." not in p.parts for p in written)
