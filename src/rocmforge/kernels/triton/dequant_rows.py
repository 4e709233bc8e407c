"""Dequantize whole rows of GGUF blocks into a float matrix on the device (prefill matmuls, embedding rows).

``dequantize_rows(raw (R, row_bytes) uint8) -> (R, K)`` in float32, bfloat16 or float16. The large-M path of
:class:`rocmforge.layers.quant_linear.QuantLinear` calls it on row chunks of a weight and hands the result to
``torch.matmul`` (cuBLAS / hipBLAS), and the quantized token embedding calls it on the gathered rows of the
looked-up tokens.

Each program owns ``BLOCK_R`` rows and one or more whole blocks along K. Q4_K, Q6_K and Q8_0 (the types of
Q4_K_M / Q8_0 files) have kernels that read each scale once per sub-block and broadcast it over the sub-block's
elements; the other block types go through the per-element helper ``dequant_tile`` (every element re-reads its
scale bytes, from L1). Float types are a torch view + cast. Arithmetic keeps the reference's order
(``(d * sc) * q - dmin * m``) so results match ``rocmforge.gguf.quants.dequantize`` to a rounding.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from rocmforge.errors import UnsupportedModelError
from rocmforge.kernels.triton.dequant_blocks import _byte, _f16, _k_scale_min, dequant_tile

__all__ = ["DEQUANT_ROW_TYPES", "dequantize_rows"]

_Q = GGMLQuantizationType

_FLOAT_DTYPES: dict[GGMLQuantizationType, torch.dtype] = {
    _Q.F32: torch.float32,
    _Q.F16: torch.float16,
    _Q.BF16: torch.bfloat16,
}
_BLOCK_TYPES: frozenset[GGMLQuantizationType] = frozenset(
    {_Q.Q4_0, _Q.Q4_1, _Q.Q5_0, _Q.Q5_1, _Q.Q8_0, _Q.Q2_K, _Q.Q3_K, _Q.Q4_K, _Q.Q5_K, _Q.Q6_K}
)
DEQUANT_ROW_TYPES: frozenset[GGMLQuantizationType] = _BLOCK_TYPES | frozenset(_FLOAT_DTYPES)

_OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Rows per program: with 256 elements a row-block that is 4096 values, 32 per thread at 4 warps.
_BLOCK_R = 16
# Blocks per program for the 32-element types, so that their programs cover as many elements as a K-quant's.
_KB_SMALL = 8


@triton.jit
def _tile_rows(w_ptr, out_ptr, R, row_bytes, K, BLOCK_R: tl.constexpr):
    """This program's rows: ``w_rows``/``out_rows`` [BLOCK_R, 1, 1] pointers to each row's start, and the row mask."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rows64 = rows.to(tl.int64)[:, None, None]  # int64: R * row_bytes and R * K overflow int32 for large vocabularies
    return w_ptr + rows64 * row_bytes, out_ptr + rows64 * K, (rows < R)[:, None, None]


