"""Single-row matmul (decode GEMV) over packed Q6_K weights, with the tile kept in its natural shape.

``packed_matmul``'s M = 1 path builds each K step's Q6_K tile as ``[rows, sub-blocks, 2, 16]`` and reshapes it to
2-D before multiplying by x. Here the tile keeps that shape: x is loaded in the same shape (16 contiguous values
per half sub-block), the products accumulate in a float32 tile of that shape, and the reduction over K happens
once, after the last step. Measured on an H100 over the 7B shapes (benchmarks/gpu_gemv.py, BENCHMARKS.md): 40.6%
of the copy bandwidth against packed_matmul's 36.2% for Q6_K; the same change for Q4_K gained nothing (30.3%
against 31.2%), so Q4_K stays with packed_matmul.

Layout: :mod:`rocmforge.layers.packed_weight` (the low nibble of element 32s + w in nibble s of word w of a
super-block, its top 2 bits in bits 2s..2s+1 of halfword w). K splits across programs (float32 partials summed by
``packed_matmul``'s deterministic second kernel) until the grid has enough programs to keep memory busy.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from gguf.constants import GGMLQuantizationType

from rocmforge.kernels.triton.packed_matmul import _auto_split, _sum_splits_kernel
from rocmforge.layers.packed_weight import PackedWeight

__all__ = ["GEMV_TYPES", "GemvConfig", "packed_gemv"]

_Q = GGMLQuantizationType
GEMV_TYPES = frozenset({_Q.Q6_K})


@triton.jit
def _q6_k_partial(ql_ptr, qh_ptr, sc_ptr, d_ptr, x_ptr, rows, mask_n, sb, K, BLOCK_N: tl.constexpr):
    """x * W over super-block ``sb`` of ``rows`` [BN, 1, 1, 1]: [BN, 8, 2, 16] float32 (element 32s + 16h + u)."""
    s = tl.arange(0, 8)[None, :, None, None]
    h = tl.arange(0, 2)[None, None, :, None]
    u = tl.arange(0, 16)[None, None, None, :]
    word = rows * (K // 8) + sb * 32 + 16 * h + u  # [BN, 1, 2, 16]
    ql = tl.load(ql_ptr + word, mask=mask_n, other=0)
    qh = tl.load(qh_ptr + word, mask=mask_n, other=0).to(tl.int32)
    sc = tl.load(sc_ptr + rows * (K // 16) + sb * 16 + 2 * s + h, mask=mask_n, other=0).to(tl.float32)
    d = tl.load(d_ptr + rows * (K // 256) + sb, mask=mask_n, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + sb * 256 + 32 * s + 16 * h + u).to(tl.float32)  # [1, 8, 2, 16]
    q = ((ql >> (4 * s)) & 0xF) | (((qh >> (2 * s)) & 3) << 4)  # 0..63
    qf = (q | 0x4B000000).to(tl.float32, bitcast=True) - 8388640.0  # (2**23 + q) - (2**23 + 32) = q - 32
    return (d * sc) * qf * x


@triton.jit(do_not_specialize=["SPLIT_K"])
def _q6_k_gemv_kernel(x_ptr, out_ptr, ql_ptr, qh_ptr, sc_ptr, d_ptr, N, K, SPLIT_K, BLOCK_N: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_super = K // 256
    per_split = tl.cdiv(n_super, SPLIT_K)
    start = pid_k * per_split
    stop = tl.minimum(start + per_split, n_super)
    rows = offs_n.to(tl.int64)[:, None, None, None]
    mask_n = (offs_n < N)[:, None, None, None]
    acc = tl.zeros((BLOCK_N, 8, 2, 16), dtype=tl.float32)
    for sb in range(start, stop):
        acc += _q6_k_partial(ql_ptr, qh_ptr, sc_ptr, d_ptr, x_ptr, rows, mask_n, sb, K, BLOCK_N)
    total = tl.sum(tl.sum(tl.sum(acc, axis=3), axis=2), axis=1)
    tl.store(out_ptr + pid_k * N + offs_n, total.to(out_ptr.dtype.element_ty), mask=offs_n < N)


@triton.jit
def _dp4a(a, b, USE_ASM: tl.constexpr):
    """Per element: the sum of the 4 products of a's unsigned bytes and b's signed bytes (int32)."""
    if USE_ASM:
        return tl.inline_asm_elementwise(
            asm="dp4a.u32.s32 $0, $1, $2, $3;",
            constraints="=r,r,r,r",
            args=[a, b, tl.zeros_like(a)],
            dtype=tl.int32,
            is_pure=True,
            pack=1,
        )
    total = tl.zeros_like(a)
    for k in tl.static_range(4):
        ak = (a >> (8 * k)) & 0xFF
        bk = (b >> (8 * k)) & 0xFF
        total += ak * (bk - ((bk & 0x80) << 1))  # bk as a signed byte
    return total


@triton.jit
def _quantize_x(x_ptr):
    """32 x values (4 runs of 8 words x 4 bytes at ``x_ptr`` + 64 j + 4 w + b) per sub-block j of 4 sub-blocks:
    int8 quants packed 4 to a word [4, 8], their scales [4] and the float sums of x [4]."""
    j = tl.arange(0, 4)[:, None, None]
    w = tl.arange(0, 8)[None, :, None]
    b = tl.arange(0, 4)[None, None, :]
    x = tl.load(x_ptr + 64 * j + 4 * w + b).to(tl.float32)  # [4, 8, 4]
    amax = tl.max(tl.max(tl.abs(x), axis=2), axis=1)  # [4]
    inv = tl.where(amax > 0.0, 127.0 / tl.maximum(amax, 1e-30), 0.0)  # an all-zero block gets quants 0
    xq = tl.floor(x * inv[:, None, None] + 0.5).to(tl.int32)  # -127..127
    words = tl.sum((xq & 0xFF) << (8 * b), axis=2)  # [4, 8]: byte b = value 4w + b
    return words, amax / 127.0, tl.sum(tl.sum(x, axis=2), axis=1)


@triton.jit(do_not_specialize=["SPLIT_K"])
def _q4_k_int8_gemv_kernel(
    x_ptr,
    out_ptr,
    qs_ptr,
    sc_ptr,
    mn_ptr,
    d_ptr,
    dmin_ptr,
    N,
    K,
    SPLIT_K,
    BLOCK_N: tl.constexpr,
    USE_ASM: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_super = K // 256
    per_split = tl.cdiv(n_super, SPLIT_K)
    start = pid_k * per_split
    stop = tl.minimum(start + per_split, n_super)
    rows = offs_n.to(tl.int64)[:, None, None]
    mask3 = (offs_n < N)[:, None, None]
    rows2 = offs_n.to(tl.int64)[:, None]
    mask2 = (offs_n < N)[:, None]
    j3 = tl.arange(0, 4)[None, :, None]
    w3 = tl.arange(0, 8)[None, None, :]
    j2 = tl.arange(0, 4)[None, :]
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for sb in range(start, stop):
        # Sub-block 2j's quants are the low nibbles of words 8j..8j+7, sub-block 2j + 1's the high ones.
        words = tl.load(qs_ptr + rows * (K // 8) + sb * 32 + 8 * j3 + w3, mask=mask3, other=0)  # [BN, 4, 8]
        x_lo, dx_lo, sum_lo = _quantize_x(x_ptr + sb * 256)
        x_hi, dx_hi, sum_hi = _quantize_x(x_ptr + sb * 256 + 32)
        dot_lo = tl.sum(_dp4a(words & 0x0F0F0F0F, x_lo[None, :, :], USE_ASM), axis=2).to(tl.float32)  # [BN, 4]
        dot_hi = tl.sum(_dp4a((words >> 4) & 0x0F0F0F0F, x_hi[None, :, :], USE_ASM), axis=2).to(tl.float32)
        sub = rows2 * (K // 32) + sb * 8 + 2 * j2  # [BN, 4]: sub-block 2j
        sc_lo = tl.load(sc_ptr + sub, mask=mask2, other=0).to(tl.float32)
        sc_hi = tl.load(sc_ptr + sub + 1, mask=mask2, other=0).to(tl.float32)
        mn_lo = tl.load(mn_ptr + sub, mask=mask2, other=0).to(tl.float32)
        mn_hi = tl.load(mn_ptr + sub + 1, mask=mask2, other=0).to(tl.float32)
        d = tl.load(d_ptr + rows2 * (K // 256) + sb, mask=mask2, other=0.0).to(tl.float32)  # [BN, 1]
        dmin = tl.load(dmin_ptr + rows2 * (K // 256) + sb, mask=mask2, other=0.0).to(tl.float32)
        scaled = sc_lo * dx_lo[None, :] * dot_lo + sc_hi * dx_hi[None, :] * dot_hi
        mins = mn_lo * sum_lo[None, :] + mn_hi * sum_hi[None, :]
        acc += tl.sum(d * scaled - dmin * mins, axis=1)
    tl.store(out_ptr + pid_k * N + offs_n, acc.to(out_ptr.dtype.element_ty), mask=offs_n < N)


def q4_k_int8_gemv(
    x: torch.Tensor, weight: PackedWeight, out_dtype: torch.dtype | None = None, config: GemvConfig | None = None
) -> torch.Tensor:
    """``x @ W.T`` for one row x (1, K) and a packed Q4_K weight, with x quantized to int8 per 32 values.

    llama.cpp's GPU approach: each 32-value sub-block of x becomes int8 quants and a float scale (amax / 127), the
    products of quants run as integer dot products of 4 byte pairs (``dp4a`` on NVIDIA GPUs; emulated with shifts
    elsewhere, e.g. Triton's interpreter), and the sub-block's scale, the weight's scale and min apply once per
    sub-block. The error this adds is that of rounding x to 8 bits per sub-block (at most amax / 254 a value).
    """
    n, k = weight.shape
    if weight.qtype != _Q.Q4_K:
        raise ValueError(f"q4_k_int8_gemv: the weight is {weight.qtype.name}, not Q4_K")
    if x.dim() != 2 or x.shape != (1, k):
        raise ValueError(f"q4_k_int8_gemv: x must be (1, {k}), got {tuple(x.shape)}")
    config = config or GemvConfig(block_n=16)
    out_dtype = out_dtype or x.dtype
    x = x.contiguous()
    grid_n = triton.cdiv(n, config.block_n)
    split = _auto_split(grid_n, k // 256, config.programs_per_sm, x.device)
    out = torch.empty((1, n), dtype=out_dtype, device=x.device)
    target = out if split == 1 else torch.empty((split, 1, n), dtype=torch.float32, device=x.device)
    use_asm = x.device.type == "cuda" and torch.version.hip is None
    _q4_k_int8_gemv_kernel[(grid_n, split)](
        x,
        target,
        *(p.contiguous() for p in weight.planes),
        n,
        k,
        split,
        BLOCK_N=config.block_n,
        USE_ASM=use_asm,
        num_warps=config.num_warps,
    )
    if split > 1:
        block = 1024
        _sum_splits_kernel[(triton.cdiv(n, block),)](target, out, n, SPLIT_K=split, BLOCK=block)
    return out


class GemvConfig:
    """Launch parameters: rows per program, the grid's target programs per SM (sets the K split), warps.

    The defaults won benchmarks/gpu_gemv.py's sweep of 27 configurations on an H100 (BENCHMARKS.md).
    """

    def __init__(self, block_n: int = 8, programs_per_sm: int = 8, num_warps: int = 4) -> None:
        self.block_n = block_n
        self.programs_per_sm = programs_per_sm
        self.num_warps = num_warps


def packed_gemv(
    x: torch.Tensor, weight: PackedWeight, out_dtype: torch.dtype | None = None, config: GemvConfig | None = None
) -> torch.Tensor:
    """``x @ W.T`` for one row x (1, K) float32/float16/bfloat16 and a packed Q6_K weight: (1, N) of out_dtype."""
    n, k = weight.shape
    if weight.qtype not in GEMV_TYPES:
        raise ValueError(f"packed_gemv: {weight.qtype.name} is not one of {sorted(t.name for t in GEMV_TYPES)}")
    if x.dim() != 2 or x.shape != (1, k):
        raise ValueError(f"packed_gemv: x must be (1, {k}), got {tuple(x.shape)}")
    if x.device != weight.device:
        raise ValueError(f"packed_gemv: x on {x.device}, weight on {weight.device}")
    config = config or GemvConfig()
    out_dtype = out_dtype or x.dtype
    x = x.contiguous()
    grid_n = triton.cdiv(n, config.block_n)
    split = _auto_split(grid_n, k // 256, config.programs_per_sm, x.device)
    out = torch.empty((1, n), dtype=out_dtype, device=x.device)
    target = out if split == 1 else torch.empty((split, 1, n), dtype=torch.float32, device=x.device)
    ql, qh, sc, d = (p.contiguous() for p in weight.planes)
    _q6_k_gemv_kernel[(grid_n, split)](
        x, target, ql, qh, sc, d, n, k, split, BLOCK_N=config.block_n, num_warps=config.num_warps
    )
    if split > 1:
        block = 1024
        _sum_splits_kernel[(triton.cdiv(n, block),)](target, out, n, SPLIT_K=split, BLOCK=block)
    return out
