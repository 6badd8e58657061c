"""Any Whisper size, offline: names resolve under $WSPSR_MODELS, one conversion on disk, export to CTranslate2, and
the two engines agreeing on models of every shape we support (base's, large-v3's 128 mel bins and 51,866 tokens,
turbo's few decoder layers)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.io.media import decode_audio
from pipeline.whisper.engines import DecodingOptions, load_engine
from pipeline.whisper.export import export_ctranslate2, whisper_tokenizer
from pipeline.whisper.models import (
    TINY_RANDOM_SHAPES, ModelNotFound, conversion_paths, content_key, load_openai_whisper, models_dir, name_locations, prepare_model,
    resolve_model, tiny_random_whisper,
)
from support.data import JFK

ROOT = Path(__file__).resolve().parent.parent
BASE_VOCABULARY = models_dir() / "whisper-base" / "vocabulary.json"  # faster-whisper's base, as `make models` installs it
GREEDY = DecodingOptions(language="en", temperatures=(0.0,), without_timestamps=True, compression_ratio_threshold=None,
                         logprob_threshold=None, no_speech_threshold=None)


@pytest.fixture
def models(tmp_path, monkeypatch):
    root = tmp_path / "models"
    monkeypatch.setenv("WSPSR_MODELS", str(root))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return root


@pytest.fixture(scope="module")
def thirty_seconds():
    audio = decode_audio(JFK)
    return np.concatenate([audio] * 3)[: 30 * 16000]


@pytest.mark.parametrize("shape", list(TINY_RANDOM_SHAPES))
def test_engines_give_the_same_greedy_tokens_after_export(shape, models, tmp_path, thirty_seconds):
    """The round trip: an openai-whisper checkpoint, exported by CTranslate2's spec classes (once, on disk, when the
    faster-whisper engine is asked for it), decodes to the same tokens in faster-whisper, and both engines read the
    same mel bins and give the same language probabilities."""
    import torch

    model = tiny_random_whisper(shape=shape)
    with torch.no_grad():  # smaller token embeddings: greedy decoding then follows the audio, not its last token
        model.decoder.token_embedding.weight.mul_(0.1)
    checkpoint = tmp_path / f"{shape}.pt"
    torch.save({"dims": model.dims.__dict__, "model_state_dict": model.state_dict()}, checkpoint)
    ref = prepare_model(str(checkpoint), "faster-whisper")
    assert ref.ct2_dir == conversion_paths(content_key(ref))[1]
    preprocessor = json.loads((ref.ct2_dir / "preprocessor_config.json").read_text())
    assert preprocessor["feature_size"] == TINY_RANDOM_SHAPES[shape]["n_mels"]
    openai = load_engine("openai-whisper", str(checkpoint))
    faster = load_engine("faster-whisper", str(checkpoint), compute_type="float32")
    assert faster.model.model.n_mels == openai.model.dims.n_mels and faster.model.model.num_languages == openai.model.num_languages
    ours, theirs = openai.transcribe([thirty_seconds], GREEDY)[0].tokens, faster.transcribe([thirty_seconds], GREEDY)[0].tokens
    assert len(ours) >= 100 and len(set(ours)) > 1 and ours == theirs
    p, q = openai.detect_language([thirty_seconds])[0], faster.detect_language([thirty_seconds])[0]
    assert p.keys() == q.keys() and max(abs(p[k] - q[k]) for k in p) < 1e-3


def test_tiny_random_names_serve_the_faster_whisper_engine(models, thirty_seconds):
    """``--engine faster-whisper --model tiny-random-v3`` works: the model is exported once into the models folder."""
    engine = load_engine("faster-whisper", "tiny-random-v3")
    assert engine.model.model.n_mels == 128 and engine.transcribe([thirty_seconds[:16000 * 5]], GREEDY)[0].language == "en"
    assert prepare_model("tiny-random-v3", "faster-whisper").ct2_dir.parent.parent == models / "converted"


@pytest.mark.slow  # needs `make models`
def test_tokenizer_files_are_openai_whispers(models):
    """The tokenizer.json we write from openai-whisper's tiktoken ranks is the one faster-whisper's base ships, token
    for token; large-v3's has one more language, an English-only model the GPT-2 vocabulary."""
    vocabulary, _ = whisper_tokenizer(True, 99)
    assert vocabulary == json.loads(BASE_VOCABULARY.read_text())
    v3, _ = whisper_tokenizer(True, 100)
    english, _ = whisper_tokenizer(False, 99)
    assert (len(vocabulary), len(v3), len(english)) == (51865, 51866, 51864) and v3[50358] == "<|yue|>"


