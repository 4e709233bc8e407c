"""Single-row matmuls (decode GEMV) over packed Q4_K and Q6_K weights, built for the code the compiler makes.

``packed_matmul``'s M = 1 path builds a 2-D ``[rows, K step]`` tile and multiplies it by x; the reshape and the
broadcast of x cost shared-memory round trips and barriers in every K step of its compiled loop, and its word
loads are 8 bytes wide because the row stride (K / 8 words) is derived inside the kernel, where the compiler cannot
see that it is a multiple of 4. The kernels here avoid both:

* Q6_K keeps the tile in its natural ``[rows, sub-blocks, 2, 16]`` shape, loads x in that shape (16 contiguous
  values per half sub-block) and reduces over K once, after the last step. On an H100 over the 7B shapes
  (benchmarks/gpu_gemv.py, BENCHMARKS.md): 40.6% of the copy bandwidth against packed_matmul's 36.2%.
* Q4_K loads a ``[rows, 32 words]`` tile per super-block (16-byte loads: the row strides are arguments, which
  Triton specializes as multiples of 16) and walks the 8 sub-blocks (nibble s of every word) with x's 32 values of
  sub-block s, a vector small enough that every thread loads the values of its own columns (no layout
  conversion, no barrier in the loop). A sub-block's 6-bit scales and mins arrive as one 8-byte word per row and
  super-block (the uint8 planes viewed as int64). Each thread holds several rows, so that every loaded x value
  serves them all. On an H100 over the 7B shapes: 40.4% of the copy bandwidth against packed_matmul's 31.1%.

Layout: :mod:`rocmforge.layers.packed_weight` (nibble s of word w of a super-block holds element 32s + w; Q6_K's
top 2 bits in bits 2s..2s+1 of halfword w). K splits across programs (float32 partials summed by
``packed_matmul``'s deterministic second kernel) until the grid has enough programs to keep memory busy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from gguf.constants import GGMLQuantizationType

from rocmforge.kernels.triton.packed_matmul import _auto_split, exact_float, q6_k_values, split_outputs, sum_splits
from rocmforge.layers.packed_weight import PackedWeight

__all__ = ["CONFIGS", "GEMV_TYPES", "GemvConfig", "packed_gemv"]

_Q = GGMLQuantizationType
GEMV_TYPES = frozenset({_Q.Q4_K, _Q.Q6_K})


@triton.jit
def _q6_k_partial(ql_ptr, qh_ptr, sc_ptr, d_ptr, x_ptr, rows, mask_n, sb, K, BLOCK_N: tl.constexpr):
    """x * W over super-block ``sb`` of ``rows`` [BN, 1, 1, 1]: [BN, 8, 2, 16] float32 (element 32s + 16h + u)."""
    s = tl.arange(0, 8)[None, :, None, None]
    h = tl.arange(0, 2)[None, None, :, None]
    u = tl.arange(0, 16)[None, None, None, :]
    w = q6_k_values(ql_ptr, qh_ptr, sc_ptr, d_ptr, rows, mask_n, sb, s, K)
    x = tl.load(x_ptr + sb * 256 + 32 * s + 16 * h + u).to(tl.float32)  # [1, 8, 2, 16]
    return w * x


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
def _q4_k_gemv_kernel(
    x_ptr, out_ptr, qs_ptr, sc_ptr, mn_ptr, d_ptr, dmin_ptr, N, K, stride_qs, stride_sb, SPLIT_K, BLOCK_N: tl.constexpr
):
    """sc_ptr, mn_ptr: int64 views of the scale and min planes (byte s of word sb = sub-block s of super-block sb)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = offs_n.to(tl.int64)
    w = tl.arange(0, 32)
    n_super = K // 256
    per_split = tl.cdiv(n_super, SPLIT_K)
    start = pid_k * per_split
    stop = tl.minimum(start + per_split, n_super)
    acc = tl.zeros((BLOCK_N, 32), dtype=tl.float32)
    for sb in range(start, stop):
        words = tl.load(qs_ptr + rows[:, None] * stride_qs + sb * 32 + w[None, :], mask=mask_n[:, None], other=0)
        scales = tl.load(sc_ptr + rows * stride_sb + sb, mask=mask_n, other=0)
        mins = tl.load(mn_ptr + rows * stride_sb + sb, mask=mask_n, other=0)
        d = tl.load(d_ptr + rows * stride_sb + sb, mask=mask_n, other=0.0).to(tl.float32)
        dmin = tl.load(dmin_ptr + rows * stride_sb + sb, mask=mask_n, other=0.0).to(tl.float32)
        for s in tl.static_range(8):
            xs = tl.load(x_ptr + sb * 256 + 32 * s + w).to(tl.float32)  # [32]: x of sub-block s
            sc = exact_float(((scales >> (8 * s)) & 0xFF).to(tl.int32))
            mn = exact_float(((mins >> (8 * s)) & 0xFF).to(tl.int32))
            q = exact_float((words >> (4 * s)) & 0xF)
            acc += (q * (d * sc)[:, None] - (dmin * mn)[:, None]) * xs[None, :]
    total = tl.sum(acc, axis=1)
    tl.store(out_ptr + pid_k * N + offs_n, total.to(out_ptr.dtype.element_ty), mask=mask_n)


