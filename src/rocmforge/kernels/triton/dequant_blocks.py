"""Triton helpers that dequantize a tile of GGUF weight elements straight from the block bytes.

Every helper has the same contract:

    _dq_<type>(blk, e, mask) -> float32 tile

* ``blk``: a ``[BLOCK_N, 1]`` tensor of uint8 pointers, each at the first byte of the block that
  holds this tile's elements for one output row;
* ``e``: a ``[1, BLOCK_K]`` int32 tensor of element indices inside that block (0 .. QK-1);
* ``mask``: ``[BLOCK_N, 1]``, False for rows past N (their loads return 0).

Each element is computed on its own: its byte address and bit shift are derived from ``e``. That
costs a gather per element and per scale (the scale bytes are re-read by every element of a
sub-block, from cache) but keeps every layout a few lines that can be checked against
``rocmforge.gguf.quants`` line by line. Arithmetic follows the reference's order (``(d * sc) * q
- (dmin * m)``, f16 scales widened to f32 first), so results match it to a rounding or two.

Byte layouts (ggml-common.h; offsets in bytes, element index e inside the block):

    Q4_0  18 B: d f16 | qs[16]            q = nibble(qs[e % 16], e // 16) - 8          x = d*q
    Q4_1  20 B: d f16 | m f16 | qs[16]    q = nibble(qs[e % 16], e // 16)              x = d*q + m
    Q5_0  22 B: d f16 | qh u32 | qs[16]   q = nibble | bit(qh, e) << 4, minus 16       x = d*q
    Q5_1  24 B: d f16 | m f16 | qh u32 | qs[16]   q = nibble | bit(qh, e) << 4        x = d*q + m
    Q8_0  34 B: d f16 | qs int8[32]                                                     x = d*q
    Q2_K  84 B: scales[16] | qs[64] | d f16 | dmin f16
    Q3_K 110 B: hmask[32] | qs[64] | scales[12] | d f16
    Q4_K 144 B: d f16 | dmin f16 | scales[12] | qs[128]
    Q5_K 176 B: d f16 | dmin f16 | scales[12] | qh[32] | qs[128]
    Q6_K 210 B: ql[128] | qh[64] | scales int8[16] | d f16

(nibble(b, 0) is the low nibble of b, nibble(b, 1) the high one.) The K-quant layouts are drawn
next to their helpers.
"""

# No ``from __future__ import annotations`` here: it is harmless for Triton 3.x (which accepts
# string annotations such as "tl.constexpr"), but these helpers take no constexpr parameters and
# the kernel module that does is where the convention matters.

import triton
import triton.language as tl

# ggml type ids (gguf.constants.GGMLQuantizationType values), as constexprs so that jit code can
# branch on them at compile time.
F32 = tl.constexpr(0)
F16 = tl.constexpr(1)
Q4_0 = tl.constexpr(2)
Q4_1 = tl.constexpr(3)
Q5_0 = tl.constexpr(6)
Q5_1 = tl.constexpr(7)
Q8_0 = tl.constexpr(8)
Q2_K = tl.constexpr(10)
Q3_K = tl.constexpr(11)
Q4_K = tl.constexpr(12)
Q5_K = tl.constexpr(13)
Q6_K = tl.constexpr(14)
BF16 = tl.constexpr(30)


@triton.jit
def _byte(ptr, mask):
    """One uint8 per pointer, widened to int32 so that later subtractions cannot wrap."""
    return tl.load(ptr, mask=mask, other=0).to(tl.int32)


