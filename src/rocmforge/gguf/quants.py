"""Vectorized torch dequantization of GGUF (ggml) tensor types.

Each supported quantization type has one small function that turns a batch of raw blocks
(``(n_blocks, bytes_per_block)`` uint8) into float32 values, written straight into a slice of the
output. The bit layouts follow ggml (``ggml-common.h``) as mirrored by gguf-py's ``gguf/quants.py``,
which is the oracle the tests compare against bit for bit. To stay bit-exact every scale is an f16
field widened to f32 before any arithmetic, and products and differences are evaluated in the same
order as the reference (e.g. ``(d * q) - m``, never a fused or reassociated form).

Large tensors are processed in chunks of blocks so that the per-element integer intermediates stay
small (and mostly in cache); only the float32 output is allocated at full size.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from rocmforge.errors import GGUFError, UnsupportedModelError

__all__ = ["SUPPORTED_QUANT_TYPES", "dequantize", "quant_block_info"]

_Q = GGMLQuantizationType

# Elements per chunk. Each chunk costs ~10 torch ops (each a parallel region when multithreaded),
# so chunks must be large for that overhead to vanish, yet small enough that the uint8/float
# intermediates (a few bytes per element) stay in cache instead of costing full-tensor memory.
_CHUNK_ELEMENTS = 1 << 20


def quant_block_info(qtype: GGMLQuantizationType) -> tuple[int, int]:
    """Return ``(elements_per_block, bytes_per_block)`` for a ggml type.

    Works for every type ggml knows (supported by :func:`dequantize` or not), so callers can
    size tensors of any type; raises :class:`UnsupportedModelError` for an unknown type.
    """
    try:
        block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
    except (KeyError, ValueError) as exc:
        raise UnsupportedModelError(f"unknown ggml tensor type {qtype!r}") from exc
    return block_size, type_size


# --------------------------------------------------------------------------------------------
# Bit-twiddling helpers
#
# Blocks are short (18..210 bytes), so any torch op over a strided field of a block pays a
# per-row cost. The helpers therefore copy a field out once (``.contiguous()``), then work on
# contiguous uint8 tensors, and reorder with ``torch.stack`` (a copy per run of bytes) rather than
# broadcasting against tiny shift vectors, which defeats vectorization.
# --------------------------------------------------------------------------------------------


def _f16(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The f16 field at byte ``offset`` of every block, widened to float32, shape (n_blocks, 1)."""
    # Needs an even storage offset and even block size (true of every ggml block type).
    return blocks.view(torch.float16)[:, offset // 2 : offset // 2 + 1].to(torch.float32)


def _unpack(packed: torch.Tensor, group: int, width: int) -> torch.Tensor:
    """Spread the ``width``-bit fields of bytes into one uint8 each, in ggml's group-wise order.

    ``packed`` is (n, k * group) bytes. Each run of ``group`` bytes yields ``8 // width`` runs of
    ``group`` values: the lowest ``width`` bits of every byte, then the next ``width`` bits, ...
    Result: (n, k * (8 // width) * group), contiguous.
    """
    n = packed.shape[0]
    x = packed.contiguous().view(n, -1, group)
    mask = (1 << width) - 1
    parts = []
    for shift in range(0, 8, width):  # at most 8 bit positions, never a loop over blocks
        part = x >> shift if shift else x
        parts.append(part if shift + width == 8 else part & mask)
    return torch.stack(parts, dim=2).view(n, -1)


@functools.cache
def _bit_lut(set_value: int, clear_value: int, device: torch.device) -> torch.Tensor:
    """A (256,) int64 table whose entry ``b`` is 8 bytes: byte k = set/clear value by bit k of b."""
    bits = (torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1
    table = torch.where(bits.bool(), set_value, clear_value).to(torch.uint8)
    return table.view(torch.int64).view(256).to(device)


def _spread_bits(packed: torch.Tensor, set_value: int, clear_value: int) -> torch.Tensor:
    """(n, k) bytes read as a little-endian bit string -> (n, 8k) uint8, element j from bit j."""
    lut = _bit_lut(set_value, clear_value, packed.device)
    # One 8-byte table lookup per byte is far cheaper than eight shift-and-mask passes.
    spread = torch.index_select(lut, 0, packed.to(torch.int64).reshape(-1))
    return spread.view(torch.uint8).view(packed.shape[0], -1)


def _k_scale_min(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack the 12-byte Q4_K/Q5_K field into 8 six-bit scales and 8 six-bit mins, (n, 8) each."""
    #  0 EEAAAAAA   4 eeaaaaaa    8 eeeeEEEE
    #  1 FFBBBBBB   5 ffbbbbbb    9 ffffFFFF
    #  2 GGCCCCCC   6 ggcccccc   10 ggggGGGG
    #  3 HHDDDDDD   7 hhdddddd   11 hhhhHHHH
    # scales A..H (upper-case), mins a..h (lower-case)
    scales = scales.contiguous()
    d, m, md = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = torch.cat((d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)), dim=-1)
    mn = torch.cat((m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)), dim=-1)
    return sc, mn


# --------------------------------------------------------------------------------------------
# One function per type: (blocks (n, type_size) uint8, out (n, block_size) float32) -> None.
# Signed offsets are applied as wrapping uint8 arithmetic, then reinterpreted as int8: exact, and
# cheaper than a float pass.
# --------------------------------------------------------------------------------------------


def _q4_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # 18 B: d f16 | qs[16]; x[j] = d * ((qs[j] & 0xF) - 8), x[j+16] = d * ((qs[j] >> 4) - 8)
    d = _f16(blocks, 0)
    q = _unpack(blocks[:, 2:18], 16, 4).sub_(8).view(torch.int8).to(torch.float32)
    torch.mul(q, d, out=out)


def _q4_1(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # 20 B: d f16 | m f16 | qs[16]; nibbles as Q4_0, x = d * q + m
    d, m = _f16(blocks, 0), _f16(blocks, 2)
    q = _unpack(blocks[:, 4:20], 16, 4).to(torch.float32)
    torch.add(q.mul_(d), m, out=out)


def _q5_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # 22 B: d f16 | qh u32 (bit j = 5th bit of element j) | qs[16] low nibbles as Q4_0
    # x = d * (q - 16); as int8, q - 16 is the low nibble with 0xF0 or'ed in when the 5th bit is clear
    d = _f16(blocks, 0)
    q = _unpack(blocks[:, 6:22], 16, 4).bitwise_or_(_spread_bits(blocks[:, 2:6], 0x00, 0xF0))
    torch.mul(q.view(torch.int8).to(torch.float32), d, out=out)


def _q5_1(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # 24 B: d f16 | m f16 | qh u32 | qs[16]; q as Q5_0 without offset, x = d * q + m
    d, m = _f16(blocks, 0), _f16(blocks, 2)
    q = _unpack(blocks[:, 8:24], 16, 4).bitwise_or_(_spread_bits(blocks[:, 4:8], 0x10, 0x00))
    torch.add(q.to(torch.float32).mul_(d), m, out=out)


def _q8_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # 34 B: d f16 | qs int8[32]; x = d * q
    d = _f16(blocks, 0)
    torch.mul(blocks[:, 2:34].view(torch.int8).to(torch.float32), d, out=out)


def _q2_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # 84 B: scales[16] (lo nibble: scale, hi nibble: min, per 16 values) | qs[64] | d f16 | dmin f16
    # qs: 2 runs of 32 bytes, each giving 4 x 32 two-bit values (bits 0-1, 2-3, 4-5, 6-7)
    # x = (d * scale) * q - (dmin * min)
    n = blocks.shape[0]
    d, dmin = _f16(blocks, 80), _f16(blocks, 82)
    sc = blocks[:, 0:16].contiguous()
    dl = (d * (sc & 0x0F).to(torch.float32)).unsqueeze(-1)
    ml = (dmin * (sc >> 4).to(torch.float32)).unsqueeze(-1)
    q = _unpack(blocks[:, 16:80], 32, 2).to(torch.float32).view(n, 16, 16)
    torch.sub(q.mul_(dl), ml, out=out.view(n, 16, 16))


def _q3_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # 110 B: hmask[32] | qs[64] | scales[12] | d f16
    # qs: 2-bit lows as Q2_K; hmask: bit b of hmask[j] is the high bit of element 32*b + j
    # q = low - 4 when the high bit is *clear*, else low; x = (d * (scale - 32)) * q
    # 16 six-bit scales:
    #  0: IIIIAAAA   4: MMMMEEEE    8: MMIIEEAA
    #  1: JJJJBBBB   5: NNNNFFFF    9: NNJJFFBB
    #  2: KKKKCCCC   6: OOOOGGGG   10: OOKKGGCC
    #  3: LLLLDDDD   7: PPPPHHHH   11: PPLLHHDD
    n = blocks.shape[0]
    d = _f16(blocks, 108)
    lo = _unpack(blocks[:, 96:104], 8, 4)
    hi = _unpack(blocks[:, 104:108], 4, 2)
    scales = lo.bitwise_or_(hi << 4).sub_(32).view(torch.int8).to(torch.float32)
    dl = (d * scales).unsqueeze(-1)
    ql = _unpack(blocks[:, 32:96], 32, 2)
    qh = _unpack(blocks[:, 0:32], 32, 1)
    # low | (high << 2) is in 0..7 and equals q + 4
    q = ql.bitwise_or_(qh << 2).sub_(4).view(torch.int8).to(torch.float32).view(n, 16, 16)
    torch.mul(dl, q, out=out.view(n, 16, 16))


def _k_scales_mins(blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K head (d f16 | dmin f16 | scales[12]): per sub-block d * scale and dmin * min, [n, 8, 1]."""
    d, dmin = _f16(blocks, 0), _f16(blocks, 2)
    sc, mn = _k_scale_min(blocks[:, 4:16])
    return (d * sc.to(torch.float32)).unsqueeze(-1), (dmin * mn.to(torch.float32)).unsqueeze(-1)


def _q4_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # 144 B: d f16 | dmin f16 | scales[12] (see _k_scale_min) | qs[128]
    # qs: 4 runs of 32 bytes, each giving 32 low nibbles then 32 high nibbles (8 sub-blocks of 32)
    # x = (d * scale) * q - (dmin * min)
    n = blocks.shape[0]
    dl, ml = _k_scales_mins(blocks)
    q = _unpack(blocks[:, 16:144], 32, 4).to(torch.float32).view(n, 8, 32)
    torch.sub(q.mul_(dl), ml, out=out.view(n, 8, 32))


def _q5_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # 176 B: d f16 | dmin f16 | scales[12] | qh[32] | qs[128]
    # low nibbles as Q4_K; bit b of qh[j] is the 5th bit of element 32*b + j
    n = blocks.shape[0]
    dl, ml = _k_scales_mins(blocks)
    qh = _unpack(blocks[:, 16:48], 32, 1)
    q = _unpack(blocks[:, 48:176], 32, 4).bitwise_or_(qh << 4).to(torch.float32).view(n, 8, 32)
    torch.sub(q.mul_(dl), ml, out=out.view(n, 8, 32))


def _q6_k(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # 210 B: ql[128] | qh[64] | scales int8[16] | d f16
    # ql: 2 runs of 64 bytes -> 64 low nibbles then 64 high nibbles
    # qh: 2 runs of 32 bytes -> 4 x 32 two-bit values (bits 0-1, 2-3, 4-5, 6-7), the top 2 bits
    # x = (d * scale) * (q - 32), one scale per 16 values
    n = blocks.shape[0]
    d = _f16(blocks, 208)
    dl = (d * blocks[:, 192:208].view(torch.int8).to(torch.float32)).unsqueeze(-1)
    ql = _unpack(blocks[:, 0:128], 64, 4)
    qh = _unpack(blocks[:, 128:192], 32, 2)
    q = ql.bitwise_or_(qh << 4).sub_(32).view(torch.int8).to(torch.float32).view(n, 16, 16)
    torch.mul(dl, q, out=out.view(n, 16, 16))


_BLOCK_FUNCS: dict[GGMLQuantizationType, Callable[[torch.Tensor, torch.Tensor], None]] = {
    _Q.Q4_0: _q4_0,
    _Q.Q4_1: _q4_1,
    _Q.Q5_0: _q5_0,
    _Q.Q5_1: _q5_1,
    _Q.Q8_0: _q8_0,
    _Q.Q2_K: _q2_k,
    _Q.Q3_K: _q3_k,
    _Q.Q4_K: _q4_k,
    _Q.Q5_K: _q5_k,
    _Q.Q6_K: _q6_k,
}

_FLOAT_DTYPES: dict[GGMLQuantizationType, torch.dtype] = {
    _Q.F32: torch.float32,
    _Q.F16: torch.float16,
    _Q.BF16: torch.bfloat16,
}

SUPPORTED_QUANT_TYPES: frozenset[GGMLQuantizationType] = frozenset(_BLOCK_FUNCS) | frozenset(_FLOAT_DTYPES)


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def _raw_bytes(data: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A flat uint8 tensor over ``data``'s bytes, without copying when ``data`` is contiguous."""
    if isinstance(data, torch.Tensor):
        t = data.contiguous()
        return t.view(-1).view(torch.uint8) if t.dtype != torch.uint8 else t.view(-1)
    arr = np.ascontiguousarray(data)
    if not arr.dtype.isnative:
        # Big-endian float data from a byte-swapped file: tensor bytes must be little-endian here.
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.nbytes == 0:
        return torch.empty(0, dtype=torch.uint8)
    with warnings.catch_warnings():
        # GGUFReader hands out read-only views of its mmap. torch warns that it cannot mark the
        # tensor read-only; this tensor never leaves dequantize() and is only read, so the
        # warning is noise here. Only this exact message is silenced.
        warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)
        return torch.frombuffer(arr.reshape(-1).view(np.uint8), dtype=torch.uint8)


def dequantize(data: np.ndarray | torch.Tensor, qtype: GGMLQuantizationType, shape: tuple[int, ...]) -> torch.Tensor:
    """Dequantize one GGUF tensor to a new float32 tensor of ``shape``.

    Args:
        data: the tensor's raw data, either as ``gguf.GGUFReader`` exposes it
            (``ReaderTensor.data``: a numpy view of the file, uint8 for quantized types and BF16,
            float32/float16 for F32/F16) or as a torch tensor of the raw bytes. It is not copied
            beyond what the conversion itself needs, and the result never aliases it.
        qtype: the ggml type of the data.
        shape: the logical shape in torch order (reversed GGUF ``ne``); its last dimension must
            be a whole number of blocks.

    Returns:
        A float32 tensor of ``shape``, on the device of ``data`` (CPU for numpy input),
        bit-identical to ``gguf.quants.dequantize``.

    Raises:
        UnsupportedModelError: ``qtype`` is not in :data:`SUPPORTED_QUANT_TYPES`.
        GGUFError: the byte count of ``data`` does not match ``shape`` for ``qtype``.
    """
    qtype = GGMLQuantizationType(qtype)
    if qtype not in SUPPORTED_QUANT_TYPES:
        raise UnsupportedModelError(f"unsupported tensor type {qtype.name}")
    shape = tuple(int(s) for s in shape)
    block_size, type_size = quant_block_info(qtype)
    n_elements = math.prod(shape)
    row_length = shape[-1] if shape else 1
    if row_length % block_size != 0:
        raise GGUFError(
            f"{qtype.name} tensor of shape {shape}: row length {row_length} is not a multiple of "
            f"the block size {block_size}"
        )
    raw = _raw_bytes(data)
    n_blocks = n_elements // block_size
    if raw.numel() != n_blocks * type_size:
        raise GGUFError(f"{qtype.name} tensor of shape {shape} needs {n_blocks * type_size} bytes, got {raw.numel()}")

    if raw.storage_offset() % 8:
        # Typed views below need an aligned storage offset; only odd slices of a caller's tensor
        # get here, never reader data.
        raw = raw.clone()

    if qtype in _FLOAT_DTYPES:
        values = raw.view(_FLOAT_DTYPES[qtype])
        # F32 is a plain copy so that the result does not alias (possibly read-only) file memory.
        out = values.clone() if qtype == _Q.F32 else values.to(torch.float32)
        return out.view(shape)

    func = _BLOCK_FUNCS[qtype]
    blocks = raw.view(n_blocks, type_size)
    out = torch.empty((n_blocks, block_size), dtype=torch.float32, device=raw.device)
    step = max(1, _CHUNK_ELEMENTS // block_size)
    for start in range(0, n_blocks, step):
        func(blocks[start : start + step], out[start : start + step])
    return out.view(shape)
