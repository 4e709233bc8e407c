"""Fused dequantize + matmul for small M (decode): ``x (M, K) @ dequantize(raw (N, row_bytes)).T``.

The weights stay in their GGUF block bytes (a uint8 tensor on the device, one row of blocks per
output feature); each program owns ``BLOCK_N`` output features and all M (<= 16) rows of ``x``, walks
K in steps of 32 elements (one Q*_0/Q*_1 block, or one sub-block of a 256-element K-quant block),
dequantizes the ``[BLOCK_N, 32]`` weight tile in registers and accumulates ``x_tile * w_tile`` in
float32. Broadcast-multiply-sum instead of ``tl.dot`` keeps fp32 exact (no TF32) and works for any M.
That per-element kernel serves the rarer types; Q4_K, Q6_K, Q8_0, Q4_0 and the float types have decode
kernels that read whole blocks as 16/32-bit words (see the section below and BENCHMARKS.md).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from rocmforge.errors import UnsupportedModelError
from rocmforge.kernels.triton.dequant_blocks import BF16, F16, dequant_tile

__all__ = ["MAX_M", "TRITON_QUANT_TYPES", "quant_matmul"]

_Q = GGMLQuantizationType

# Bytes per element of the float types; they are walked as 32-element "blocks" like the rest.
_FLOAT_ELEMENT_BYTES: dict[GGMLQuantizationType, int] = {_Q.F32: 4, _Q.F16: 2, _Q.BF16: 2}

TRITON_QUANT_TYPES: frozenset[GGMLQuantizationType] = frozenset(
    {_Q.Q4_0, _Q.Q4_1, _Q.Q5_0, _Q.Q5_1, _Q.Q8_0, _Q.Q2_K, _Q.Q3_K, _Q.Q4_K, _Q.Q5_K, _Q.Q6_K}
) | frozenset(_FLOAT_ELEMENT_BYTES)

# Largest M this kernel takes: every program keeps all M rows of x in registers.
MAX_M = 16

# K step: one legacy block, or one K-quant sub-block (all ggml block sizes are multiples of 32).
_K_STEP = 32


@triton.jit
def _prologue(x_ptr, w_words, M, N, stride_xm, row_words, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's rows of x and of the weight (``row_words`` words each from ``w_words``).

    Returns ``offs_m``, ``offs_n``, ``mask_m`` [BLOCK_M, 1], ``mask_n`` [BLOCK_N, 1], ``rows`` [BLOCK_N, 1]
    (pointers to each weight row's first word) and ``x_rows`` [BLOCK_M, 1] (pointers to each row of x).
    """
    pid_n = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = (offs_m < M)[:, None]
    mask_n = (offs_n < N)[:, None]
    # int64: N * row_bytes exceeds 2**31 for large vocabularies (e.g. 152k x 896 F32 embeddings).
    rows = w_words + offs_n[:, None].to(tl.int64) * row_words
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm
    return offs_m, offs_n, mask_m, mask_n, rows, x_rows


@triton.jit
def _store(out_ptr, acc, offs_m, offs_n, M, N, stride_om):
    """Write the [BLOCK_M, BLOCK_N] float32 ``acc`` to ``out`` in its dtype."""
    out = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=(offs_m < M)[:, None] & (offs_n < N)[None, :])


