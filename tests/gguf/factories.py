"""Tiny but valid GGUF model files for tests, plus helpers to locate and corrupt their bytes.

`write_model` writes a llama-architecture model (2 layers, hidden 64, 4 heads, 2 KV heads, ff 128) with a
261-token byte-level BPE vocabulary through `gguf.GGUFWriter`, so files are produced by the reference writer
rather than by the code under test. `scan_header` is an independent walk of the header that records where each
field lies, so that tests can byte-edit a valid file at a precise spot. `pack_*` build headers by hand for
faults the writer refuses to produce (duplicate keys, unknown value types, absurd counts...).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf.gguf_writer import GGUFWriter
from gguf.quants import quantize

from rocmforge.errors import GGUFError
from tests.quant_blocks import constant_f16_bits, random_blocks

Q = GGMLQuantizationType
V = GGUFValueType

NUM_LAYERS = 2
HIDDEN = 64
NUM_HEADS = 4
NUM_KV_HEADS = 2
FF = 128
HEAD_DIM = HIDDEN // NUM_HEADS

# Types gguf-py can quantize itself; the others get random blocks with sane f16 scales (see tests.quant_blocks).
_QUANTIZABLE = {Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.BF16}


def byte_level_alphabet() -> list[str]:
    """GPT-2's printable stand-in for each byte 0..255, in byte order (the base of every byte-level BPE vocab)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


MERGES = ("Ġ t", "h e", "Ġt he", "l l")
EOS_TEXT = "<|endoftext|>"


def vocab() -> tuple[list[str], list[int]]:
    """Tokens and GGUF token types: 256 bytes, the merge results, then one control token."""
    tokens = byte_level_alphabet() + [a + b for a, b in (m.split(" ") for m in MERGES)] + [EOS_TEXT]
    types = [1] * (len(tokens) - 1) + [3]
    return tokens, types


VOCAB_SIZE = len(vocab()[0])
EOS_ID = VOCAB_SIZE - 1


def tensor_shapes(num_layers: int = NUM_LAYERS, ff: int = FF, tied: bool = True) -> dict[str, tuple[int, ...]]:
    """Every tensor of the llama model in torch order (rows, cols), as the loader expects them."""
    kv = NUM_KV_HEADS * HEAD_DIM
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (VOCAB_SIZE, HIDDEN), "output_norm.weight": (HIDDEN,)}
    if not tied:
        shapes["output.weight"] = (VOCAB_SIZE, HIDDEN)
    for i in range(num_layers):
        p = f"blk.{i}."
        shapes |= {
            p + "attn_norm.weight": (HIDDEN,),
            p + "attn_q.weight": (HIDDEN, HIDDEN),
            p + "attn_k.weight": (kv, HIDDEN),
            p + "attn_v.weight": (kv, HIDDEN),
            p + "attn_output.weight": (HIDDEN, HIDDEN),
            p + "ffn_norm.weight": (HIDDEN,),
            p + "ffn_gate.weight": (ff, HIDDEN),
            p + "ffn_up.weight": (ff, HIDDEN),
            p + "ffn_down.weight": (HIDDEN, ff),
        }
    return shapes


def model_metadata(arch: str = "llama", num_layers: int = NUM_LAYERS, ff: int = FF) -> dict[str, tuple[Any, V]]:
    """The model's metadata as key -> (value, GGUF type); tests drop or override entries before writing."""
    tokens, types = vocab()
    return {
        "general.name": ("tiny-test", V.STRING),
        f"{arch}.block_count": (num_layers, V.UINT32),
        f"{arch}.context_length": (256, V.UINT32),
        f"{arch}.embedding_length": (HIDDEN, V.UINT32),
        f"{arch}.feed_forward_length": (ff, V.UINT32),
        f"{arch}.attention.head_count": (NUM_HEADS, V.UINT32),
        f"{arch}.attention.head_count_kv": (NUM_KV_HEADS, V.UINT32),
        f"{arch}.rope.freq_base": (10000.0, V.FLOAT32),
        f"{arch}.attention.layer_norm_rms_epsilon": (1e-5, V.FLOAT32),
        f"{arch}.rope.dimension_count": (HEAD_DIM, V.UINT32),
        "tokenizer.ggml.model": ("gpt2", V.STRING),
        "tokenizer.ggml.pre": ("gpt-2", V.STRING),
        "tokenizer.ggml.tokens": (tokens, V.ARRAY),
        "tokenizer.ggml.token_type": (types, V.ARRAY),
        "tokenizer.ggml.merges": (list(MERGES), V.ARRAY),
        "tokenizer.ggml.bos_token_id": (EOS_ID, V.UINT32),
        "tokenizer.ggml.eos_token_id": (EOS_ID, V.UINT32),
    }


