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

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from gguf.constants import GGMLQuantizationType

from rocmforge.kernels.triton.packed_matmul import _auto_split, split_outputs, sum_splits
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


@dataclass(frozen=True)
class GemvConfig:
    """Launch parameters: rows per program, the grid's target programs per SM (sets the K split), warps.

    The defaults won benchmarks/gpu_gemv.py's sweep of 27 configurations on an H100 (BENCHMARKS.md).
    """

    block_n: int = 8
    programs_per_sm: int = 8
    num_warps: int = 4


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
    out, target = split_outputs(1, n, split, out_dtype, x.device)
    ql, qh, sc, d = (p.contiguous() for p in weight.planes)
    _q6_k_gemv_kernel[(grid_n, split)](
        x, target, ql, qh, sc, d, n, k, split, BLOCK_N=config.block_n, num_warps=config.num_warps
    )
    sum_splits(target, out, split)
    return out
