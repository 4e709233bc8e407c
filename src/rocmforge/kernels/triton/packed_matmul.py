"""``x @ W.T`` for weights repacked at load (``rocmforge.layers.packed_weight``): dequantized tiles, ``tl.dot``.

One kernel serves every M. A program owns ``BLOCK_N`` output features, ``BLOCK_M`` rows of x and a range of K
(split-K): per step it loads ``KB`` groups of 32 values of its rows (sub-blocks of a Q4_K/Q6_K super-block, Q8_0
blocks) from the planes as aligned, coalesced tiles, expands them to a ``[BLOCK_N, KB * 32]`` float32 tile in
registers (shifts and one multiply-add per value; the scales are per row and sub-block), casts it to x's dtype
and accumulates ``tile @ x_tile.T`` with ``tl.dot`` in float32. The weight is the dot's left operand, so the
tile built in registers is the operand that may stay there and the tiny x is the one staged through shared
memory; the accumulator is [BLOCK_N, BLOCK_M] and is stored transposed. ``BLOCK_M = 1`` (M = 1, single-stream
decode) is a GEMV instead: one FMA per weight value on CUDA cores, no tensor-core padding of M to 16 and no
shared-memory round trip of the tile; ``BLOCK_M`` 2-8 the same with a few rows of x (kept as an option: on an H100
it lost to the tl.dot kernel at M = 4).

Decode (small M) reads each weight once; its grid of ``N / BLOCK_N`` programs is too small to keep enough loads
in flight on ~130 SMs, so K is split over several programs that write float32 partial sums; the last program of
an output tile to finish adds them up in a fixed order (deterministic, no float atomics) and casts to the output
dtype (:func:`finish_split`, with counters the weight holds). Every launch has static shapes and no host sync:
CUDA-graph capturable. Measured (BENCHMARKS.md): the M = 1 GEMV reaches 31-60% of copy bandwidth, bound by
per-value instruction work rather than HBM.

float32 activations: the GEMV (M = 1) multiplies in float32. The dot kernel (M > 1) uses ``input_precision``
"tf32x3" on NVIDIA GPUs (error ~1e-7 relative), which measured 4-60x slower than bf16 on an H100, and "ieee" on
AMD's (no tf32x3 there): callers that want speed cast x to bf16 (QuantLinear does above M = 1); the interpreter
multiplies exactly.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from gguf.constants import GGMLQuantizationType

from rocmforge.kernels.triton.availability import KernelTarget, kernel_target
from rocmforge.kernels.triton.split_arrival import last_to_arrive
from rocmforge.layers.packed_weight import PACKED_TYPES, PackedWeight

__all__ = ["KernelConfig", "dequantize_packed", "kernel_config", "packed_matmul"]

_Q = GGMLQuantizationType

Q4_K: tl.constexpr = tl.constexpr(12)
Q6_K: tl.constexpr = tl.constexpr(14)
Q8_0: tl.constexpr = tl.constexpr(8)


@triton.jit
def exact_float(v, offset: tl.constexpr = 0):
    """``v - offset`` in float32 for int32 ``0 <= v < 2**23``, exactly: 2**23 + v has v in its low mantissa bits,
    so an OR and one subtraction replace the slower int -> float conversion (offset folds into the subtraction)."""
    return (v | 0x4B000000).to(tl.float32, bitcast=True) - (8388608.0 + offset)


@triton.jit
def _q4_k_tile(qs_ptr, sc_ptr, mn_ptr, d_ptr, dmin_ptr, rows, mask_n, i, K, BLOCK_N: tl.constexpr, SUBS: tl.constexpr):
    """K step ``i`` (SUBS sub-blocks of 32) of ``rows`` [BLOCK_N, 1] (int64): [BLOCK_N, SUBS * 32] float32.

    Q4_K planes are column tiles of 64 rows (``packed_weight``): row r is column r % 64 of tile r // 64, and a
    sub-block's 4 words of a row are one 16-byte vector."""
    sb = i // (8 // SUBS)  # super-block
    g = (i * SUBS + tl.arange(0, SUBS))[None, :]  # the step's sub-blocks, [1, SUBS]
    tile = rows // 64
    col = rows % 64
    sub = (tile * (K // 32) + g) * 64 + col  # [BN, SUBS]: (tile, sub-block, column)
    j = tl.arange(0, 4)[None, None, :]
    words = tl.load(qs_ptr + sub[:, :, None] * 4 + j, mask=mask_n[:, :, None], other=0)  # [BN, SUBS, 4]
    sc = tl.load(sc_ptr + sub, mask=mask_n, other=0).to(tl.float32)
    mn = tl.load(mn_ptr + sub, mask=mask_n, other=0).to(tl.float32)
    dsub = (tile * (K // 256) + sb) * 64 + col  # [BN, 1]
    d = tl.load(d_ptr + dsub, mask=mask_n, other=0.0).to(tl.float32)
    dmin = tl.load(dmin_ptr + dsub, mask=mask_n, other=0.0).to(tl.float32)
    e = tl.arange(0, 8)[None, None, :, None]
    q = (words[:, :, None, :] >> (4 * e)) & 0xF  # [BN, SUBS, 8 (e), 4 (j)]: element 32g + 4e + j
    qf = exact_float(q)
    val = qf * (d * sc)[:, :, None, None] - (dmin * mn)[:, :, None, None]
    return tl.reshape(val, (BLOCK_N, SUBS * 32))


@triton.jit
def _q6_k_tile(ql_ptr, qh_ptr, sc_ptr, d_ptr, rows, mask_n, i, K, BLOCK_N: tl.constexpr, SUBS: tl.constexpr):
    """K step ``i`` (SUBS sub-blocks of 32) of ``rows`` [BLOCK_N, 1] (int64): [BLOCK_N, SUBS * 32] float32.

    Q6_K planes are column tiles of 64 rows like Q4_K's (``packed_weight``)."""
    sb = i // (8 // SUBS)
    g = (i * SUBS + tl.arange(0, SUBS))[None, :, None, None, None]  # [1, SUBS, 1, 1, 1]
    tile = rows[:, :, None, None, None] // 64
    col = rows[:, :, None, None, None] % 64
    m5 = mask_n[:, :, None, None, None]
    sub = (tile * (K // 32) + g) * 64 + col  # [BN, SUBS, 1, 1, 1]: (tile, sub-block, column)
    h = tl.arange(0, 2)[None, None, :, None, None]  # the sub-block's 16-value halves
    e = 4 * h + tl.arange(0, 4)[None, None, None, :, None]  # [1, 1, 2, 4, 1]
    j = tl.arange(0, 4)[None, None, None, None, :]
    ql = tl.load(ql_ptr + sub * 4 + j, mask=m5, other=0)  # [BN, SUBS, 1, 1, 4]
    qh = tl.load(qh_ptr + sub * 4 + j, mask=m5, other=0).to(tl.int32)
    sc = tl.load(sc_ptr + sub * 2 + h, mask=m5, other=0).to(tl.float32)  # [BN, SUBS, 2, 1, 1]
    d = tl.load(d_ptr + (tile * (K // 256) + sb) * 64 + col, mask=m5, other=0.0).to(tl.float32)
    q = ((ql >> (4 * e)) & 0xF) | (((qh >> (2 * e)) & 3) << 4)  # [BN, SUBS, 2, 4, 4]: element 32g + 4e + j
    values = (d * sc) * exact_float(q, 32)  # q - 32
    return tl.reshape(values, (BLOCK_N, SUBS * 32))


@triton.jit
def _q8_0_tile(qs_ptr, d_ptr, rows, mask_n, i, K, BLOCK_N: tl.constexpr, KB: tl.constexpr):
    """Blocks ``KB * i .. KB * i + KB`` of ``rows``: [BLOCK_N, KB * 32] float32 (zeros past K)."""
    b = (i * KB + tl.arange(0, KB))[None, :, None]
    e = tl.arange(0, 32)[None, None, :]
    r3 = rows[:, :, None]
    mask = mask_n[:, :, None] & (b < K // 32)
    q = tl.load(qs_ptr + r3 * K + b * 32 + e, mask=mask, other=0).to(tl.float32)  # [BN, KB, 32]
    d = tl.load(d_ptr + r3 * (K // 32) + b, mask=mask, other=0.0).to(tl.float32)  # [BN, KB, 1]
    return tl.reshape(q * d, (BLOCK_N, KB * 32))


@triton.jit
def _tile(p0, p1, p2, p3, p4, rows, mask_n, i, K, QTYPE: tl.constexpr, BLOCK_N: tl.constexpr, KB: tl.constexpr):
    """K step ``i`` (KB groups of 32 values) of ``rows``: [BLOCK_N, KB * 32] float32."""
    if QTYPE == Q4_K:
        return _q4_k_tile(p0, p1, p2, p3, p4, rows, mask_n, i, K, BLOCK_N, KB)
    elif QTYPE == Q6_K:
        return _q6_k_tile(p0, p1, p2, p3, rows, mask_n, i, K, BLOCK_N, KB)
    else:
        return _q8_0_tile(p0, p1, rows, mask_n, i, K, BLOCK_N, KB)


# M and SPLIT_K vary per call: no recompile when they happen to equal 1 (Triton specializes such ints by default).
@triton.jit(do_not_specialize=["M", "SPLIT_K"])
def _packed_matmul_kernel(
    x_ptr,
    out_ptr,
    part_ptr,
    counter_ptr,
    p0,
    p1,
    p2,
    p3,
    p4,
    M,
    N,
    K,
    stride_xm,
    SPLIT_K,
    SPLIT_BLOCK: tl.constexpr,
    QTYPE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    KB: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
    REDUCE_EACH_STEP: tl.constexpr,
):
    STEP: tl.constexpr = KB * 32
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = offs_n.to(tl.int64)[:, None]  # int64: 32000 rows x 4096 bytes of int8 approach 2**31
    mask_n = (offs_n < N)[:, None]
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = (offs_m < M)[None, :]
    x_cols = x_ptr + offs_m[None, :].to(tl.int64) * stride_xm  # [1, BM]: x^T's columns
    offs_k = tl.arange(0, STEP)[:, None]
    n_steps = tl.cdiv(K, STEP)
    per_split = tl.cdiv(n_steps, SPLIT_K)
    start = pid_k * per_split
    stop = tl.minimum(start + per_split, n_steps)
    if BLOCK_M == 1:
        # GEMV (one row of x): one FMA per weight value on CUDA cores, partial sums kept per column and reduced
        # once at the end; no trip through shared memory for the tile, and float32 x stays exact.
        x_row = x_ptr + pid_m.to(tl.int64) * stride_xm
        if REDUCE_EACH_STEP:
            # Row sums every step: fewer live registers, so that wide tiles (many rows a thread, which reuse each
            # loaded x value) fit; costs a few warp shuffles a row a step.
            acc = tl.zeros((BLOCK_N, 1), dtype=tl.float32)
            for i in range(start, stop):
                w = _tile(p0, p1, p2, p3, p4, rows, mask_n, i, K, QTYPE, BLOCK_N, KB)
                ks = i * STEP + tl.arange(0, STEP)
                xk = tl.load(x_row + ks, mask=ks < K, other=0.0).to(tl.float32)
                acc += tl.sum(w * xk[None, :], axis=1)[:, None]
        else:
            acc_k = tl.zeros((BLOCK_N, STEP), dtype=tl.float32)
            for i in range(start, stop):
                w = _tile(p0, p1, p2, p3, p4, rows, mask_n, i, K, QTYPE, BLOCK_N, KB)
                ks = i * STEP + tl.arange(0, STEP)
                xk = tl.load(x_row + ks, mask=ks < K, other=0.0).to(tl.float32)
                acc_k += w * xk[None, :]
            acc = tl.sum(acc_k, axis=1)[:, None]  # [BN, 1]
    elif BLOCK_M < 16:
        # A few rows of x (batched decode): still CUDA cores, each dequantized value serves BLOCK_M FMAs, and
        # no padding of M to tl.dot's 16.
        x_rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm  # [BM, 1]
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        for i in range(start, stop):
            w = _tile(p0, p1, p2, p3, p4, rows, mask_n, i, K, QTYPE, BLOCK_N, KB)
            ks = i * STEP + tl.arange(0, STEP)[None, :]
            xk = tl.load(x_rows + ks, mask=(offs_m < M)[:, None] & (ks < K), other=0.0).to(tl.float32)
            acc += tl.sum(w[:, None, :] * xk[None, :, :], axis=2)
    else:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        for i in range(start, stop):
            w = _tile(p0, p1, p2, p3, p4, rows, mask_n, i, K, QTYPE, BLOCK_N, KB)
            ks = i * STEP + offs_k  # [STEP, 1]
            xt = tl.load(x_cols + ks, mask=mask_m & (ks < K), other=0.0)  # [STEP, BM]
            if xt.dtype == tl.float32:
                acc = tl.dot(w, xt, acc, input_precision=PRECISION)
            elif UPCAST:
                # The interpreter multiplies bfloat16 as its raw bits: round the tile to x's dtype, then fp32.
                acc = tl.dot(w.to(xt.dtype).to(tl.float32), xt.to(tl.float32), acc, input_precision="ieee")
            else:
                acc = tl.dot(w.to(xt.dtype), xt, acc)
    # out (and each split's float32 partials) is [M, N] row-major: element (m, n) at m * N + n.
    offs = offs_m[None, :].to(tl.int64) * N + offs_n[:, None]
    counter = counter_ptr + pid_m * tl.num_programs(0) + pid_n
    finish_split(out_ptr, part_ptr, counter, offs, mask_n & mask_m, acc, pid_k, SPLIT_K, M * N, SPLIT_BLOCK)


@triton.jit
def split_total(part_ptr, counter_ptr, offs, mask, acc, pid_k, SPLIT_K, MN, SPLIT_BLOCK: tl.constexpr):
    """A program's ``acc`` (float32, its sum over its range of K) for the outputs at ``offs``, summed over K.

    Returns ``(total, done)``: done is true in the program that finishes the tile, whose total is the sum over
    all of K. Unsplit: every program, its own ``acc``. Split: each program stores its float32 partials at
    ``part_ptr``; the tile's last program to arrive (``split_arrival``, a counter per output tile at
    ``counter_ptr``) adds the SPLIT_K partials in split order, the same sum whichever program comes last
    (deterministic, no float atomics), and sets the counter back to zero for the next launch. That replaces a
    second kernel, a graph node and its gap, per split matmul.
    """
    total = acc
    done = pid_k >= 0
    if SPLIT_K > 1:
        tl.store(part_ptr + pid_k * MN + offs, acc, mask=mask)
        done = last_to_arrive(counter_ptr, SPLIT_K)
        if done:
            total = tl.zeros_like(acc)
            # Unrolled to SPLIT_BLOCK (SPLIT_K rounded up to a power of two): the loads leave together, one L2
            # round trip instead of SPLIT_K. .cg reads L2, where the other programs' partials are, never a stale
            # line of this SM's L1.
            for s in tl.static_range(SPLIT_BLOCK):
                in_split = mask & (tl.full(offs.shape, s, tl.int32) < SPLIT_K)  # full: the interpreter's masks
                total += tl.load(part_ptr + s * MN + offs, mask=in_split, other=0.0, cache_modifier=".cg")
            tl.store(counter_ptr, 0)
    return total, done


@triton.jit
def finish_split(out_ptr, part_ptr, counter_ptr, offs, mask, acc, pid_k, SPLIT_K, MN, SPLIT_BLOCK: tl.constexpr):
    """:func:`split_total`, then the finishing program writes the total to ``out_ptr`` in its dtype."""
    total, done = split_total(part_ptr, counter_ptr, offs, mask, acc, pid_k, SPLIT_K, MN, SPLIT_BLOCK)
    if done:
        tl.store(out_ptr + offs, total.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dequant_kernel(out_ptr, p0, p1, p2, p3, p4, N, K, QTYPE: tl.constexpr, BLOCK_N: tl.constexpr, KB: tl.constexpr):
    STEP: tl.constexpr = KB * 32
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rows = offs_n.to(tl.int64)[:, None]
    mask_n = (offs_n < N)[:, None]
    step = tl.program_id(1)
    w = _tile(p0, p1, p2, p3, p4, rows, mask_n, step, K, QTYPE, BLOCK_N, KB)
    ks = step * STEP + tl.arange(0, STEP)[None, :]
    tl.store(out_ptr + rows * K + ks, w.to(out_ptr.dtype.element_ty), mask=mask_n & (ks < K))


@dataclass(frozen=True)
class KernelConfig:
    """Launch parameters; ``split_k`` 0 splits K until the grid has ``programs_per_sm`` programs per SM."""

    block_n: int
    block_m: int
    num_warps: int
    num_stages: int
    split_k: int = 0
    kb: int = 8  # groups of 32 values per K step: Q8_0 blocks, or Q4_K/Q6_K sub-blocks (2, 4 or 8)
    programs_per_sm: int = 4  # enough independent loads in flight to cover HBM latency
    reduce_each_step: bool = False  # GEMV (block_m 1): sum the rows every K step instead of once at the end
    # block_m: 1 or 2-8 (CUDA-core GEMV kernels), or 16 and more (tl.dot)


# Per type, (largest M, config) in increasing M; the last entry serves every larger M. Chosen by
# benchmarks/gpu_linear.py --sweep on an H100 (BENCHMARKS.md "GPU quantized linear", packed subsection), summed
# over 4096x4096, 11008x4096 and 4096x11008: M = 1 is the GEMV split over K until there are several programs per
# SM; M = 2..16 the tl.dot kernel with a 16-row x tile (at M = 4 it beat the few-row CUDA-core kernel of every
# swept shape, so BLOCK_M 2-8 is in no table); larger M the usual GEMM tiles (QuantLinear sends M > 64 to
# dequantize + cuBLAS, measured 2-3x faster there). Q8_0's M = 1 entry is the first sweep's winner (the second
# sweep did not include it and its best was 15% slower).
CONFIGS: dict[GGMLQuantizationType, tuple[tuple[int, KernelConfig], ...]] = {
    _Q.Q4_K: (
        (1, KernelConfig(block_n=16, block_m=1, num_warps=4, num_stages=3, kb=8, programs_per_sm=4)),
        (4, KernelConfig(block_n=32, block_m=16, num_warps=4, num_stages=2, kb=8, programs_per_sm=16)),
        (16, KernelConfig(block_n=16, block_m=16, num_warps=2, num_stages=3, kb=8, programs_per_sm=16)),
        (64, KernelConfig(block_n=64, block_m=64, num_warps=4, num_stages=3, kb=4, programs_per_sm=2)),
        (1 << 30, KernelConfig(block_n=128, block_m=128, num_warps=8, num_stages=3, split_k=1, kb=4)),
    ),
    _Q.Q6_K: (
        (
            1,
            KernelConfig(
                block_n=32, block_m=1, num_warps=4, num_stages=3, kb=8, programs_per_sm=16, reduce_each_step=True
            ),
        ),
        (4, KernelConfig(block_n=32, block_m=16, num_warps=2, num_stages=3, kb=8, programs_per_sm=16)),
        (16, KernelConfig(block_n=32, block_m=16, num_warps=2, num_stages=2, kb=8, programs_per_sm=4)),
        (64, KernelConfig(block_n=64, block_m=64, num_warps=4, num_stages=3, kb=4, programs_per_sm=2)),
        (1 << 30, KernelConfig(block_n=128, block_m=128, num_warps=8, num_stages=3, split_k=1, kb=4)),
    ),
    _Q.Q8_0: (
        (1, KernelConfig(block_n=16, block_m=1, num_warps=4, num_stages=2, kb=4, programs_per_sm=8)),
        (16, KernelConfig(block_n=32, block_m=16, num_warps=4, num_stages=2, kb=4, programs_per_sm=8)),
        (64, KernelConfig(block_n=64, block_m=64, num_warps=4, num_stages=3, kb=4, programs_per_sm=4)),
        (1 << 30, KernelConfig(block_n=64, block_m=128, num_warps=4, num_stages=3, split_k=1, kb=2)),
    ),
}

# Fewest K steps a split keeps (below that the partial sums cost more than the parallelism gains).
MIN_STEPS_PER_SPLIT = 2
# float32 activations on the GPU (see the module doc); the interpreter's dot is exact either way.
# float32 x's dot precision per backend. NVIDIA: tf32x3 (three TF32 products, ~1e-7 relative). AMD's backend
# has no tf32x3; "ieee" is exact there and runs on CDNA's float32 matrix cores. The interpreter is exact anyway.
FP32_PRECISION: dict[KernelTarget, str] = {"cuda": "tf32x3", "hip": "ieee", "interpreter": "ieee"}


def kernel_config(qtype: GGMLQuantizationType, m: int) -> KernelConfig:
    """The configured launch for ``qtype`` at M = ``m``."""
    table = CONFIGS[GGMLQuantizationType(qtype)]
    for max_m, config in table:
        if m <= max_m:
            return config
    return table[-1][1]


@functools.cache
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter: a few splits, so that the CPU tests exercise split-K


def _auto_split(
    programs: int, n_steps: int, per_sm: int, device: torch.device, min_steps: int = MIN_STEPS_PER_SPLIT
) -> int:
    """A power-of-two split of K that brings the grid to ~``per_sm`` programs per SM, ``min_steps`` K steps each."""
    split = 1
    target = per_sm * _num_sms(device)
    while programs * split * 2 <= target and n_steps // (split * 2) >= min_steps:
        split *= 2
    return split


def _planes(weight: PackedWeight) -> tuple[torch.Tensor, ...]:
    """The five plane arguments (contiguous; unused ones repeat the first)."""
    planes = tuple(p.contiguous() for p in weight.planes)
    return planes + (planes[0],) * (5 - len(planes))


# Weight bytes one row loads per K step of kb groups (the quant planes plus the scales).
_ROW_STEP_BYTES = {
    _Q.Q4_K: lambda kb: 18 * kb + 4,  # a sub-block's 16 bytes of words, scale and min, plus d and dmin
    _Q.Q6_K: lambda kb: 26 * kb + 2,  # a sub-block's 16 + 8 bytes of quants and 2 scales, plus d
    _Q.Q8_0: lambda kb: 34 * kb,
}


@functools.cache
def _fitted(qtype: GGMLQuantizationType, config: KernelConfig, x_bytes: int, budget: int) -> KernelConfig:
    """``config`` with fewer stages, then a shorter K step, until its shared memory fits ``budget`` bytes.

    Estimate (matched Triton's reports on an H100 to within 3%): every stage buffers the x tile and the weight
    loads, and the dequantized tile passes once through shared memory on its way to the dot operand layout
    (float32 x: twice, tf32x3 splits it).
    """

    def need(c: KernelConfig) -> int:
        x_tile = c.kb * 32 * c.block_m * x_bytes
        w_tile = c.block_n * c.kb * 32 * x_bytes * (2 if x_bytes == 4 else 1)
        return c.num_stages * (x_tile + c.block_n * _ROW_STEP_BYTES[qtype](c.kb)) + w_tile

    while need(config) > budget and config.num_stages > 2:
        config = dataclasses.replace(config, num_stages=config.num_stages - 1)
    while need(config) > budget and config.kb > 2:
        config = dataclasses.replace(config, kb=config.kb // 2)
    return config


@functools.cache
def _shared_budget(device: torch.device) -> int:
    """Shared memory a program may use, with a margin for Triton's own scratch."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        # Older torch builds lack the opt-in field: then the 48 KB every CUDA and ROCm GPU gives a block.
        return int(0.85 * (getattr(props, "shared_memory_per_block_optin", 0) or 48 * 1024))
    return 1 << 30  # the interpreter has no such limit


def packed_matmul(
    x: torch.Tensor, weight: PackedWeight, out_dtype: torch.dtype | None = None, config: KernelConfig | None = None
) -> torch.Tensor:
    """``x @ W.T`` for x (M, K) float32/float16/bfloat16 on the weight's device -> (M, N) of ``out_dtype``.

    The weight tile is cast to x's dtype before the product (float32 accumulation); float32 x stays float32
    (tf32x3 on the GPU, see the module doc). ``config`` overrides :func:`kernel_config` (tests, benchmarks).

    Raises:
        ValueError: shapes, dtypes or devices do not fit.
    """
    n, k = weight.shape
    if x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"packed_matmul: x of shape {tuple(x.shape)} does not match weight shape {(n, k)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"packed_matmul: x must be float32, float16 or bfloat16, not {x.dtype}")
    if x.device != weight.device:
        raise ValueError(f"packed_matmul: x on {x.device}, weight on {weight.device}")
    m = x.shape[0]
    out_dtype = out_dtype or x.dtype
    if m == 0:
        return torch.empty((0, n), dtype=out_dtype, device=x.device)
    config = config or kernel_config(weight.qtype, m)
    if weight.qtype != _Q.Q8_0 and config.kb not in (2, 4, 8):
        raise ValueError(f"packed_matmul: {weight.qtype.name} steps 2, 4 or 8 sub-blocks, not kb = {config.kb}")
    config = _fitted(weight.qtype, config, x.element_size(), _shared_budget(x.device))
    grid_n, grid_m = triton.cdiv(n, config.block_n), triton.cdiv(m, config.block_m)
    n_steps = triton.cdiv(k, config.kb * 32)
    split = config.split_k or _auto_split(grid_n * grid_m, n_steps, config.programs_per_sm, x.device)
    if x.stride(1) != 1:
        x = x.contiguous()
    out, partials = split_outputs(weight, m, n, split, grid_n * grid_m, out_dtype, x.device)
    target = kernel_target(x.device)
    _packed_matmul_kernel[(grid_n, grid_m, split)](
        x,
        out,
        partials,
        weight.split_counters,
        *_planes(weight),
        m,
        n,
        k,
        x.stride(0),
        split,
        SPLIT_BLOCK=triton.next_power_of_2(split),
        QTYPE=int(weight.qtype.value),
        BLOCK_M=config.block_m,
        BLOCK_N=config.block_n,
        KB=config.kb,
        PRECISION=FP32_PRECISION[target],
        UPCAST=target == "interpreter",
        REDUCE_EACH_STEP=config.reduce_each_step,
        num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    return out


def split_outputs(
    weight: PackedWeight, m: int, n: int, split: int, tiles: int, out_dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (M, N) output, and the float32 partials (split, M, N) of a launch over ``tiles`` output tiles split
    ``split`` ways over K, which :func:`split_total` adds up (the output itself stands in when not split:
    nothing writes it).

    Raises:
        ValueError: a split launch has more output tiles than ``weight`` has counters (only explicit configs).
    """
    out = torch.empty((m, n), dtype=out_dtype, device=device)
    return out, split_partials(weight, out, split, tiles)


def split_partials(weight: PackedWeight, out: torch.Tensor, split: int, tiles: int) -> torch.Tensor:
    """The float32 partials (split, *out.shape) of a launch writing ``out`` (``out`` itself when not split);
    raises ValueError as :func:`split_outputs`."""
    if split > 1 and tiles > weight.split_counters.numel():
        raise ValueError(
            f"{tiles} output tiles split over K exceed the weight's {weight.split_counters.numel()} counters"
        )
    return out if split == 1 else torch.empty((split, *out.shape), dtype=torch.float32, device=out.device)


def dequantize_packed(weight: PackedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The [N, K] weight in ``dtype``, dequantized by a Triton kernel (float32: the exact GGUF values)."""
    if weight.qtype not in PACKED_TYPES:
        raise ValueError(f"dequantize_packed: {weight.qtype.name} is not packed")
    n, k = weight.shape
    out = torch.empty((n, k), dtype=dtype, device=weight.device)
    if n == 0:
        return out
    kb, block_n = 8, 32
    grid = (triton.cdiv(n, block_n), triton.cdiv(k, kb * 32))
    _dequant_kernel[grid](out, *_planes(weight), n, k, QTYPE=int(weight.qtype.value), BLOCK_N=block_n, KB=kb)
    return out
