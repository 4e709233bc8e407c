"""Single-row matmul (decode GEMV) over packed Q4_K weights, with the scales applied once per sub-block.

``packed_matmul``'s M = 1 path dequantizes every value (``(d * sc) * q - dmin * mn``) and multiplies it by x: on an
H100 it levelled off at ~1.5 T values/s, 31% of the copy bandwidth for Q4_K, bound by the instructions it spends
per value rather than by memory. This kernel regroups the sum of one 32-value sub-block s of a row:

    sum_w x[32s + w] * (d * sc_s * q[32s + w] - dmin * mn_s) = d * sc_s * sum_w x * q  -  dmin * mn_s * sum_w x

so per value it only unpacks the nibble and multiplies-adds it with x (the float conversion is the exact
``(2**23 + q) - 2**23`` trick); the scales, mins and the sums of x are per sub-block. It reads the packed planes of
:mod:`rocmforge.layers.packed_weight` (word w of a super-block holds element 32s + w in nibble s) as 3-D
``[rows, sub-blocks, words]`` tiles, without the reshape to 2-D that the tl.dot path needs. Each K step is one
256-value super-block; K splits across programs (float32 partials summed by ``packed_matmul``'s deterministic
kernel) until the grid has enough programs to keep HBM busy.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from gguf.constants import GGMLQuantizationType

from rocmforge.kernels.triton.packed_matmul import _auto_split, _sum_splits_kernel
from rocmforge.layers.packed_weight import PackedWeight

__all__ = ["GEMV_BLOCK_N", "GEMV_PROGRAMS_PER_SM", "q4_k_gemv"]

# Rows per program and the grid's target programs per SM; provisional, see BENCHMARKS.md.
GEMV_BLOCK_N = 16
GEMV_PROGRAMS_PER_SM = 8
GEMV_NUM_WARPS = 4


@triton.jit(do_not_specialize=["SPLIT_K"])
def _q4_k_gemv_kernel(
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
):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = offs_n.to(tl.int64)
    s = tl.arange(0, 8)  # sub-blocks of a super-block
    w = tl.arange(0, 32)  # words of a super-block
    n_super = K // 256
    per_split = tl.cdiv(n_super, SPLIT_K)
    start = pid_k * per_split
    stop = tl.minimum(start + per_split, n_super)
    qs_rows = qs_ptr + rows[:, None] * (K // 8) + w[None, :]  # [BN, 32]
    sub_rows = rows[:, None] * (K // 32) + s[None, :]  # [BN, 8]
    m2 = mask_n[:, None]
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for sb in range(start, stop):
        words = tl.load(qs_rows + sb * 32, mask=m2, other=0)  # [BN, 32]
        x = tl.load(x_ptr + sb * 256 + s[:, None] * 32 + w[None, :]).to(tl.float32)  # [8, 32]: x[32s + w]
        q = (words[:, None, :] >> (4 * s)[None, :, None]) & 0xF  # [BN, 8, 32]
        qf = (q | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
        qx = tl.sum(qf * x[None, :, :], axis=2)  # [BN, 8]
        sc = tl.load(sc_ptr + sub_rows + sb * 8, mask=m2, other=0).to(tl.float32)
        mn = tl.load(mn_ptr + sub_rows + sb * 8, mask=m2, other=0).to(tl.float32)
        d = tl.load(d_ptr + rows * (K // 256) + sb, mask=mask_n, other=0.0).to(tl.float32)
        dmin = tl.load(dmin_ptr + rows * (K // 256) + sb, mask=mask_n, other=0.0).to(tl.float32)
        x_sums = tl.sum(x, axis=1)  # [8]
        acc += d * tl.sum(sc * qx, axis=1) - dmin * tl.sum(mn * x_sums[None, :], axis=1)
    tl.store(out_ptr + pid_k * N + offs_n, acc.to(out_ptr.dtype.element_ty), mask=mask_n)


def q4_k_gemv(
    x: torch.Tensor,
    weight: PackedWeight,
    out_dtype: torch.dtype | None = None,
    block_n: int = GEMV_BLOCK_N,
    programs_per_sm: int = GEMV_PROGRAMS_PER_SM,
    num_warps: int = GEMV_NUM_WARPS,
) -> torch.Tensor:
    """``x @ W.T`` for one row x (1, K) float32/float16/bfloat16 and a packed Q4_K weight: (1, N) of out_dtype.

    ``block_n``, ``programs_per_sm`` and ``num_warps`` override the launch defaults (benchmark sweeps).
    """
    n, k = weight.shape
    if weight.qtype != GGMLQuantizationType.Q4_K:
        raise ValueError(f"q4_k_gemv: the weight is {weight.qtype.name}, not Q4_K")
    if x.dim() != 2 or x.shape != (1, k):
        raise ValueError(f"q4_k_gemv: x must be (1, {k}), got {tuple(x.shape)}")
    if x.device != weight.device:
        raise ValueError(f"q4_k_gemv: x on {x.device}, weight on {weight.device}")
    out_dtype = out_dtype or x.dtype
    x = x.contiguous()
    grid_n = triton.cdiv(n, block_n)
    split = _auto_split(grid_n, k // 256, programs_per_sm, x.device)
    out = torch.empty((1, n), dtype=out_dtype, device=x.device)
    target = out if split == 1 else torch.empty((split, 1, n), dtype=torch.float32, device=x.device)
    qs, sc, mn, d, dmin = (p.contiguous() for p in weight.planes)
    _q4_k_gemv_kernel[(grid_n, split)](
        x, target, qs, sc, mn, d, dmin, n, k, split, BLOCK_N=block_n, num_warps=num_warps
    )
    if split > 1:
        block = 1024
        _sum_splits_kernel[(triton.cdiv(n, block),)](target, out, n, SPLIT_K=split, BLOCK=block)
    return out
