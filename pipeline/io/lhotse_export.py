"""A corpus folder as Lhotse manifests, written with Lhotse's own classes: each window a ``Recording`` whose audio
stays in the corpus Parquet (referenced, not copied), a ``SupervisionSegment`` with its text, language and the
corpus's judgements, and a ``MonoCut`` of the two; recordings, supervisions and cuts are written as they are read,
file by file, so a corpus of millions of windows needs no more memory than one batch.

Lhotse reads a window's audio through its ``command`` source type: a one-line Python program (pyarrow only) that
prints the window's FLAC bytes from its Parquet file, found by segment id through the row groups' statistics.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from pipeline.audio import SAMPLE_RATE
from pipeline.io.commit import committed_files

COLUMNS = ["segment_id", "source_id", "cluster_id", "start_ms", "end_ms", "text", "language", "task", "has_speech", "code_switched",
           "agreement_logprob", "audio_language", "audio_language_prob"]
MANIFESTS = ("recordings.jsonl.gz", "supervisions.jsonl.gz", "cuts.jsonl.gz")
# Prints one window's FLAC bytes: argv[1] the Parquet file, argv[2] the segment id (a sorted column: the filter
# reads the one row group whose statistics hold it).
READ_WINDOW = ("import sys, pyarrow.parquet as pq; t = pq.read_table(sys.argv[1], columns=['audio'], "
               "filters=[('segment_id', '==', sys.argv[2])]); sys.stdout.buffer.write(t.column('audio')[0]['bytes'].as_py())")


def window_command(file: str, segment_id: str, python: str = "python3") -> str:
    return " ".join(shlex.quote(part) for part in (python, "-c", READ_WINDOW, file, segment_id))


def export_lhotse(root: str | Path, out: Path, python: str | None = None, batch_rows: int = 1024) -> dict[str, Any]:
    """Write ``out/recordings.jsonl.gz``, ``supervisions.jsonl.gz`` and ``cuts.jsonl.gz`` for the committed windows
    of ``root``; returns counts. ``python`` is the interpreter the audio commands name (one with pyarrow; default
    this one, by its absolute path: give `python3` for manifests read on other machines)."""
    import sys

    python = python or sys.executable
    import pyarrow.parquet as pq
    from lhotse import MonoCut, Recording, RecordingSet, SupervisionSegment, SupervisionSet, CutSet
    from lhotse.audio import AudioSource

    files = committed_files(root, "corpus")
    if not files:
        raise FileNotFoundError(f"{root} has no committed corpus files")
    out.mkdir(parents=True, exist_ok=True)
    windows = seconds = 0.0
    with RecordingSet.open_writer(out / MANIFESTS[0]) as recordings, SupervisionSet.open_writer(out / MANIFESTS[1]) as supervisions, \
            CutSet.open_writer(out / MANIFESTS[2]) as cuts:
        for file in files:
            location = file if "://" in file else str(Path(file).resolve())
            for batch in pq.ParquetFile(file).iter_batches(batch_size=batch_rows, columns=COLUMNS):
                for row in batch.to_pylist():
                    duration = (row["end_ms"] - row["start_ms"]) / 1000
                    recording = Recording(
                        id=row["segment_id"], sources=[AudioSource(type="command", channels=[0], source=window_command(location, row["segment_id"], python))],
                        sampling_rate=SAMPLE_RATE, num_samples=round(duration * SAMPLE_RATE), duration=duration,
                    )
                    supervision = SupervisionSegment(
                        id=row["segment_id"], recording_id=row["segment_id"], start=0.0, duration=duration, channel=0,
                        text=row["text"], language=row["language"], speaker=row["source_id"],
                        custom={"task": row["task"], "has_speech": row["has_speech"], "code_switched": row["code_switched"],
                                "source_id": row["source_id"], "cluster_id": row["cluster_id"], "window_start_ms": row["start_ms"],
                                "agreement_logprob": row["agreement_logprob"], "audio_language": row["audio_language"],
                                "audio_language_prob": row["audio_language_prob"]},
                    )
                    recordings.write(recording)
                    supervisions.write(supervision)
                    cuts.write(MonoCut(id=row["segment_id"], start=0.0, duration=duration, channel=0, recording=recording, supervisions=[supervision]))
                    windows += 1
                    seconds += duration
    return {"windows": int(windows), "hours": round(seconds / 3600, 4), "manifests": [str(out / name) for name in MANIFESTS]}
