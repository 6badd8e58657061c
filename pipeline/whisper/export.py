"""Writing openai-whisper models in CTranslate2's format, so faster-whisper (and ``wspsr transcribe``'s default
engine) can serve them: a checkpoint ``wspsr train`` wrote, or any openai-whisper ``.pt``.

CTranslate2's own classes write the format: the model is described as a ``WhisperSpec`` (its encoder, decoder and
attention specs, filled from openai-whisper's state dict the way CTranslate2's Hugging Face loader fills them:
query/key/value fused, the key projection's missing bias as zeros), and CTranslate2's ``Converter`` validates,
quantises and saves it. What a CTranslate2 Whisper folder needs besides ``model.bin`` and is not in an openai-whisper
checkpoint is made here from openai-whisper's own tokenizer, offline: ``tokenizer.json`` (faster-whisper would
otherwise fetch one from a hub), ``config.json``'s suppressed tokens, language ids and alignment heads, and
``preprocessor_config.json`` (the number of mel bins: 128 for large-v3).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

QUANTIZATIONS = ("float16", "float32", "int8", "int8_float16", "int8_float32", "bfloat16", "int16")
CT2_FILES = ("model.bin", "config.json", "vocabulary.json", "tokenizer.json", "preprocessor_config.json")


@functools.lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte: the alphabet byte-level BPE vocabularies are written in."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def _bpe_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """How byte-pair encoding with the merges ranked below ``max_rank`` splits ``token``: for a token of the
    vocabulary, the two pieces whose merge made it."""
    parts = [bytes([b]) for b in token]
    while True:
        best, best_rank = None, None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < max_rank and (best_rank is None or rank < best_rank):
                best, best_rank = i, rank
        if best is None:
            return parts
        parts = parts[:best] + [parts[best] + parts[best + 1]] + parts[best + 2:]


def whisper_tokenizer(multilingual: bool, num_languages: int) -> tuple[list[str], str]:
    """(vocabulary, tokenizer.json text) of openai-whisper's tokenizer for a model of this kind: its tiktoken ranks
    as a Hugging Face byte-level BPE (merges recovered from the ranks), its special tokens (languages, tasks,
    timestamps) as added tokens with openai-whisper's ids."""
    import whisper.tokenizer
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    encoding = whisper.tokenizer.get_encoding("multilingual" if multilingual else "gpt2", num_languages=num_languages)
    ranks: dict[bytes, int] = encoding._mergeable_ranks
    alphabet = _byte_to_unicode()
    spell = lambda piece: "".join(alphabet[b] for b in piece)  # noqa: E731
    vocab = {spell(piece): rank for piece, rank in ranks.items()}
    merges = []
    for piece, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(piece) > 1:
            parts = _bpe_parts(ranks, piece, rank)
            if len(parts) != 2:
                raise ValueError(f"token {rank} of the {encoding.name} encoding is not one merge of two tokens")
            merges.append((spell(parts[0]), spell(parts[1])))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = sorted(encoding._special_tokens.items(), key=lambda kv: kv[1])
    if [i for _, i in specials] != list(range(len(ranks), len(ranks) + len(specials))):
        raise ValueError("openai-whisper's special tokens do not follow its vocabulary")
    tokenizer.add_special_tokens([AddedToken(name, special=True, normalized=False) for name, _ in specials])
    vocabulary = [None] * (len(ranks) + len(specials))
    for text, rank in vocab.items():
        vocabulary[rank] = text
    for name, index in specials:
        vocabulary[index] = name
    return vocabulary, tokenizer.to_str()


def _config(model: Any) -> dict[str, Any]:
    """config.json's fields, from openai-whisper's tokenizer and the model's alignment heads."""
    import whisper.tokenizer

    tokenizer = whisper.tokenizer.get_tokenizer(model.is_multilingual, num_languages=model.num_languages)
    heads = model.alignment_heads.to_dense() if model.alignment_heads.is_sparse else model.alignment_heads
    return {
        # what openai-whisper's decoding suppresses by default (suppress_tokens="-1" and the task tokens)
        "suppress_ids": sorted({*tokenizer.non_speech_tokens, tokenizer.transcribe, tokenizer.translate, tokenizer.sot,
                                tokenizer.sot_prev, tokenizer.sot_lm, tokenizer.no_speech}),
        "suppress_ids_begin": [tokenizer.encode(" ")[0], tokenizer.eot],
        "lang_ids": sorted(tokenizer.all_language_tokens) if model.is_multilingual else [],
        "alignment_heads": [[int(layer), int(head)] for layer, head in np.argwhere(heads.cpu().numpy())],
    }