@triton.jit
def _f16(ptr, mask):
    """The little-endian f16 at ``ptr`` (two bytes, any alignment), widened to f32."""
    lo = tl.load(ptr, mask=mask, other=0).to(tl.uint16)
    hi = tl.load(ptr + 1, mask=mask, other=0).to(tl.uint16)
    return ((hi << 8) | lo).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _dq_q4_0(blk, e, mask):
    d = _f16(blk, mask)
    q = (_byte(blk + 2 + e % 16, mask) >> ((e // 16) * 4)) & 0xF
    return d * (q - 8).to(tl.float32)


@triton.jit
def _dq_q4_1(blk, e, mask):
    d = _f16(blk, mask)
    m = _f16(blk + 2, mask)
    q = (_byte(blk + 4 + e % 16, mask) >> ((e // 16) * 4)) & 0xF
    return d * q.to(tl.float32) + m


@triton.jit
def _dq_q5_0(blk, e, mask):
    # qh is a little-endian u32: bit e (byte e // 8, bit e % 8) is the 5th bit of element e.
    d = _f16(blk, mask)
    hi = (_byte(blk + 2 + e // 8, mask) >> (e % 8)) & 1
    lo = (_byte(blk + 6 + e % 16, mask) >> ((e // 16) * 4)) & 0xF
    return d * ((lo | (hi << 4)) - 16).to(tl.float32)


@triton.jit
def _dq_q5_1(blk, e, mask):
    d = _f16(blk, mask)
    m = _f16(blk + 2, mask)
    hi = (_byte(blk + 4 + e // 8, mask) >> (e % 8)) & 1
    lo = (_byte(blk + 8 + e % 16, mask) >> ((e // 16) * 4)) & 0xF
    return d * (lo | (hi << 4)).to(tl.float32) + m


@triton.jit
def _dq_q8_0(blk, e, mask):
    d = _f16(blk, mask)
    q = tl.load(blk + 2 + e, mask=mask, other=0).to(tl.int8, bitcast=True)
    return d * q.to(tl.float32)


@triton.jit
def _dq_q2_k(blk, e, mask):
    # scales[i] (one per 16 elements): low nibble = scale, high nibble = min.
    # qs: 2 halves of 32 bytes; in half h = e // 128, element w = e % 128 is the 2-bit field
    # (w // 32) of byte w % 32 (bits 0-1 for w < 32, 2-3 for w < 64, ...).
    # x = (d * scale) * q - (dmin * min)
    d = _f16(blk + 80, mask)
    dmin = _f16(blk + 82, mask)
    sm = _byte(blk + e // 16, mask)
    w = e % 128
    q = (_byte(blk + 16 + (e // 128) * 32 + w % 32, mask) >> ((w // 32) * 2)) & 3
    return (d * (sm & 0xF).to(tl.float32)) * q.to(tl.float32) - dmin * (sm >> 4).to(tl.float32)


@triton.jit
def _dq_q3_k(blk, e, mask):
    # Low 2 bits in qs (offset 32) laid out as Q2_K's; the high bit of element e is bit e // 32
    # of hmask[e % 32]. q = low | high << 2, minus 4 (the high bit is set for non-negative q).
    # 16 six-bit signed scales (offset 96), scale i = lo4(i) | hi2(i) << 4, minus 32:
    #   lo4(i): i < 8 -> low nibble of byte i, else high nibble of byte i - 8
    #   hi2(i): 2-bit field i // 4 of byte 8 + i % 4
    #    0: IIIIAAAA   4: MMMMEEEE    8: MMIIEEAA
    #    1: JJJJBBBB   5: NNNNFFFF    9: NNJJFFBB
    #    2: KKKKCCCC   6: OOOOGGGG   10: OOKKGGCC
    #    3: LLLLDDDD   7: PPPPHHHH   11: PPLLHHDD
    # x = (d * scale) * q
    d = _f16(blk + 108, mask)
    i = e // 16
    lo4 = (_byte(blk + 96 + i % 8, mask) >> ((i // 8) * 4)) & 0xF
    hi2 = (_byte(blk + 104 + i % 4, mask) >> ((i // 4) * 2)) & 3
    scale = (lo4 | (hi2 << 4)) - 32
    w = e % 128
    low = (_byte(blk + 32 + (e // 128) * 32 + w % 32, mask) >> ((w // 32) * 2)) & 3
    high = (_byte(blk + e % 32, mask) >> (e // 32)) & 1
    q = (low | (high << 2)) - 4
    return (d * scale.to(tl.float32)) * q.to(tl.float32)


@triton.jit
def _k_scale_min(blk, s, mask):
    """Six-bit scale and min of sub-block s (0..7) from the 12-byte field at ``blk + 4`` (Q4_K, Q5_K).

    0 EEAAAAAA   4 eeaaaaaa    8 eeeeEEEE
    1 FFBBBBBB   5 ffbbbbbb    9 ffffFFFF
    2 GGCCCCCC   6 ggcccccc   10 ggggGGGG
    3 HHDDDDDD   7 hhdddddd   11 hhhhHHHH
    scales A..H (upper case), mins a..h (lower case)
    """
    a = _byte(blk + 4 + s % 4, mask)  # byte s % 4: scale s (s < 4) or top bits of scale s (s >= 4)
    b = _byte(blk + 8 + s % 4, mask)  # byte 4 + s % 4: min s (s < 4) or top bits of min s (s >= 4)
    c = _byte(blk + 12 + s % 4, mask)  # byte 8 + s % 4: low nibbles of scale and min s (s >= 4)
    lower = s < 4
    sc = tl.where(lower, a & 0x3F, (c & 0xF) | ((a >> 2) & 0x30))
    mn = tl.where(lower, b & 0x3F, (c >> 4) | ((b >> 2) & 0x30))
    return sc.to(tl.float32), mn.to(tl.float32)


@triton.jit
def _dq_q4_k(blk, e, mask):
    # 8 sub-blocks of 32 (s = e // 32). qs: 4 runs of 32 bytes; run e // 64 holds sub-block
    # 2r in its low nibbles and 2r + 1 in its high nibbles: byte 16 + (e // 64) * 32 + e % 32.
    # x = (d * scale) * q - (dmin * min)
    d = _f16(blk, mask)
    dmin = _f16(blk + 2, mask)
    s = e // 32
    sc, mn = _k_scale_min(blk, s, mask)
    q = (_byte(blk + 16 + (e // 64) * 32 + e % 32, mask) >> ((s % 2) * 4)) & 0xF
    return (d * sc) * q.to(tl.float32) - dmin * mn


@triton.jit
def _dq_q5_k(blk, e, mask):
    # Low nibbles as Q4_K (qs at offset 48); the 5th bit of element e is bit e // 32 of qh[e % 32].
    d = _f16(blk, mask)
    dmin = _f16(blk + 2, mask)
    s = e // 32
    sc, mn = _k_scale_min(blk, s, mask)
    lo = (_byte(blk + 48 + (e // 64) * 32 + e % 32, mask) >> ((s % 2) * 4)) & 0xF
    hi = (_byte(blk + 16 + e % 32, mask) >> s) & 1
    return (d * sc) * (lo | (hi << 4)).to(tl.float32) - dmin * mn


@triton.jit
def _dq_q6_k(blk, e, mask):
    # Two halves of 128 elements (h = e // 128, w = e % 128):
    #   ql (offset 0): 64 bytes per half, w < 64 in the low nibbles, w >= 64 in the high ones
    #   qh (offset 128): 32 bytes per half, 2-bit field w // 32 of byte w % 32: the top 2 bits
    # q = (low4 | top2 << 4) - 32; one int8 scale per 16 elements (offset 192); x = (d * scale) * q
    d = _f16(blk + 208, mask)
    h = e // 128
    w = e % 128
    low = (_byte(blk + h * 64 + w % 64, mask) >> ((w // 64) * 4)) & 0xF
    top = (_byte(blk + 128 + h * 32 + w % 32, mask) >> ((w // 32) * 2)) & 3
    scale = tl.load(blk + 192 + e // 16, mask=mask, other=0).to(tl.int8, bitcast=True).to(tl.float32)
    return (d * scale) * ((low | (top << 4)) - 32).to(tl.float32)


@triton.jit
def dequant_tile(blk, e, mask, QTYPE: tl.constexpr):
    """Dequantize the elements ``e`` of the blocks at ``blk`` for ggml type ``QTYPE`` (see module doc)."""
    if QTYPE == Q4_0:
        w = _dq_q4_0(blk, e, mask)
    elif QTYPE == Q4_1:
        w = _dq_q4_1(blk, e, mask)
    elif QTYPE == Q5_0:
        w = _dq_q5_0(blk, e, mask)
    elif QTYPE == Q5_1:
        w = _dq_q5_1(blk, e, mask)
    elif QTYPE == Q8_0:
        w = _dq_q8_0(blk, e, mask)
    elif QTYPE == Q2_K:
        w = _dq_q2_k(blk, e, mask)
    elif QTYPE == Q3_K:
        w = _dq_q3_k(blk, e, mask)
    elif QTYPE == Q4_K:
        w = _dq_q4_k(blk, e, mask)
    elif QTYPE == Q5_K:
        w = _dq_q5_k(blk, e, mask)
    elif QTYPE == Q6_K:
        w = _dq_q6_k(blk, e, mask)
    elif QTYPE == F32:
        b0 = tl.load(blk + e * 4, mask=mask, other=0).to(tl.uint32)
        b1 = tl.load(blk + e * 4 + 1, mask=mask, other=0).to(tl.uint32)
        b2 = tl.load(blk + e * 4 + 2, mask=mask, other=0).to(tl.uint32)
        b3 = tl.load(blk + e * 4 + 3, mask=mask, other=0).to(tl.uint32)
        w = ((b3 << 24) | (b2 << 16) | (b1 << 8) | b0).to(tl.float32, bitcast=True)
    elif QTYPE == F16:
        w = _f16(blk + e * 2, mask)
    else:
        tl.static_assert(QTYPE == BF16, "dequant_tile: unsupported ggml type")
        # bf16 is the top half of an f32: widen the two bytes and shift them into place.
        lo = tl.load(blk + e * 2, mask=mask, other=0).to(tl.uint32)
        hi = tl.load(blk + e * 2 + 1, mask=mask, other=0).to(tl.uint32)
        w = ((hi << 24) | (lo << 16)).to(tl.float32, bitcast=True)
    return w