@triton.jit
def _quant_matmul_kernel(
    x_ptr,
    w_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_om,
    QTYPE: tl.constexpr,
    QK: tl.constexpr,
    TYPE_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # row: [BLOCK_N, 1] pointers to each row's first block; x_rows: [BLOCK_M, 1].
    offs_m, offs_n, mask_m, mask_n, row, x_rows = _prologue(x_ptr, w_ptr, M, N, stride_xm, stride_wn, BLOCK_M, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        blk = row + (k0 // QK) * TYPE_SIZE
        e = (k0 % QK + offs_k)[None, :]  # [1, BLOCK_K] element indices inside the block
        w = dequant_tile(blk, e, mask_n, QTYPE)  # [BLOCK_N, BLOCK_K] float32
        xk = tl.load(x_rows + k0 + offs_k[None, :], mask=mask_m, other=0.0).to(tl.float32)
        acc += tl.sum(xk[:, None, :] * w[None, :, :], axis=2)
    _store(out_ptr, acc, offs_m, offs_n, M, N, stride_om)


# ---- decode kernels over whole blocks --------------------------------------------------------------
#
# The kernels below read each weight row as wide words (int32 where blocks are 4-byte aligned, int16
# where they are only 2-byte aligned, the element dtype for float weights) instead of one byte per
# element, and load the ``[BLOCK_N, KB blocks, words]`` tile of KB whole blocks per step, so that every
# thread has many independent loads in flight (decode is bound by HBM bandwidth, and there are only
# N / BLOCK_N programs to hide its latency). Nibbles are unpacked with shifts in registers. x is
# gathered in the order that matches the packing (x is tiny and stays in L1/L2). Scales multiply the
# per-sub-block dot products, not every element: ``sum x*(d*sc*q - dmin*m) = d*sc*sum(x*q) - dmin*m*sum(x)``.
# Partial sums stay per block (``acc[M, N, KB]``) and are reduced across K once at the end.


@triton.jit
def _x_gather(x_rows, mask_m, idx, mask_k):
    """x[m, idx] for every m: ``x_rows``/``mask_m`` [BLOCK_M, 1], ``idx``/``mask_k`` [1, C, W] -> [M, C, W] fp32."""
    return tl.load(x_rows[:, :, None] + idx, mask=mask_m[:, :, None] & mask_k, other=0.0).to(tl.float32)


@triton.jit
def _blocks(rows, mask_n, b, n_blocks, WORDS: tl.constexpr):
    """The blocks ``b`` [C] of every row: ``blk`` [BLOCK_N, C] pointers, their mask, and ``mask_k`` [1, C, 1]."""
    mask_b = (b < n_blocks)[None, :]
    blk = rows + (b * WORDS)[None, :]
    return blk, mask_n & mask_b, mask_b[:, :, None]


@triton.jit
def _f16_word(ptr, mask):
    """The int16 words at ``ptr`` read as float16 -> float32."""
    return tl.load(ptr, mask=mask, other=0).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _store_partials(out_ptr, acc, offs_m, offs_n, M, N, stride_om):
    """Reduce the per-block partial sums ``acc`` [BLOCK_M, BLOCK_N, C] across K and store them."""
    _store(out_ptr, tl.sum(acc, axis=2), offs_m, offs_n, M, N, stride_om)


@triton.jit
def _float_kernel(
    x_ptr,
    w_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_om,
    QTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    if QTYPE == F16:
        w_typed = w_ptr.to(tl.pointer_type(tl.float16))
    elif QTYPE == BF16:
        w_typed = w_ptr.to(tl.pointer_type(tl.bfloat16))
    else:
        w_typed = w_ptr.to(tl.pointer_type(tl.float32))
    offs_m, offs_n, mask_m, mask_n, rows, x_rows = _prologue(x_ptr, w_typed, M, N, stride_xm, K, BLOCK_M, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = (k0 + offs_k)[None, :]
        mask_k = ks < K
        w = tl.load(rows + ks, mask=mask_n & mask_k, other=0.0).to(tl.float32)
        xk = tl.load(x_rows + ks, mask=mask_m & mask_k, other=0.0).to(tl.float32)
        acc += xk[:, None, :] * w[None, :, :]
    _store_partials(out_ptr, acc, offs_m, offs_n, M, N, stride_om)


@triton.jit
def _q8_0_kernel(
    x_ptr, w_ptr, out_ptr, M, N, K, stride_xm, stride_om, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, KB: tl.constexpr
):
    # 34-byte blocks are only 2-byte aligned: 17 int16 words, word 0 = d, words 1..16 = 32 int8 (two per word).
    n_blocks = K // 32
    w16 = w_ptr.to(tl.pointer_type(tl.int16))
    offs_m, offs_n, mask_m, mask_n, rows, x_rows = _prologue(
        x_ptr, w16, M, N, stride_xm, n_blocks * 17, BLOCK_M, BLOCK_N
    )
    offs_b = tl.arange(0, KB)
    offs_j = tl.arange(0, 16)
    acc = tl.zeros((BLOCK_M, BLOCK_N, KB), dtype=tl.float32)
    for b0 in range(0, n_blocks, KB):
        b = b0 + offs_b
        blk, mask, mask_k = _blocks(rows, mask_n, b, n_blocks, 17)  # blk: [N, KB]
        d = _f16_word(blk, mask)
        v = tl.load(blk[:, :, None] + 1 + offs_j[None, None, :], mask=mask[:, :, None], other=0).to(tl.int32)
        q_even = ((v << 24) >> 24).to(tl.float32)  # low byte, sign-extended
        q_odd = (v >> 8).to(tl.float32)  # high byte: the int16's arithmetic shift keeps its sign
        idx = (b * 32)[None, :, None] + 2 * offs_j[None, None, :]
        x_even = _x_gather(x_rows, mask_m, idx, mask_k)
        x_odd = _x_gather(x_rows, mask_m, idx + 1, mask_k)
        dot = tl.sum(x_even[:, None] * q_even[None] + x_odd[:, None] * q_odd[None], axis=3)
        acc += dot * d[None]
    _store_partials(out_ptr, acc, offs_m, offs_n, M, N, stride_om)


@triton.jit
def _q4_0_kernel(
    x_ptr, w_ptr, out_ptr, M, N, K, stride_xm, stride_om, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, KB: tl.constexpr
):
    # 18-byte blocks, 2-byte aligned: 9 int16 words, word 0 = d, word 1 + j holds qs bytes 2j, 2j + 1:
    # low nibbles are elements 2j, 2j + 1, high nibbles elements 2j + 16, 2j + 17.
    n_blocks = K // 32
    w16 = w_ptr.to(tl.pointer_type(tl.int16))
    offs_m, offs_n, mask_m, mask_n, rows, x_rows = _prologue(
        x_ptr, w16, M, N, stride_xm, n_blocks * 9, BLOCK_M, BLOCK_N
    )
    offs_b = tl.arange(0, KB)
    offs_j = tl.arange(0, 8)
    acc = tl.zeros((BLOCK_M, BLOCK_N, KB), dtype=tl.float32)
    for b0 in range(0, n_blocks, KB):
        b = b0 + offs_b
        blk, mask, mask_k = _blocks(rows, mask_n, b, n_blocks, 9)
        d = _f16_word(blk, mask)
        v = tl.load(blk[:, :, None] + 1 + offs_j[None, None, :], mask=mask[:, :, None], other=0).to(tl.int32)
        idx = (b * 32)[None, :, None] + 2 * offs_j[None, None, :]
        dot = tl.zeros((BLOCK_M, BLOCK_N, KB, 8), dtype=tl.float32)
        for t in tl.static_range(4):
            # t: (byte 2j + t % 2, nibble t // 2) -> element 2j + t % 2 + 16 * (t // 2)
            q = (((v >> ((t % 2) * 8 + (t // 2) * 4)) & 0xF) - 8).to(tl.float32)
            xt = _x_gather(x_rows, mask_m, idx + (t % 2) + 16 * (t // 2), mask_k)
            dot += xt[:, None] * q[None]
        acc += tl.sum(dot, axis=3) * d[None]
    _store_partials(out_ptr, acc, offs_m, offs_n, M, N, stride_om)


@triton.jit
def _q4_k_kernel(
    x_ptr, w_ptr, out_ptr, M, N, K, stride_xm, stride_om, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, KB: tl.constexpr
):
    # 144-byte blocks = 36 int32 words: word 0 = d | dmin << 16, words 1..3 = the 12 scale bytes, words
    # 4..35 = qs. The tile's middle axis walks "chunks" c of 8 qs words (KB blocks x 4 chunks): chunk r of
    # a block holds sub-block 2r in its low nibbles and 2r + 1 in its high nibbles; nibble (t, hi) of word
    # jj is element 64r + 32hi + 4jj + t.
    C: tl.constexpr = KB * 4
    n_blocks = K // 256
    w32 = w_ptr.to(tl.pointer_type(tl.int32))
    offs_m, offs_n, mask_m, mask_n, rows, x_rows = _prologue(
        x_ptr, w32, M, N, stride_xm, n_blocks * 36, BLOCK_M, BLOCK_N
    )
    offs_c = tl.arange(0, C)
    offs_j = tl.arange(0, 8)
    acc = tl.zeros((BLOCK_M, BLOCK_N, C), dtype=tl.float32)
    r = offs_c % 4
    for b0 in range(0, n_blocks, KB):
        b = b0 + offs_c // 4  # block of each chunk
        blk, mask, mask_k = _blocks(rows, mask_n, b, n_blocks, 36)  # blk: [N, C]
        w = tl.load(
            blk[:, :, None] + 4 + (r * 8)[None, :, None] + offs_j[None, None, :], mask=mask[:, :, None], other=0
        )
        head = tl.load(blk, mask=mask, other=0)
        d = (head & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
        dmin = ((head >> 16) & 0xFFFF).to(tl.uint16).to(tl.float16, bitcast=True).to(tl.float32)
        # Scale/min of sub-blocks 2r and 2r + 1 (see _k_scale_min): bytes s % 4 of words 1, 2, 3.
        s1 = tl.load(blk + 1, mask=mask, other=0)
        s2 = tl.load(blk + 2, mask=mask, other=0)
        s3 = tl.load(blk + 3, mask=mask, other=0)
        idx = (b * 256 + r * 64)[None, :, None] + 4 * offs_j[None, None, :]
        for hi in tl.static_range(2):
            s = (2 * r + hi)[None, :]  # [1, C]
            sh = (s % 4) * 8
            a = (s1 >> sh) & 0xFF
            bb = (s2 >> sh) & 0xFF
            cc = (s3 >> sh) & 0xFF
            lower = s < 4
            sc = tl.where(lower, a & 0x3F, (cc & 0xF) | ((a >> 2) & 0x30)).to(tl.float32)
            mn = tl.where(lower, bb & 0x3F, ((cc >> 4) & 0xF) | ((bb >> 2) & 0x30)).to(tl.float32)
            dot = tl.zeros((BLOCK_M, BLOCK_N, C, 8), dtype=tl.float32)
            xsum = tl.zeros((BLOCK_M, C, 8), dtype=tl.float32)
            for t in tl.static_range(4):
                q = ((w >> (8 * t + 4 * hi)) & 0xF).to(tl.float32)
                xt = _x_gather(x_rows, mask_m, idx + 32 * hi + t, mask_k)
                dot += xt[:, None] * q[None]
                xsum += xt
            acc += (d * sc)[None] * tl.sum(dot, axis=3) - (dmin * mn)[None] * tl.sum(xsum, axis=2)[:, None, :]
    _store_partials(out_ptr, acc, offs_m, offs_n, M, N, stride_om)


@triton.jit
def _q6_k_kernel(
    x_ptr, w_ptr, out_ptr, M, N, K, stride_xm, stride_om, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, KB: tl.constexpr
):
    # 210-byte blocks, 2-byte aligned: 105 int16 words: ql = words 0..63, qh = 64..95, scales = 96..103,
    # d = 104. The tile's middle axis walks chunks c of 8 ql words (8 chunks a block): chunk c % 8 =
    # 4h + g is in half h; ql word 8(c % 8) + p holds elements 2(8g + p) + u of that half (u: byte, low
    # nibble) and 64 more (high nibble); their top 2 bits are field 2*nib + g // 2 of qh byte u of word
    # 64 + 16h + 8(g % 2) + p. Element e = 256b + 128h + 64nib + 16g + 2p + u, scale index 8h + 4nib + g.
    C: tl.constexpr = KB * 8
    n_blocks = K // 256
    w16 = w_ptr.to(tl.pointer_type(tl.int16))
    offs_m, offs_n, mask_m, mask_n, rows, x_rows = _prologue(
        x_ptr, w16, M, N, stride_xm, n_blocks * 105, BLOCK_M, BLOCK_N
    )
    offs_c = tl.arange(0, C)
    offs_p = tl.arange(0, 8)
    acc = tl.zeros((BLOCK_M, BLOCK_N, C), dtype=tl.float32)
    cb = offs_c % 8
    h = cb // 4
    g = cb % 4
    for b0 in range(0, n_blocks, KB):
        b = b0 + offs_c // 8
        blk, mask, mask_k = _blocks(rows, mask_n, b, n_blocks, 105)  # blk: [N, C]
        mask3 = mask[:, :, None]
        ql = tl.load(blk[:, :, None] + (cb * 8)[None, :, None] + offs_p[None, None, :], mask=mask3, other=0)
        qh_word = 64 + 16 * h + 8 * (g % 2)
        qh = tl.load(blk[:, :, None] + qh_word[None, :, None] + offs_p[None, None, :], mask=mask3, other=0)
        ql = ql.to(tl.int32)
        qh = qh.to(tl.int32)
        d = _f16_word(blk + 104, mask)
        sc_ptr = blk.to(tl.pointer_type(tl.int8)) + 192 + (8 * h + g)[None, :]
        idx = (b * 256 + 128 * h + 16 * g)[None, :, None] + 2 * offs_p[None, None, :]
        top_shift = (2 * (g // 2))[None, :, None]
        for nib in tl.static_range(2):
            sc = tl.load(sc_ptr + 4 * nib, mask=mask, other=0).to(tl.float32)
            dot = tl.zeros((BLOCK_M, BLOCK_N, C, 8), dtype=tl.float32)
            for u in tl.static_range(2):
                low = (ql >> (8 * u + 4 * nib)) & 0xF
                top = (qh >> (8 * u + 4 * nib + top_shift)) & 3
                q = ((low | (top << 4)) - 32).to(tl.float32)
                xt = _x_gather(x_rows, mask_m, idx + 64 * nib + u, mask_k)
                dot += xt[:, None] * q[None]
            acc += (d * sc)[None] * tl.sum(dot, axis=3)
    _store_partials(out_ptr, acc, offs_m, offs_n, M, N, stride_om)


# The whole-block decode kernels; the other types use the generic per-element kernel above.
_FAST_KERNELS = {
    _Q.F32: _float_kernel,
    _Q.F16: _float_kernel,
    _Q.BF16: _float_kernel,
    _Q.Q8_0: _q8_0_kernel,
    _Q.Q4_0: _q4_0_kernel,
    _Q.Q4_K: _q4_k_kernel,
    _Q.Q6_K: _q6_k_kernel,
}

# (BLOCK_N, K tile, num_warps) per type for M <= 2 and for larger M; the K tile is BLOCK_K elements
# for float weights, else KB blocks. Chosen so that one program's [BLOCK_M, BLOCK_N, K tile, words]
# product stays within ~64 fp32 registers a thread while each step still loads several KiB.
DECODE_CONFIGS: dict[GGMLQuantizationType, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    # Tuned on an H200 (benchmarks/gpu_quant_matmul.py --sweep, 4096x4096 + 11008x4096); F32 untuned.
    _Q.F32: ((16, 256, 4), (16, 64, 8)),
    _Q.F16: ((8, 1024, 4), (8, 128, 8)),
    _Q.BF16: ((8, 1024, 4), (8, 128, 8)),
    _Q.Q8_0: ((16, 8, 8), (32, 2, 4)),
    _Q.Q4_0: ((8, 16, 8), (32, 16, 8)),
    _Q.Q4_K: ((16, 4, 8), (32, 2, 8)),
    _Q.Q6_K: ((8, 2, 8), (32, 2, 8)),
}


def decode_config(qtype: GGMLQuantizationType, block_m: int) -> tuple[int, int, int]:
    """(BLOCK_N, K tile, num_warps) of a decode kernel for ``qtype`` at padded M ``block_m``."""
    small, large = DECODE_CONFIGS[qtype]
    return small if block_m <= 2 else large


def _block_n(block_m: int) -> int:
    # Keep the [BLOCK_M, BLOCK_N, 32] product near 2k-4k values per program.
    return max(16, 128 // block_m)


def quant_matmul(
    x: torch.Tensor,
    raw: torch.Tensor,
    qtype: GGMLQuantizationType,
    shape: tuple[int, int],
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``x @ dequantize(raw, qtype, shape).T`` with the weights dequantized inside a Triton kernel.

    Args:
        x: activations (M, K), M <= :data:`MAX_M`, float32/float16/bfloat16, on the kernel device
            (the GPU, or the CPU under ``TRITON_INTERPRET=1``).
        raw: the weight's GGUF bytes on the same device: uint8, (N, bytes_per_row) or flat and
            contiguous (only the bytes matter).
        qtype: the weight's ggml type, one of :data:`TRITON_QUANT_TYPES`.
        shape: the weight's logical shape ``(N, K)``.
        out_dtype: dtype of the result; ``x.dtype`` when None. Accumulation is float32 regardless.

    Returns:
        (M, N) tensor of ``out_dtype``.

    Raises:
        UnsupportedModelError: ``qtype`` has no kernel.
        ValueError: shapes, dtypes or devices do not fit.
    """
    qtype = GGMLQuantizationType(qtype)
    if qtype not in TRITON_QUANT_TYPES:
        raise UnsupportedModelError(f"quant_matmul: no Triton kernel for {qtype.name}")
    n, k = (int(s) for s in shape)
    if x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"quant_matmul: x of shape {tuple(x.shape)} does not match weight shape {(n, k)}")
    m = x.shape[0]
    if not 1 <= m <= MAX_M:
        raise ValueError(f"quant_matmul: M = {m} outside 1..{MAX_M} (small-M decode kernel)")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"quant_matmul: x must be float32, float16 or bfloat16, not {x.dtype}")
    if raw.dtype != torch.uint8 or raw.device != x.device:
        raise ValueError(f"quant_matmul: raw must be uint8 on {x.device}, got {raw.dtype} on {raw.device}")

    if qtype in _FLOAT_ELEMENT_BYTES:
        qk, type_size = _K_STEP, _K_STEP * _FLOAT_ELEMENT_BYTES[qtype]
    else:
        qk, type_size = GGML_QUANT_SIZES[qtype]
    if k % qk != 0:
        raise ValueError(f"quant_matmul: K = {k} is not a multiple of {qtype.name}'s block of {qk}")
    row_bytes = k // qk * type_size
    if raw.numel() != n * row_bytes:
        raise ValueError(f"quant_matmul: {qtype.name} weight {(n, k)} needs {n * row_bytes} bytes, got {raw.numel()}")

    raw = raw.contiguous()
    if raw.data_ptr() % 16:
        raw = raw.clone()  # the decode kernels read the bytes as 16/32-bit words; a fresh allocation is aligned
    x = x.contiguous()
    out = torch.empty((m, n), dtype=out_dtype or x.dtype, device=x.device)
    block_m = max(1, triton.next_power_of_2(m))
    fast = _FAST_KERNELS.get(qtype)
    if fast is not None:
        block_n, k_tile, num_warps = decode_config(qtype, block_m)
        grid = (triton.cdiv(n, block_n),)
        args = (x, raw, out, m, n, k, x.stride(0), out.stride(0))
        if qtype in _FLOAT_ELEMENT_BYTES:
            fast[grid](
                *args, QTYPE=int(qtype.value), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=k_tile, num_warps=num_warps
            )
        else:
            fast[grid](*args, BLOCK_M=block_m, BLOCK_N=block_n, KB=k_tile, num_warps=num_warps)
        return out
    block_n = _block_n(block_m)
    grid = (triton.cdiv(n, block_n),)
    _quant_matmul_kernel[grid](
        x,
        raw,
        out,
        m,
        n,
        k,
        x.stride(0),
        row_bytes,
        out.stride(0),
        QTYPE=int(qtype.value),
        QK=qk,
        TYPE_SIZE=type_size,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=_K_STEP,
    )
    return out
