"""Bit-exactness of rocmforge's torch dequantization against gguf-py's numpy reference.

Only synthetic data: random blocks whose f16 scale fields are finite (NaN/inf scales would make
the comparison depend on NaN payload propagation, which neither side promises), random bytes
everywhere else.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.gguf_reader import GGUFReader
from gguf.gguf_writer import GGUFWriter
from gguf.quants import dequantize as reference_dequantize
from hypothesis import given, settings
from hypothesis import strategies as st

import rocmforge.gguf.quants as quants_module
from rocmforge.errors import GGUFError, UnsupportedModelError
from rocmforge.gguf.quants import SUPPORTED_QUANT_TYPES, dequantize, quant_block_info
from tests.quant_blocks import BLOCK_TYPES, F16_SCALE_OFFSETS, finite_f16_bits, random_blocks

Q = GGMLQuantizationType

FLOAT_TYPES = [Q.F32, Q.F16, Q.BF16]


def random_rows(qtype: GGMLQuantizationType, rows: int, blocks_per_row: int, seed: int) -> np.ndarray:
    """Raw bytes of a (rows, blocks_per_row * block_size) tensor, as GGUFReader shapes them."""
    return random_blocks(np.random.default_rng(seed), qtype, rows, blocks_per_row)


def random_floats(qtype: GGMLQuantizationType, rows: int, cols: int, seed: int) -> np.ndarray:
    """Finite random values the way GGUFReader exposes them (BF16 comes as raw uint8 bytes)."""
    rng = np.random.default_rng(seed)
    if qtype == Q.F32:
        bits = rng.integers(0, 1 << 32, (rows, cols), dtype=np.uint32)
        return np.where((bits & 0x7F800000) == 0x7F800000, bits & 0xBFFFFFFF, bits).view(np.float32)
    if qtype == Q.F16:
        return finite_f16_bits(rng, rows * cols).reshape(rows, cols).view(np.float16)
    bits = rng.integers(0, 1 << 16, (rows, cols), dtype=np.uint16)
    bits = np.where((bits & 0x7F80) == 0x7F80, bits & 0xBFFF, bits).astype(np.uint16)
    return bits.view(np.uint8)


def logical_shape(qtype: GGMLQuantizationType, data: np.ndarray) -> tuple[int, ...]:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    if data.dtype != np.uint8:
        return data.shape
    return (*data.shape[:-1], data.shape[-1] // type_size * block_size)


def assert_bit_exact(data: np.ndarray, qtype: GGMLQuantizationType) -> None:
    shape = logical_shape(qtype, data)
    expected = torch.from_numpy(np.ascontiguousarray(reference_dequantize(data, qtype), dtype=np.float32))
    actual = dequantize(data, qtype, shape)
    assert actual.dtype == torch.float32
    assert tuple(actual.shape) == shape
    # Compare bit patterns: equal, signed zeros included.
    assert torch.equal(actual.view(torch.int32), expected.reshape(shape).view(torch.int32))


# --------------------------------------------------------------------------------------------
# Bit-exactness
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize(("rows", "blocks_per_row"), [(1, 1), (3, 2), (67, 5)])
def test_block_types_match_reference(qtype: GGMLQuantizationType, rows: int, blocks_per_row: int) -> None:
    assert_bit_exact(random_rows(qtype, rows, blocks_per_row, seed=rows * 100 + blocks_per_row), qtype)


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda t: t.name)
@settings(max_examples=8, deadline=None)
@given(rows=st.integers(1, 40), blocks_per_row=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_block_types_match_reference_random_shapes(
    qtype: GGMLQuantizationType, rows: int, blocks_per_row: int, seed: int
) -> None:
    assert_bit_exact(random_rows(qtype, rows, blocks_per_row, seed), qtype)


@pytest.mark.parametrize("qtype", FLOAT_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize(("rows", "cols"), [(1, 1), (1, 896), (37, 64)])
def test_float_types_match_reference(qtype: GGMLQuantizationType, rows: int, cols: int) -> None:
    assert_bit_exact(random_floats(qtype, rows, cols, seed=rows + cols), qtype)


@pytest.mark.parametrize("qtype", FLOAT_TYPES, ids=lambda t: t.name)
def test_float_types_keep_nan_and_inf(qtype: GGMLQuantizationType) -> None:
    values = np.array([np.nan, np.inf, -np.inf, -0.0, 1.5], dtype=np.float32)
    if qtype == Q.F32:
        data: np.ndarray = values
    elif qtype == Q.F16:
        data = values.astype(np.float16)
    else:
        data = (values.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
    out = dequantize(data, qtype, (5,))
    torch.testing.assert_close(out, torch.from_numpy(values), equal_nan=True, rtol=0, atol=0)
    assert torch.signbit(out[3])


def test_large_q4_k_tensor() -> None:
    # ~20M elements: many chunks, a final partial chunk, rows spanning chunk boundaries.
    assert_bit_exact(random_rows(Q.Q4_K, 4864, 16, seed=7), Q.Q4_K)


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda t: t.name)
def test_chunking_does_not_change_results(qtype: GGMLQuantizationType, monkeypatch: pytest.MonkeyPatch) -> None:
    data = random_rows(qtype, 13, 7, seed=3)
    shape = logical_shape(qtype, data)
    whole = dequantize(data, qtype, shape)
    block_size, _ = GGML_QUANT_SIZES[qtype]
    monkeypatch.setattr(quants_module, "_CHUNK_ELEMENTS", 3 * block_size)  # 91 blocks: 31 chunks
    assert torch.equal(dequantize(data, qtype, shape).view(torch.int32), whole.view(torch.int32))


# --------------------------------------------------------------------------------------------
# Inputs and outputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q6_K, Q.BF16, Q.F16, Q.F32], ids=lambda t: t.name)
def test_torch_byte_tensor_input(qtype: GGMLQuantizationType) -> None:
    data = random_rows(qtype, 4, 2, seed=1) if qtype in F16_SCALE_OFFSETS else random_floats(qtype, 4, 64, seed=1)
    shape = logical_shape(qtype, data)
    from_numpy = dequantize(data, qtype, shape)
    raw = torch.from_numpy(np.ascontiguousarray(data).reshape(-1).view(np.uint8).copy())
    assert torch.equal(dequantize(raw, qtype, shape).view(torch.int32), from_numpy.view(torch.int32))
    # A view at an odd byte offset (misaligned for f16/f32 views) gives the same values.
    shifted = torch.cat((torch.zeros(1, dtype=torch.uint8), raw))[1:]
    assert torch.equal(dequantize(shifted, qtype, shape).view(torch.int32), from_numpy.view(torch.int32))


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.F32], ids=lambda t: t.name)
def test_read_only_input_no_warning_and_no_aliasing(qtype: GGMLQuantizationType) -> None:
    data = random_rows(qtype, 2, 2, seed=5) if qtype in F16_SCALE_OFFSETS else random_floats(qtype, 2, 8, seed=5)
    data.flags.writeable = False
    before = data.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = dequantize(data, qtype, logical_shape(qtype, data))
    out.fill_(0.0)  # the result must be ours to write, never the caller's (read-only) memory
    assert np.array_equal(data.view(np.uint8), before.view(np.uint8))


def test_one_and_three_dimensional_shapes() -> None:
    data = random_rows(Q.Q8_0, 6, 2, seed=2)
    flat = dequantize(data, Q.Q8_0, (6 * 64,))
    cube = dequantize(data, Q.Q8_0, (2, 3, 64))
    assert tuple(flat.shape) == (384,)
    assert torch.equal(cube.reshape(-1), flat)


def test_tensors_read_back_through_gguf_reader(tmp_path: Path) -> None:
    path = tmp_path / "synthetic.gguf"
    writer = GGUFWriter(path, "llama")
    written: dict[str, tuple[GGMLQuantizationType, np.ndarray]] = {}
    for i, qtype in enumerate(BLOCK_TYPES):
        written[f"blk.{i}"] = (qtype, random_rows(qtype, 3, 2, seed=i))
    for qtype in FLOAT_TYPES:
        written[qtype.name] = (qtype, random_floats(qtype, 3, 32, seed=11))
    for name, (qtype, data) in written.items():
        writer.add_tensor(name, data, raw_dtype=qtype if data.dtype == np.uint8 else None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    reader = GGUFReader(path)
    assert len(reader.tensors) == len(written)
    for tensor in reader.tensors:
        qtype, data = written[tensor.name]
        assert tensor.tensor_type == qtype
        shape = tuple(int(n) for n in reversed(tensor.shape))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            actual = dequantize(tensor.data, tensor.tensor_type, shape)
        expected = dequantize(data, qtype, logical_shape(qtype, data))
        assert torch.equal(actual.view(torch.int32), expected.view(torch.int32)), tensor.name


# --------------------------------------------------------------------------------------------
# API surface and errors
# --------------------------------------------------------------------------------------------


def test_supported_types() -> None:
    assert frozenset(BLOCK_TYPES) | frozenset(FLOAT_TYPES) == SUPPORTED_QUANT_TYPES


def test_quant_block_info() -> None:
    assert quant_block_info(Q.Q4_K) == (256, 144)
    assert quant_block_info(Q.Q8_0) == (32, 34)
    assert quant_block_info(Q.F32) == (1, 4)
    for qtype, sizes in GGML_QUANT_SIZES.items():
        assert quant_block_info(qtype) == sizes


@pytest.mark.parametrize("qtype", [Q.IQ2_XXS, Q.TQ1_0, Q.Q8_1, Q.I32, Q.MXFP4], ids=lambda t: t.name)
def test_unsupported_type(qtype: GGMLQuantizationType) -> None:
    _, type_size = GGML_QUANT_SIZES[qtype]
    with pytest.raises(UnsupportedModelError, match=qtype.name):
        dequantize(np.zeros(type_size, dtype=np.uint8), qtype, (GGML_QUANT_SIZES[qtype][0],))


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q8_0, Q.F16, Q.BF16], ids=lambda t: t.name)
def test_wrong_byte_count(qtype: GGMLQuantizationType) -> None:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    data = np.zeros(3 * type_size + 1, dtype=np.uint8)
    with pytest.raises(GGUFError, match=r"needs \d+ bytes") as excinfo:
        dequantize(data, qtype, (3, block_size))
    assert type(excinfo.value) is GGUFError


def test_row_not_whole_blocks() -> None:
    with pytest.raises(GGUFError, match="block size"):
        dequantize(np.zeros(34 * 2, dtype=np.uint8), Q.Q8_0, (4, 16))