def whisper_spec(model: Any) -> Any:
    """A CTranslate2 ``WhisperSpec`` filled with an openai-whisper model's weights (float32 numpy arrays)."""
    from ctranslate2.converters import utils
    from ctranslate2.specs import common_spec, whisper_spec as ws

    dims = model.dims
    spec = ws.WhisperSpec(dims.n_audio_layer, dims.n_audio_head, dims.n_text_layer, dims.n_text_head)
    state = {name: tensor.detach().float().cpu().numpy() for name, tensor in model.state_dict().items() if name != "alignment_heads"}

    def linear(target: Any, prefix: str) -> None:
        target.weight = state[f"{prefix}.weight"]
        if f"{prefix}.bias" in state:
            target.bias = state[f"{prefix}.bias"]

    def norm(target: Any, prefix: str) -> None:
        target.gamma, target.beta = state[f"{prefix}.weight"], state[f"{prefix}.bias"]

    def attention(target: Any, prefix: str, cross: bool) -> None:
        parts = [common_spec.LinearSpec() for _ in range(3)]
        for part, name in zip(parts, ("query", "key", "value")):
            linear(part, f"{prefix}.{name}")
        if cross:
            utils.fuse_linear(target.linear[0], parts[:1])
            utils.fuse_linear(target.linear[1], parts[1:])
        else:
            utils.fuse_linear(target.linear[0], parts)
        linear(target.linear[-1], f"{prefix}.out")

    def feed_forward(target: Any, prefix: str) -> None:
        norm(target.layer_norm, f"{prefix}.mlp_ln")
        linear(target.linear_0, f"{prefix}.mlp.0")
        linear(target.linear_1, f"{prefix}.mlp.2")

    encoder = spec.encoder
    for conv in ("conv1", "conv2"):
        getattr(encoder, conv).weight = state[f"encoder.{conv}.weight"]
        getattr(encoder, conv).bias = state[f"encoder.{conv}.bias"]
    encoder.position_encodings.encodings = state["encoder.positional_embedding"]
    norm(encoder.layer_norm, "encoder.ln_post")
    for i, layer in enumerate(encoder.layer):
        prefix = f"encoder.blocks.{i}"
        attention(layer.self_attention, f"{prefix}.attn", cross=False)
        norm(layer.self_attention.layer_norm, f"{prefix}.attn_ln")
        feed_forward(layer.ffn, prefix)

    decoder = spec.decoder
    decoder.embeddings.weight = state["decoder.token_embedding.weight"]
    decoder.position_encodings.encodings = state["decoder.positional_embedding"]
    norm(decoder.layer_norm, "decoder.ln")
    decoder.projection.weight = state["decoder.token_embedding.weight"]  # tied, as openai-whisper computes logits
    for i, layer in enumerate(decoder.layer):
        prefix = f"decoder.blocks.{i}"
        attention(layer.self_attention, f"{prefix}.attn", cross=False)
        norm(layer.self_attention.layer_norm, f"{prefix}.attn_ln")
        attention(layer.attention, f"{prefix}.cross_attn", cross=True)
        norm(layer.attention.layer_norm, f"{prefix}.cross_attn_ln")
        feed_forward(layer.ffn, prefix)

    vocabulary, _ = whisper_tokenizer(model.is_multilingual, model.num_languages)
    spec.register_vocabulary(vocabulary)
    for key, value in _config(model).items():
        setattr(spec.config, key, value)
    return spec


def _converter(model: Any) -> Any:
    from ctranslate2.converters.converter import Converter

    class OpenAIWhisperConverter(Converter):
        """CTranslate2's converter (validate, quantise, save) over a spec built from an openai-whisper model."""

        def _load(self) -> Any:
            return whisper_spec(model)

    return OpenAIWhisperConverter()


def export_ctranslate2(model: Any, out_dir: str | os.PathLike[str], quantization: str = "float16") -> Path:
    """Writes ``model`` (an openai-whisper ``Whisper``) as a CTranslate2 Whisper folder at ``out_dir``, atomically
    (built beside it, then renamed into place; an existing folder is replaced). ``quantization`` is how the weights
    are stored (float16 as faster-whisper's published models; CTranslate2 converts at load time to the
    ``compute_type`` asked for)."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, not {quantization!r}")
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        target = building / "model"
        _converter(model).convert(str(target), quantization=quantization)
        _, tokenizer_json = whisper_tokenizer(model.is_multilingual, model.num_languages)
        (target / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
        preprocessor = {"feature_size": model.dims.n_mels, "sampling_rate": 16000, "hop_length": 160, "chunk_length": 30, "n_fft": 400}
        (target / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n", encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(target, out_dir)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return out_dir
