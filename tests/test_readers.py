"""The corpus as its users' tools read it: Hugging Face ``datasets`` (``load_dataset`` and streaming, audio decoded with
soundfile, no torchcodec) and Lhotse (manifests written by ``wspsr export --to lhotse``, a cut's audio and text)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from support.output import corpus_rows

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """Nothing from a hub; the datasets cache in the test's folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))


def test_load_dataset_gives_an_audio_column_without_a_cast(sample_run):
    import datasets
    import soundfile

    from pipeline import load_corpus
    from pipeline.io.commit import committed_files

    out, _ = sample_run
    files = committed_files(out, "corpus")
    plain = datasets.load_dataset("parquet", data_files=files, split="train")  # the way a user who knows nothing of wspsr reads it
    assert isinstance(plain.features["audio"], datasets.Audio) and plain.features["audio"].sampling_rate == 16000
    assert plain.features["languages"] == datasets.List(datasets.Value("string")) and plain.num_rows == len(corpus_rows(out))

    # (a stray file in the folder is not read: only what the markers name)
    (out / "corpus" / "part-stray.parquet").write_bytes((out / "corpus" / files[0].rsplit("/", 1)[-1]).read_bytes())
    try:
        loaded = load_corpus(out, decode_audio=False)
    finally:
        (out / "corpus" / "part-stray.parquet").unlink()
    assert loaded.num_rows == plain.num_rows
    windows = {r["segment_id"]: r for r in corpus_rows(out)}
    for row in loaded.select(range(5)):
        audio, rate = soundfile.read(io.BytesIO(row["audio"]["bytes"]), dtype="int16")
        window = windows[row["segment_id"]]
        assert rate == 16000 and abs(len(audio) - (window["end_ms"] - window["start_ms"]) * 16) <= 16
        assert row["text"] == window["text"] and row["cluster_id"] == window["cluster_id"]

    streamed = load_corpus(out, streaming=True, decode_audio=False)
    first = next(iter(streamed))
    assert isinstance(streamed, datasets.IterableDataset) and first["segment_id"] in windows
    assert soundfile.info(io.BytesIO(first["audio"]["bytes"])).samplerate == 16000
    assert sum(1 for _ in streamed) == plain.num_rows


def test_lhotse_cuts_load_from_an_export_and_read_their_audio_from_the_corpus(sample_run, tmp_path):
    from lhotse import CutSet

    from jobs.export import main as export

    out, _ = sample_run
    manifests = tmp_path / "lhotse"
    assert export([str(out), "--to", "lhotse", "--out", str(manifests)]) == 0
    cuts = CutSet.from_file(manifests / "cuts.jsonl.gz").to_eager()
    windows = {r["segment_id"]: r for r in corpus_rows(out)}
    assert len(cuts) == len(windows)
    cut = cuts[sorted(windows)[0]]
    window = windows[cut.id]
    audio = cut.load_audio()
    assert audio.shape == (1, (window["end_ms"] - window["start_ms"]) * 16) and cut.sampling_rate == 16000
    expected = np.frombuffer(__import__("soundfile").read(io.BytesIO(window["audio"]["bytes"]), dtype="int16")[0].tobytes(), "<i2")
    assert np.allclose(audio[0], expected / 32768.0, atol=1e-4)  # the corpus's own samples
    (supervision,) = cut.supervisions
    assert supervision.text == window["text"] and supervision.language == window["language"]
    assert supervision.custom["cluster_id"] == window["cluster_id"] and supervision.custom["task"] == window["task"]
    # referenced, not copied: the manifests are small, and each source is a command over a corpus file
    assert sum(p.stat().st_size for p in manifests.iterdir()) < sum(len(w["audio"]["bytes"]) for w in windows.values()) / 4
    recording = json.loads(__import__("gzip").open(manifests / "recordings.jsonl.gz", "rt").readline())
    assert recording["sources"][0]["type"] == "command" and "/corpus/part-" in recording["sources"][0]["source"]
