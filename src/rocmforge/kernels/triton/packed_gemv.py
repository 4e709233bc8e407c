"""Single-row matmuls (decode GEMV) over packed Q4_K and Q6_K weights, built for the code the compiler makes.

``packed_matmul``'s M = 1 path builds a 2-D ``[rows, K step]`` tile and multiplies it by x; the reshape and the
broadcast of x cost shared-memory round trips and barriers in every K step of its compiled loop, and its word
loads are 8 bytes wide because the row stride (K / 8 words) is derived inside the kernel, where the compiler cannot
see that it is a multiple of 4. The kernels here avoid both:

* Q6_K keeps the tile in its natural ``[rows, sub-blocks, 2, 16]`` shape, loads x in that shape (16 contiguous
  values per half sub-block) and reduces over K once, after the last step. On an H100 over the 7B shapes
  (benchmarks/gpu_gemv.py, BENCHMARKS.md): 40.6% of the copy bandwidth against packed_matmul's 36.2%.
* Q4_K reads the column tiles of ``packed_weight`` (64 rows, a sub-block's 16 bytes of each row in a row):
  a program owns one tile and a range of super-blocks; each thread holds whole sub-blocks (4 words) of 1 to 4
  rows, so every load is a 16-byte vector and the sums over a sub-block stay in its registers (no shuffles, no
  layout conversion, one barrier after the loop). Nibbles become floats by moving them into a float's mantissa
  (16 + q) and the 16 comes off per sub-block. On an H200 (BENCHMARKS.md, "Q4_K column tiles"): 1.2-1.4x
  faster than the previous row-major kernel.

Layout: :mod:`rocmforge.layers.packed_weight` (Q6_K: nibble s of word w of a super-block holds element 32s + w,
the top 2 bits in bits 2s..2s+1 of halfword w). K splits across programs (float32 partials summed by
``packed_matmul``'s deterministic second kernel) until the grid has enough programs to keep memory busy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from gguf.constants import GGMLQuantizationType

from rocmforge.kernels.triton.packed_matmul import (
    MIN_STEPS_PER_SPLIT,
    _auto_split,
    exact_float,
    q6_k_values,
    split_outputs,
    sum_splits,
)
from rocmforge.layers.packed_weight import Q4_K_TILE, PackedWeight

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


@triton.jit(do_not_specialize=["SPLIT_K", "ONE"])
def _q4_k_gemv_kernel(x_ptr, out_ptr, qs_ptr, sc_ptr, mn_ptr, d_ptr, dmin_ptr, N, K, SPLIT_K, ONE, TQ: tl.constexpr):
    """One column tile (64 rows) of the Q4_K planes times x, over a range of super-blocks; see the module doc.

    The tile is [CPT, 8 (sub-block g), TQ, 4 (word j)] for row c = cc * TQ + cq: the loads' only contiguous axis
    is j, so Triton gives every load one layout with j in a thread (16-byte word loads, x loads of 4 values
    shared by the thread's CPT rows) and the per-sub-block sums stay in registers. ``ONE`` (1 at run time) hides
    the scale planes' contiguity along c, which would otherwise earn them another layout and a conversion
    through shared memory in every step."""
    CPT: tl.constexpr = 64 // TQ
    t = tl.program_id(0).to(tl.int64)
    pid_k = tl.program_id(1)
    cc = tl.arange(0, CPT)[:, None, None, None]
    g = tl.arange(0, 8)[None, :, None, None]
    cq = tl.arange(0, TQ)[None, None, :, None]
    j = tl.arange(0, 4)[None, None, None, :]
    c = cc * TQ + cq
    n_super = K // 256
    per_split = tl.cdiv(n_super, SPLIT_K)
    start = pid_k * per_split
    stop = tl.minimum(start + per_split, n_super)
    # Offsets inside one super-block of the tile (loop-invariant) and the super-block's bases.
    word_off = (g * 64 + c) * 4 + j  # [CPT, 8, TQ, 4]
    sub_off = (g * 64 + c) * ONE + 0 * j  # sc, mn
    row_off = c * ONE + 0 * (g + j)  # d, dmin: the full tile shape too, or they get a layout of their own
    x_off = 32 * g + j  # [1, 8, 1, 4]: element 32g + 4e + j is nibble e of word j
    acc = tl.zeros((CPT, 8, TQ, 1), dtype=tl.float32)
    for sb in range(start, stop):
        sub_base = (t * (K // 32) + sb * 8) * 64
        row_base = (t * n_super + sb) * 64
        words = tl.load(qs_ptr + sub_base * 4 + word_off)
        sc = exact_float(tl.load(sc_ptr + sub_base + sub_off).to(tl.int32))
        mn = exact_float(tl.load(mn_ptr + sub_base + sub_off).to(tl.int32))
        d = tl.load(d_ptr + row_base + row_off).to(tl.float32)
        dmin = tl.load(dmin_ptr + row_base + row_off).to(tl.float32)
        xe = tl.load(x_ptr + sb * 256 + x_off).to(tl.float32)
        dot = _nibble_plus_16(words, 0) * xe
        x_sum = xe
        for e in tl.static_range(1, 8):
            xe = tl.load(x_ptr + sb * 256 + x_off + 4 * e).to(tl.float32)
            dot += _nibble_plus_16(words, e) * xe
            x_sum += xe
        # Per sub-block: sum((d sc q - dmin mn) x) = d sc (sum((16 + q) x) - 16 X) - dmin mn X, X = sum(x).
        dot = tl.sum(dot, axis=3, keep_dims=True)
        x_sum = tl.sum(x_sum, axis=3, keep_dims=True)
        # The scale tensors repeat along j (zero stride): max picks the one value without a layout change.
        dsc = tl.max(d * sc, axis=3, keep_dims=True)
        dmn = tl.max(dmin * mn, axis=3, keep_dims=True)
        acc += dsc * (dot - 16.0 * x_sum) - dmn * x_sum
    total = tl.sum(tl.sum(acc, axis=3), axis=1)  # [CPT, TQ]
    rows = t * 64 + tl.arange(0, CPT)[:, None] * TQ + tl.arange(0, TQ)[None, :]
    tl.store(out_ptr + pid_k * N + rows, total.to(out_ptr.dtype.element_ty), mask=rows < N)


@triton.jit
def _nibble_plus_16(words, E: tl.constexpr):
    """Nibble E of each word q as the float 16 + q: q moved into mantissa bits 19..22 of 16.0 (a shift and one
    LOP3, where an exact int -> float conversion takes two more instructions; the 16 is taken off per sub-block)."""
    moved = words << (19 - 4 * E) if E <= 4 else words >> (4 * E - 19)
    return ((moved & 0x00780000) | 0x41800000).to(tl.float32, bitcast=True)


@dataclass(frozen=True)
class GemvConfig:
    """Launch parameters: rows per program (Q4_K: its column tile, 64), the grid's target programs per SM (sets
    the K split), warps, and rows a thread holds (Q4_K only: 1, 2 or 4)."""

    block_n: int = 8
    programs_per_sm: int = 8
    num_warps: int = 4
    rows_per_thread: int = 2


# Per type: Q6_K's won benchmarks/gpu_gemv.py's sweep of 27 configurations on an H100; Q4_K's won its sweep of 36
# on an H200 (BENCHMARKS.md, "Q4_K column tiles").
CONFIGS: dict[GGMLQuantizationType, GemvConfig] = {
    _Q.Q4_K: GemvConfig(block_n=Q4_K_TILE, programs_per_sm=8, num_warps=2, rows_per_thread=1),
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
    if weight.qtype == _Q.Q4_K and (config.block_n != Q4_K_TILE or config.rows_per_thread not in (1, 2, 4)):
        raise ValueError(f"packed_gemv: Q4_K takes block_n {Q4_K_TILE} and 1, 2 or 4 rows a thread, got {config}")
    out_dtype = out_dtype or x.dtype
    x = x.contiguous()
    grid_n = triton.cdiv(n, config.block_n)
    # Q4_K's programs read one super-block a step from contiguous tiles: a split may be a single step.
    min_steps = 1 if weight.qtype == _Q.Q4_K else MIN_STEPS_PER_SPLIT
    split = _auto_split(grid_n, k // 256, config.programs_per_sm, x.device, min_steps)
    out, target = split_outputs(1, n, split, out_dtype, x.device)
    if weight.qtype == _Q.Q4_K:
        _q4_k_gemv_kernel[(grid_n, split)](
            x, target, *(p.contiguous() for p in weight.planes), n, k, split, 1, TQ=Q4_K_TILE // config.rows_per_thread,
            num_warps=config.num_warps,
        )  # fmt: skip
    else:
        ql, qh, sc, d = (p.contiguous() for p in weight.planes)
        _q6_k_gemv_kernel[(grid_n, split)](
            x, target, ql, qh, sc, d, n, k, split, BLOCK_N=config.block_n, num_warps=config.num_warps
        )
    sum_splits(target, out, split)
    return out