@triton.jit
def _generic_kernel(
    w_ptr,
    out_ptr,
    R,
    row_bytes,
    K,
    QTYPE: tl.constexpr,
    QK: tl.constexpr,
    TYPE_SIZE: tl.constexpr,
    BLOCK_R: tl.constexpr,
    KB: tl.constexpr,
):
    # Tile [BLOCK_R, KB blocks, QK elements]; dequant_tile is elementwise, so it takes the 3-D tile as it is.
    w_rows, out_rows, mask_r = _tile_rows(w_ptr, out_ptr, R, row_bytes, K, BLOCK_R)
    b = (tl.program_id(1) * KB + tl.arange(0, KB))[None, :, None]
    mask = mask_r & (b < K // QK)
    e = tl.arange(0, QK)[None, None, :]
    w = dequant_tile(w_rows + b * TYPE_SIZE, e, mask, QTYPE)
    tl.store(out_rows + b * QK + e, w.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _q4_k_kernel(w_ptr, out_ptr, R, row_bytes, K, BLOCK_R: tl.constexpr):
    # One 144-byte block per program column: tile [BLOCK_R, 8 sub-blocks, 32]; d/dmin once per block and
    # scale/min once per sub-block (see dequant_blocks._dq_q4_k for the layout).
    w_rows, out_rows, mask = _tile_rows(w_ptr, out_ptr, R, row_bytes, K, BLOCK_R)
    b = tl.program_id(1)
    blk = w_rows + b * 144
    s = tl.arange(0, 8)[None, :, None]
    j = tl.arange(0, 32)[None, None, :]
    d = _f16(blk, mask)
    dmin = _f16(blk + 2, mask)
    sc, mn = _k_scale_min(blk, s, mask)  # [BLOCK_R, 8, 1]
    q = (_byte(blk + 16 + (s // 2) * 32 + j, mask) >> ((s % 2) * 4)) & 0xF
    w = (d * sc) * q.to(tl.float32) - dmin * mn
    tl.store(out_rows + b * 256 + s * 32 + j, w.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _q6_k_kernel(w_ptr, out_ptr, R, row_bytes, K, BLOCK_R: tl.constexpr):
    # One 210-byte block per program column: tile [BLOCK_R, 16 scale groups, 16]; element e = 16g + j
    # (see dequant_blocks._dq_q6_k for the layout); the int8 scale once per group, d once per block.
    w_rows, out_rows, mask = _tile_rows(w_ptr, out_ptr, R, row_bytes, K, BLOCK_R)
    b = tl.program_id(1)
    blk = w_rows + b * 210
    g = tl.arange(0, 16)[None, :, None]
    e = g * 16 + tl.arange(0, 16)[None, None, :]
    h = e // 128
    w = e % 128
    low = (_byte(blk + h * 64 + w % 64, mask) >> ((w // 64) * 4)) & 0xF
    top = (_byte(blk + 128 + h * 32 + w % 32, mask) >> ((w // 32) * 2)) & 3
    scale = tl.load(blk + 192 + g, mask=mask, other=0).to(tl.int8, bitcast=True).to(tl.float32)
    d = _f16(blk + 208, mask)
    x = (d * scale) * ((low | (top << 4)) - 32).to(tl.float32)
    tl.store(out_rows + b * 256 + e, x.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _q8_0_kernel(w_ptr, out_ptr, R, row_bytes, K, BLOCK_R: tl.constexpr, KB: tl.constexpr):
    # Tile [BLOCK_R, KB blocks, 32]: d once per block, then 32 int8 quants.
    w_rows, out_rows, mask_r = _tile_rows(w_ptr, out_ptr, R, row_bytes, K, BLOCK_R)
    b = (tl.program_id(1) * KB + tl.arange(0, KB))[None, :, None]
    mask = mask_r & (b < K // 32)
    blk = w_rows + b * 34
    j = tl.arange(0, 32)[None, None, :]
    d = _f16(blk, mask)
    q = tl.load(blk + 2 + j, mask=mask, other=0).to(tl.int8, bitcast=True).to(tl.float32)
    tl.store(out_rows + b * 32 + j, (d * q).to(out_ptr.dtype.element_ty), mask=mask)


def dequantize_rows(
    raw: torch.Tensor,
    qtype: GGMLQuantizationType,
    k: int,
    out_dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """Dequantize rows of GGUF blocks: ``raw`` (R, row_bytes) uint8 -> (R, k) of ``out_dtype``.

    Args:
        raw: the rows' bytes on the kernel device (the GPU, or the CPU under ``TRITON_INTERPRET=1``), uint8,
            (R, row_bytes) or flat; only the bytes matter.
        qtype: the ggml type, one of :data:`DEQUANT_ROW_TYPES`.
        k: elements per row (a whole number of blocks).
        out_dtype: float32, bfloat16 or float16. Values are computed in float32 and rounded once.

    Raises:
        UnsupportedModelError: ``qtype`` has no kernel.
        ValueError: sizes or dtypes do not fit.
    """
    qtype = GGMLQuantizationType(qtype)
    if qtype not in DEQUANT_ROW_TYPES:
        raise UnsupportedModelError(f"dequantize_rows: no kernel for {qtype.name}")
    if raw.dtype != torch.uint8:
        raise ValueError(f"dequantize_rows: raw must be uint8, got {raw.dtype}")
    if out_dtype not in _OUT_DTYPES:
        raise ValueError(f"dequantize_rows: out_dtype must be float32, bfloat16 or float16, not {out_dtype}")
    block, type_size = GGML_QUANT_SIZES[qtype]
    if k <= 0 or k % block:
        raise ValueError(f"dequantize_rows: K = {k} is not a positive multiple of {qtype.name}'s block of {block}")
    row_bytes = k // block * type_size
    if raw.numel() % row_bytes:
        raise ValueError(f"dequantize_rows: {raw.numel()} bytes are not whole {qtype.name} rows of {row_bytes} bytes")
    rows = raw.numel() // row_bytes
    raw = raw.contiguous().view(rows, row_bytes)

    if qtype in _FLOAT_DTYPES:
        if raw.storage_offset() % 4:
            raw = raw.clone()  # a typed view needs an aligned start; only odd slices of a caller's bytes get here
        return raw.view(_FLOAT_DTYPES[qtype]).view(rows, k).to(out_dtype)

    out = torch.empty((rows, k), dtype=out_dtype, device=raw.device)
    if rows == 0:
        return out
    n_blocks = k // block
    args = (raw, out, rows, row_bytes, k)
    if qtype == _Q.Q4_K:
        _q4_k_kernel[(triton.cdiv(rows, _BLOCK_R), n_blocks)](*args, BLOCK_R=_BLOCK_R)
    elif qtype == _Q.Q6_K:
        _q6_k_kernel[(triton.cdiv(rows, _BLOCK_R), n_blocks)](*args, BLOCK_R=_BLOCK_R)
    elif qtype == _Q.Q8_0:
        grid = (triton.cdiv(rows, _BLOCK_R), triton.cdiv(n_blocks, _KB_SMALL))
        _q8_0_kernel[grid](*args, BLOCK_R=_BLOCK_R, KB=_KB_SMALL)
    else:
        kb = 1 if block == 256 else _KB_SMALL
        _generic_kernel[(triton.cdiv(rows, _BLOCK_R), triton.cdiv(n_blocks, kb))](
            *args, QTYPE=int(qtype.value), QK=block, TYPE_SIZE=type_size, BLOCK_R=_BLOCK_R, KB=kb
        )
    return out