def test_a_name_resolves_under_the_models_folder_and_converts_once(models, tmp_path):
    """A CTranslate2 folder at $WSPSR_MODELS/whisper-small serves both engines: openai-whisper's checkpoint is
    converted once, on disk, keyed by the folder's content hash, and found again without converting."""
    with pytest.raises(ModelNotFound) as missing:
        resolve_model("small")
    message = str(missing.value)
    assert all(str(place) in message for place in name_locations("small")) and "Nothing is downloaded" in message
    export_ctranslate2(tiny_random_whisper(shape="tiny-random-v3"), models / "whisper-small")
    ref = resolve_model("small")
    assert ref.ct2_dir == models / "whisper-small" and ref.checkpoint is None
    prepared = prepare_model("small", "openai-whisper")
    assert prepared.checkpoint == conversion_paths(content_key(ref))[0] and prepared.checkpoint.is_file()
    made = prepared.checkpoint.stat().st_mtime_ns
    again = prepare_model("small", "openai-whisper")
    assert again.checkpoint == prepared.checkpoint and prepared.checkpoint.stat().st_mtime_ns == made
    assert resolve_model("small").checkpoint == prepared.checkpoint  # every later resolve finds it
    model = load_openai_whisper(again)
    assert model.dims.n_mels == 128 and model.dims.n_vocab == 51866
    assert json.loads((prepared.checkpoint.parent / "source.json").read_text())["source"] == "small"
    # By path too: the openai-whisper engine loads the converted file (no conversion in memory, in any actor).
    assert prepare_model(str(models / "whisper-small"), "openai-whisper").checkpoint == prepared.checkpoint


def test_a_missing_size_fails_before_ray_with_exit_2(models, tmp_path):
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "jobs.transcribe", "--model", "large-v3", "--inputs", str(JFK), "--out", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, env={**__import__("os").environ},
    )
    assert done.returncode == 2, done.stderr
    assert "large-v3" in done.stderr and "whisper-large-v3" in done.stderr and "Nothing is downloaded" in done.stderr
    assert "Started a local Ray" not in done.stderr
    assert time.monotonic() - started < 60 and not (tmp_path / "out").exists()


def test_actor_memory_follows_the_model_size(models):
    small = prepare_model("tiny-random", "faster-whisper")
    assert small.memory_gb("faster-whisper") == 2.0
    export_ctranslate2(tiny_random_whisper(), models / "whisper-medium")
    big = resolve_model("medium")
    # a 1.5 GB model.bin (medium in float16) would reserve 1 + 1.5 x 1.5 GB for faster-whisper
    size = (big.ct2_dir / "model.bin").stat().st_size
    assert big.memory_gb("faster-whisper") == round(max(2.0, 1.0 + 1.5 * size / 2**30), 1)
    assert big.memory_gb("openai-whisper") == round(max(2.0, 1.0 + 3.0 * size / 2**30), 1)


def test_export_command_writes_a_folder_faster_whisper_serves(models, tmp_path, thirty_seconds):
    """``wspsr export`` of an openai-whisper checkpoint (int8 storage), then the folder by path in the default
    engine."""
    import torch

    model = tiny_random_whisper(shape="tiny-random-turbo")
    checkpoint = tmp_path / "model.pt"
    torch.save({"dims": model.dims.__dict__, "model_state_dict": model.state_dict()}, checkpoint)
    out = tmp_path / "exported"
    done = subprocess.run([sys.executable, "-m", "jobs.cli", "export", str(checkpoint), "--out", str(out), "--quantization", "int8"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert {p.name for p in out.iterdir()} >= {"model.bin", "config.json", "vocabulary.json", "tokenizer.json", "preprocessor_config.json"}
    assert (out / "model.bin").stat().st_size < 0.4 * sum(t.numel() * 4 for t in model.state_dict().values())  # int8 weights
    again = subprocess.run([sys.executable, "-m", "jobs.cli", "export", str(checkpoint), "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    faster = load_engine("faster-whisper", str(out), compute_type="int8")
    assert len(faster.transcribe([thirty_seconds], GREEDY)[0].tokens) > 0
    config = json.loads((out / "config.json").read_text())
    assert config["alignment_heads"] and len(config["lang_ids"]) == 100 and 220 in config["suppress_ids_begin"]


@pytest.mark.slow  # needs `make models`
def test_exporting_base_reproduces_faster_whispers_own_base(models, tmp_path):
    """Real weights: openai-whisper's base (converted from the pack's CTranslate2 files) exported again by
    CTranslate2's spec classes gives the pack's model.bin variable for variable, bit for bit, and its config.json."""
    from pipeline.whisper.ct2 import read_ct2_model

    pack = BASE_VOCABULARY.parent
    exported = export_ctranslate2(load_openai_whisper(resolve_model(str(pack / "base.pt"))), tmp_path / "base")
    ours, theirs = read_ct2_model(exported / "model.bin"), read_ct2_model(pack / "model.bin")
    assert ours[:2] == theirs[:2] == ("WhisperSpec", 3) and ours[2].keys() == theirs[2].keys()
    assert all(ours[2][k].dtype == theirs[2][k].dtype and np.array_equal(ours[2][k], theirs[2][k]) for k in theirs[2])
    assert json.loads((exported / "config.json").read_text()) == json.loads((pack / "config.json").read_text())