@dataclass(frozen=True)
class GemvConfig:
    """Launch parameters: rows per program, the grid's target programs per SM (sets the K split), warps."""

    block_n: int = 8
    programs_per_sm: int = 8
    num_warps: int = 4


# Per type: Q6_K's won benchmarks/gpu_gemv.py's sweep of 27 configurations on an H100; Q4_K's won a sweep of 48
# on an H200 over the 7B decode shapes (BENCHMARKS.md).
CONFIGS: dict[GGMLQuantizationType, GemvConfig] = {
    _Q.Q4_K: GemvConfig(block_n=64, programs_per_sm=8, num_warps=2),
    _Q.Q6_K: GemvConfig(block_n=8, programs_per_sm=8, num_warps=4),
}


def packed_gemv(
    x: torch.Tensor, weight: PackedWeight, out_dtype: torch.dtype | None = None, config: GemvConfig | None = None
) -> torch.Tensor:
    """``x @ W.T`` for one row x (1, K) float32/float16/bfloat16 and a packed Q4_K or Q6_K weight: (1, N) of
    out_dtype. ``config`` overrides the type's :data:`CONFIGS` entry (tests, benchmarks)."""
    n, k = weight.shape
    if weight.qtype not in GEMV_TYPES:
        raise ValueError(f"packed_gemv: {weight.qtype.name} is not one of {sorted(t.name for t in GEMV_TYPES)}")
    if x.dim() != 2 or x.shape != (1, k):
        raise ValueError(f"packed_gemv: x must be (1, {k}), got {tuple(x.shape)}")
    if x.device != weight.device:
        raise ValueError(f"packed_gemv: x on {x.device}, weight on {weight.device}")
    config = config or CONFIGS[weight.qtype]
    out_dtype = out_dtype or x.dtype
    x = x.contiguous()
    grid_n = triton.cdiv(n, config.block_n)
    split = _auto_split(grid_n, k // 256, config.programs_per_sm, x.device)
    out, target = split_outputs(1, n, split, out_dtype, x.device)
    if weight.qtype == _Q.Q4_K:
        qs, sc, mn, d, dmin = (p.contiguous() for p in weight.planes)
        # 8 scale bytes per row and super-block as one word (K is a multiple of 256, so rows stay 8-byte aligned).
        sc64, mn64 = sc.view(torch.int64), mn.view(torch.int64)
        _q4_k_gemv_kernel[(grid_n, split)](
            x, target, qs, sc64, mn64, d, dmin, n, k, qs.stride(0), d.stride(0), split,
            BLOCK_N=config.block_n, num_warps=config.num_warps,
        )  # fmt: skip
    else:
        ql, qh, sc, d = (p.contiguous() for p in weight.planes)
        _q6_k_gemv_kernel[(grid_n, split)](
            x, target, ql, qh, sc, d, n, k, split, BLOCK_N=config.block_n, num_warps=config.num_warps
        )
    sum_splits(target, out, split)
    return out