def add_metadata(writer: GGUFWriter, kv: Mapping[str, tuple[Any, V]], drop_keys: Iterable[str] = ()) -> None:
    """Add typed key-value pairs to a writer, leaving out `drop_keys` (to make a key go missing)."""
    dropped = set(drop_keys)
    for key, (value, vtype) in kv.items():
        if key in dropped:
            continue
        if vtype == V.ARRAY:
            writer.add_array(key, value)
        else:
            writer.add_key_value(key, value, vtype)


def raises_naming(action: Callable[[], object], path: Path, *fragments: str, error: type[Exception]) -> str:
    """Run `action`; it must raise `error` (a GGUFError or subclass) whose message names `path` and every fragment."""
    with pytest.raises(GGUFError) as info:
        action()
    message = str(info.value)
    assert isinstance(info.value, error), f"{type(info.value).__name__}: {message}"
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def _random_blocks(rng: np.random.Generator, shape: tuple[int, ...], qtype: GGMLQuantizationType) -> np.ndarray:
    """Random raw blocks of `qtype` for `shape`: (rows, bytes per row) uint8, as GGUFWriter takes raw data."""
    block_size, _ = GGML_QUANT_SIZES[qtype]
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    # Small constant scales keep the dequantized weights (and the model's logits) finite.
    return random_blocks(rng, qtype, rows, shape[-1] // block_size, constant_f16_bits(1e-3))


def encode_tensor(
    rng: np.random.Generator, shape: tuple[int, ...], qtype: GGMLQuantizationType, scale: float = 0.05
) -> tuple[np.ndarray, GGMLQuantizationType | None]:
    """Data for `add_tensor`: random values stored as `qtype` (and the raw_dtype to pass, None for F32/F16)."""
    if qtype not in _QUANTIZABLE | {Q.F32, Q.F16}:
        return _random_blocks(rng, shape, qtype), qtype
    values = (rng.standard_normal(shape) * scale).astype(np.float32)
    if qtype == Q.F32:
        return values, None
    if qtype == Q.F16:
        return values.astype(np.float16), None
    return quantize(values, qtype), qtype


@dataclass
class ModelFile:
    """What `write_model` wrote: the path and the exact tensor data (to compare dequantized values against)."""

    path: Path
    tensors: dict[str, tuple[np.ndarray, GGMLQuantizationType]] = field(default_factory=dict)


def write_model(
    path: Path,
    *,
    arch: str = "llama",
    num_layers: int = NUM_LAYERS,
    ff: int = FF,
    qtypes: Mapping[str, GGMLQuantizationType] | None = None,
    default_qtype: GGMLQuantizationType = Q.F16,
    tied: bool = True,
    metadata: Mapping[str, tuple[Any, V]] | None = None,
    drop_keys: Iterable[str] = (),
    drop_tensors: Iterable[str] = (),
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    alignment: int | None = None,
    seed: int = 0,
) -> ModelFile:
    """Write a small llama-style model; every knob produces a specific (valid or invalid) variant.

    `qtypes` maps tensor names to storage types (norms default to F32, matrices to `default_qtype`); `metadata`
    adds or overrides keys; `shapes` overrides tensor shapes (to contradict the config); `arch` renames the
    architecture and its key prefix.
    """
    rng = np.random.default_rng(seed)
    writer = GGUFWriter(path, arch)
    if alignment is not None:
        writer.add_custom_alignment(alignment)
    add_metadata(writer, model_metadata(arch, num_layers, ff) | dict(metadata or {}), drop_keys)
    result = ModelFile(path)
    all_shapes = tensor_shapes(num_layers, ff, tied) | dict(shapes or {})
    dropped = set(drop_tensors)
    for name, shape in all_shapes.items():
        if name in dropped:
            continue
        default = Q.F32 if len(shape) == 1 else default_qtype
        qtype = (qtypes or {}).get(name, default)
        scale = 0.1 if len(shape) == 1 else 0.05
        data, raw_dtype = encode_tensor(rng, shape, qtype, scale)
        if len(shape) == 1 and qtype == Q.F32:
            data = data + np.float32(1.0)  # norm weights near 1, as in trained models
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
        result.tensors[name] = (data, qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return result


# -- locating fields in a file's bytes ---------------------------------------------------------------------

_SCALAR_SIZES = {
    V.UINT8: 1,
    V.INT8: 1,
    V.BOOL: 1,
    V.UINT16: 2,
    V.INT16: 2,
    V.UINT32: 4,
    V.INT32: 4,
    V.FLOAT32: 4,
    V.UINT64: 8,
    V.INT64: 8,
    V.FLOAT64: 8,
}


@dataclass(frozen=True)
class KVField:
    key: str
    key_offset: int  # the key's u64 length
    type_offset: int  # the u32 value type
    value_offset: int  # the value (for arrays: the u32 item type, then the u64 count at +4)
    end: int


@dataclass(frozen=True)
class TensorField:
    name: str
    name_offset: int  # the name's u64 length
    n_dims_offset: int
    dims_offset: int  # n_dims u64 values
    type_offset: int
    offset_offset: int  # the u64 data offset relative to the data section


@dataclass(frozen=True)
class Layout:
    version: int
    kvs: dict[str, KVField]
    tensors: dict[str, TensorField]
    tensor_info_end: int
    data_start: int


def _skip_value(data: bytes, pos: int, vtype: int) -> int:
    if vtype == V.STRING:
        (n,) = struct.unpack_from("<Q", data, pos)
        return pos + 8 + n
    if vtype == V.ARRAY:
        item_type, count = struct.unpack_from("<IQ", data, pos)
        pos += 12
        if item_type in _SCALAR_SIZES:
            return pos + count * _SCALAR_SIZES[V(item_type)]
        for _ in range(count):
            pos = _skip_value(data, pos, item_type)
        return pos
    return pos + _SCALAR_SIZES[V(vtype)]


def scan_header(data: bytes) -> Layout:
    """Where every key and tensor-info field of a valid little-endian GGUF file lies (independent of GGUFFile)."""
    magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", data, 0)
    assert magic == b"GGUF", magic
    pos = 24
    kvs: dict[str, KVField] = {}
    alignment = 32
    for _ in range(n_kv):
        key_offset = pos
        (n,) = struct.unpack_from("<Q", data, pos)
        key = data[pos + 8 : pos + 8 + n].decode()
        type_offset = pos + 8 + n
        (vtype,) = struct.unpack_from("<I", data, type_offset)
        end = _skip_value(data, type_offset + 4, vtype)
        kvs[key] = KVField(key, key_offset, type_offset, type_offset + 4, end)
        if key == "general.alignment":
            (alignment,) = struct.unpack_from("<I", data, type_offset + 4)
        pos = end
    tensors: dict[str, TensorField] = {}
    for _ in range(n_tensors):
        name_offset = pos
        (n,) = struct.unpack_from("<Q", data, pos)
        name = data[pos + 8 : pos + 8 + n].decode()
        n_dims_offset = pos + 8 + n
        (n_dims,) = struct.unpack_from("<I", data, n_dims_offset)
        dims_offset = n_dims_offset + 4
        type_offset = dims_offset + 8 * n_dims
        tensors[name] = TensorField(name, name_offset, n_dims_offset, dims_offset, type_offset, type_offset + 4)
        pos = type_offset + 12
    data_start = -(-pos // alignment) * alignment
    return Layout(version, kvs, tensors, pos, data_start)


# -- hand-packed headers ------------------------------------------------------------------------------------


def pack_string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def pack_kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    """One key-value pair; `payload` is the already packed value."""
    return pack_string(key) + struct.pack("<I", vtype) + payload


def pack_array(item_type: int, count: int, payload: bytes) -> bytes:
    return struct.pack("<IQ", item_type, count) + payload


def pack_tensor_info(name: str | bytes, ne: Iterable[int], qtype: int, offset: int = 0) -> bytes:
    dims = list(ne)
    return pack_string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, qtype, offset)


def pack_file(
    kvs: Iterable[bytes] = (),
    tensor_infos: Iterable[bytes] = (),
    *,
    data: bytes = b"",
    version: int = 3,
    n_kv: int | None = None,
    n_tensors: int | None = None,
    alignment: int = 32,
) -> bytes:
    """A whole file: header, key-values, tensor infos, padding to `alignment`, then `data`.

    The counts default to the real ones; pass others to lie about them.
    """
    kv_list, ti_list = list(kvs), list(tensor_infos)
    head = struct.pack(
        "<4sIQQ",
        b"GGUF",
        version,
        len(ti_list) if n_tensors is None else n_tensors,
        len(kv_list) if n_kv is None else n_kv,
    )
    body = head + b"".join(kv_list) + b"".join(ti_list)
    if data:
        body += b"\0" * (-len(body) % alignment) + data
    return body
