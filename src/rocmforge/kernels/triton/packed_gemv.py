"""Single-row matmuls (decode GEMV) over packed Q4_K and Q6_K weights, built for the code the compiler makes.

Both read the column tiles of ``packed_weight`` (64 rows; a sub-block's part of a row is one vector of 4 words):
a program owns one tile and a range of super-blocks, and each thread holds whole sub-blocks of 1 to 4 rows. The
tile ``[rows a thread, 8 sub-blocks, 32 threads, 4 words]`` has the words as its only contiguous axis, so Triton
gives every load one layout: 16-byte word loads, x loaded as 4-value vectors, the sums over a sub-block kept in
registers, no shuffles and no shared memory in the loop. Quants become floats by moving them into a float's
mantissa (16 + q for Q4_K, 64 + q for Q6_K), and the offset comes off once per sub-block (per half for Q6_K).
On an H200 (BENCHMARKS.md, "Q4_K column tiles", "Q6_K column tiles") they run 1.16x and ~1.3x faster than the
row-major kernels before them.

K splits across programs until the grid has enough programs to keep memory busy; the float32 partials are
summed by each tile's last program (``packed_matmul.split_total``, deterministic), which can also finish the
residual add and the next RMSNorm around the projection (:func:`packed_gemv_add_rms_norm`, :class:`RmsScale`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from gguf.constants import GGMLQuantizationType

from rocmforge.kernels.triton.packed_matmul import Q4_K, _auto_split, _planes, exact_float, split_partials, split_total
from rocmforge.layers.packed_weight import TILE_ROWS, PackedWeight

__all__ = ["CONFIGS", "GEMV_TYPES", "GemvConfig", "RmsScale", "packed_gemv", "packed_gemv_add_rms_norm"]

_Q = GGMLQuantizationType
GEMV_TYPES = frozenset({_Q.Q4_K, _Q.Q6_K})

# What a launch's finishing programs write (``_store_tile``).
PLAIN: tl.constexpr = tl.constexpr(0)
RMS_SCALED: tl.constexpr = tl.constexpr(1)
ADD_RMS_NORM: tl.constexpr = tl.constexpr(2)


@triton.jit
def _tile_program(K, SPLIT_K, TQ: tl.constexpr):
    """This program's column tile ``t`` (int64) and K split ``pid_k``; the index tensors of its tile
    ``[CPT, 8 (sub-block g), TQ, 4 (word j)]`` (row c = cc * TQ + cq, CPT = 64 / TQ rows a thread); and its range
    of super-blocks. The statements keep the order the kernels had inline: the compiled code is byte-identical."""
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
    return t, pid_k, c, g, j, start, stop


@triton.jit
def _tile_rows(t, N, TQ: tl.constexpr):
    """The output rows [CPT, TQ] of tile ``t`` in the layout of the summed tile, and which are below N."""
    CPT: tl.constexpr = 64 // TQ
    rows = t * 64 + tl.arange(0, CPT)[:, None] * TQ + tl.arange(0, TQ)[None, :]
    return rows, rows < N


@triton.jit
def _epilogue_operands(
    t,
    N,
    norm_ptr,
    residual_ptr,
    sum_sq_ptr,
    n_sum_sq,
    norm_cols,
    eps,
    TQ: tl.constexpr,
    EPILOGUE: tl.constexpr,
    SUM_SQ_BLOCK: tl.constexpr,
):
    """What ``_store_tile``'s epilogue reads besides the sums, loaded before the K loop so that the loads' latency
    hides behind it instead of lengthening the finishing program: the RMSNorm factor (``RMS_SCALED``: from
    ``n_sum_sq`` per-tile sums of squares, added in one fixed order) and the tile's residual and norm weight
    rows (``ADD_RMS_NORM``). Returns ``(scale, residual, weight)``; the unused ones are 1 and 0."""
    rows, mask = _tile_rows(t, N, TQ)
    scale = tl.full([], 1.0, tl.float32)
    residual = tl.zeros(rows.shape, tl.float32)
    weight = tl.zeros(rows.shape, tl.float32)
    if EPILOGUE == RMS_SCALED:
        parts = tl.arange(0, SUM_SQ_BLOCK)
        sum_sq = tl.load(sum_sq_ptr + parts, mask=parts < n_sum_sq, other=0.0)
        scale = tl.rsqrt(tl.sum(sum_sq, axis=0) / norm_cols + eps)
    if EPILOGUE == ADD_RMS_NORM:
        residual = tl.load(residual_ptr + rows, mask=mask, other=0.0).to(tl.float32)
        weight = tl.load(norm_ptr + rows, mask=mask, other=0.0).to(tl.float32)
    return scale, residual, weight


@triton.jit
def _store_tile(
    out_ptr,
    part_ptr,
    counter_ptr,
    acc,
    t,
    pid_k,
    N,
    SPLIT_K,
    h_ptr,
    sum_sq_ptr,
    scale,
    residual,
    weight,
    TQ: tl.constexpr,
    SPLIT_BLOCK: tl.constexpr,
    EPILOGUE: tl.constexpr,
):
    """Sum ``acc`` [CPT, 8, TQ, 1] over its sub-blocks and K splits: the tile's rows (below N), finished by the
    tile's last program (``split_total``; the tile's counter is ``counter_ptr[t]``), which writes them as
    ``EPILOGUE`` says (``scale``, ``residual``, ``weight`` from :func:`_epilogue_operands`):

    * ``PLAIN``: ``out = W x``.
    * ``RMS_SCALED``: ``out = rstd * (W x)``, x being ``h * norm weight`` of an ``ADD_RMS_NORM`` launch and
      ``rstd = 1 / sqrt(sum(h^2) / len(h) + eps)`` (``scale``, applied to each split's sums): ``W rms_norm(h)``
      without a launch of its own for the norm.
    * ``ADD_RMS_NORM``: the residual add and the first half of the next RMSNorm. ``h = residual + W x`` (W x
      rounded to out's dtype first, as an unfused add sees it; h in h's dtype) goes to ``h_ptr``,
      ``h * norm weight`` to ``out_ptr`` and the tile's ``sum(h^2)`` (float32) to ``sum_sq_ptr[t]``.
    """
    acc = tl.sum(tl.sum(acc, axis=3), axis=1)  # [CPT, TQ]
    if EPILOGUE == RMS_SCALED:
        acc = acc * scale
    rows, mask = _tile_rows(t, N, TQ)
    total, done = split_total(part_ptr, counter_ptr + t, rows, mask, acc, pid_k, SPLIT_K, N, SPLIT_BLOCK)
    if done:
        if EPILOGUE == ADD_RMS_NORM:
            delta = total.to(out_ptr.dtype.element_ty).to(tl.float32)
            h = (residual + delta).to(h_ptr.dtype.element_ty)
            tl.store(h_ptr + rows, h, mask=mask)
            h32 = tl.where(mask, h.to(tl.float32), 0.0)  # the rows past N repeat the last row's weights
            tl.store(sum_sq_ptr + t, tl.sum(tl.sum(h32 * h32, axis=1), axis=0))
            total = h32 * weight
        tl.store(out_ptr + rows, total.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["SPLIT_K", "ONE"])
def _gemv_kernel(
    x_ptr,
    out_ptr,
    part_ptr,
    counter_ptr,
    p0,
    p1,
    p2,
    p3,
    p4,
    N,
    K,
    SPLIT_K,
    ONE,
    norm_ptr,
    residual_ptr,
    h_ptr,
    sum_sq_ptr,
    n_sum_sq,
    norm_cols,
    eps,
    QTYPE: tl.constexpr,
    TQ: tl.constexpr,
    SPLIT_BLOCK: tl.constexpr,
    EPILOGUE: tl.constexpr,
    SUM_SQ_BLOCK: tl.constexpr,
):
    """One column tile (64 rows) of a Q4_K (planes qs, sc, mn, d, dmin) or Q6_K (ql, qh, sc, d) weight times x,
    over a range of super-blocks, finished by ``_store_tile``; see the module doc and the loops'."""
    t, pid_k, c, g, j, start, stop = _tile_program(K, SPLIT_K, TQ)
    scale, residual, weight = _epilogue_operands(
        t, N, norm_ptr, residual_ptr, sum_sq_ptr, n_sum_sq, norm_cols, eps, TQ, EPILOGUE, SUM_SQ_BLOCK
    )
    if QTYPE == Q4_K:
        acc = _q4_k_sums(x_ptr, p0, p1, p2, p3, p4, K, ONE, t, c, g, j, start, stop, TQ)
    else:
        acc = _q6_k_sums(x_ptr, p0, p1, p2, p3, K, ONE, t, c, g, j, start, stop, TQ)
    _store_tile(
        out_ptr, part_ptr, counter_ptr, acc, t, pid_k, N, SPLIT_K, h_ptr, sum_sq_ptr, scale, residual, weight, TQ,
        SPLIT_BLOCK, EPILOGUE,
    )  # fmt: skip


@triton.jit
def _q6_k_sums(x_ptr, ql_ptr, qh_ptr, sc_ptr, d_ptr, K, ONE, t, c, g, j, start, stop, TQ: tl.constexpr):
    """The tile's sums [CPT, 8, TQ, 1] over super-blocks start..stop of the Q6_K planes: the Q4_K loop with
    6-bit quants (low nibble from ``ql``, top 2 bits from ``qh``) and a scale per 16-value half (e < 4, e >= 4)."""
    n_super = K // 256
    word_off = (g * 64 + c) * 4 + j  # ql, qh: [CPT, 8, TQ, 4]
    sc_off = (g * 64 + c) * 2 * ONE + 0 * j  # the halves' scales, [CPT, 8, TQ, 4] (see the Q4_K loop)
    row_off = c * ONE + 0 * (g + j)  # d
    x_off = 32 * g + j  # [1, 8, 1, 4]
    acc = tl.zeros((64 // TQ, 8, TQ, 1), dtype=tl.float32)  # [CPT, 8, TQ, 1]
    for sb in range(start, stop):
        sub_base = (t * (K // 32) + sb * 8) * 64
        ql = tl.load(ql_ptr + sub_base * 4 + word_off)
        qh = tl.load(qh_ptr + sub_base * 4 + word_off).to(tl.int32)
        d = tl.load(d_ptr + (t * n_super + sb) * 64 + row_off).to(tl.float32)
        sc0 = tl.load(sc_ptr + sub_base * 2 + sc_off).to(tl.float32)
        sc1 = tl.load(sc_ptr + sub_base * 2 + sc_off + 1).to(tl.float32)
        half0 = _q6_k_half_dot(ql, qh, x_ptr + sb * 256 + x_off, 0)
        half1 = _q6_k_half_dot(ql, qh, x_ptr + sb * 256 + x_off, 4)
        # The scale tensors repeat along j (zero stride): max picks the one value without a layout change.
        acc += tl.max(d * sc0, axis=3, keep_dims=True) * half0 + tl.max(d * sc1, axis=3, keep_dims=True) * half1
    return acc


@triton.jit
def _q6_k_half_dot(ql, qh, x_ptrs, E0: tl.constexpr):
    """sum over e = E0..E0+3 and j of (q - 32) x for element 4e + j: [CPT, 8, TQ, 1] float32.

    Each quant becomes the float 64 + q (the low nibble moved to mantissa bits 17..20, the top 2 bits to 21..22
    of 64.0), and 96 X comes off per half: sum((q - 32) x) = sum((64 + q) x) - 96 sum(x)."""
    dot = tl.zeros_like(ql).to(tl.float32)
    x_sum = tl.zeros_like(ql).to(tl.float32)
    for e in tl.static_range(E0, E0 + 4):
        low = ql << (17 - 4 * e) if 4 * e <= 17 else ql >> (4 * e - 17)
        top = qh << (21 - 2 * e)
        q = ((low & 0x001E0000) | (top & 0x00600000) | 0x42800000).to(tl.float32, bitcast=True)
        xe = tl.load(x_ptrs + 4 * e).to(tl.float32)
        dot += q * xe
        x_sum += xe
    return tl.sum(dot - 96.0 * x_sum, axis=3, keep_dims=True)


@triton.jit
def _q4_k_sums(x_ptr, qs_ptr, sc_ptr, mn_ptr, d_ptr, dmin_ptr, K, ONE, t, c, g, j, start, stop, TQ: tl.constexpr):
    """The tile's sums [CPT, 8, TQ, 1] over super-blocks start..stop of the Q4_K planes.

    The tile is [CPT, 8 (sub-block g), TQ, 4 (word j)] for row c = cc * TQ + cq: the loads' only contiguous axis
    is j, so Triton gives every load one layout with j in a thread (16-byte word loads, x loads of 4 values
    shared by the thread's CPT rows) and the per-sub-block sums stay in registers. ``ONE`` (1 at run time) hides
    the scale planes' contiguity along c, which would otherwise earn them another layout and a conversion
    through shared memory in every step."""
    n_super = K // 256
    # Offsets inside one super-block of the tile (loop-invariant) and the super-block's bases.
    word_off = (g * 64 + c) * 4 + j  # [CPT, 8, TQ, 4]
    sub_off = (g * 64 + c) * ONE + 0 * j  # sc, mn
    row_off = c * ONE + 0 * (g + j)  # d, dmin: the full tile shape too, or they get a layout of their own
    x_off = 32 * g + j  # [1, 8, 1, 4]: element 32g + 4e + j is nibble e of word j
    acc = tl.zeros((64 // TQ, 8, TQ, 1), dtype=tl.float32)  # [CPT, 8, TQ, 1]
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
    return acc


@triton.jit
def _nibble_plus_16(words, E: tl.constexpr):
    """Nibble E of each word q as the float 16 + q: q moved into mantissa bits 19..22 of 16.0 (a shift and one
    LOP3, where an exact int -> float conversion takes two more instructions; the 16 is taken off per sub-block)."""
    moved = words << (19 - 4 * E) if E <= 4 else words >> (4 * E - 19)
    return ((moved & 0x00780000) | 0x41800000).to(tl.float32, bitcast=True)


@dataclass(frozen=True)
class GemvConfig:
    """Launch parameters: rows per program (the column tile, 64), the grid's target programs per SM (sets the
    K split), warps, and rows a thread holds (1, 2 or 4)."""

    block_n: int = TILE_ROWS
    programs_per_sm: int = 8
    num_warps: int = 2
    rows_per_thread: int = 1


# Per type, the winner of a sweep over 36-48 configurations on an H200 (BENCHMARKS.md, "Q4_K column tiles",
# "Q6_K column tiles").
CONFIGS: dict[GGMLQuantizationType, GemvConfig] = {
    _Q.Q4_K: GemvConfig(block_n=TILE_ROWS, programs_per_sm=8, num_warps=2, rows_per_thread=1),
    _Q.Q6_K: GemvConfig(block_n=TILE_ROWS, programs_per_sm=16, num_warps=2, rows_per_thread=1),
}


@dataclass(frozen=True)
class RmsScale:
    """The RMSNorm factor a :data:`RMS_SCALED` launch applies to its outputs: ``1 / sqrt(sum / cols + eps)``,
    ``sum`` being the per-tile sums of squares an :func:`packed_gemv_add_rms_norm` launch wrote."""

    sum_squares: torch.Tensor  # float32 [tiles]
    cols: int
    eps: float


def packed_gemv(
    x: torch.Tensor,
    weight: PackedWeight,
    out_dtype: torch.dtype | None = None,
    config: GemvConfig | None = None,
    *,
    rms_scale: RmsScale | None = None,
) -> torch.Tensor:
    """``x @ W.T`` for one row x (1, K) float32/float16/bfloat16 and a packed Q4_K or Q6_K weight: (1, N) of
    out_dtype, times ``rms_scale``'s factor where given. ``config`` overrides the type's :data:`CONFIGS` entry
    (tests, benchmarks)."""
    out = torch.empty((1, weight.shape[0]), dtype=out_dtype or x.dtype, device=x.device)
    if rms_scale is None:
        _launch(x, weight, out, config, PLAIN.value)
    else:
        _launch(x, weight, out, config, RMS_SCALED.value, sum_squares=rms_scale.sum_squares, norm_cols=rms_scale.cols,
                eps=rms_scale.eps)  # fmt: skip
    return out


def packed_gemv_add_rms_norm(
    x: torch.Tensor,
    weight: PackedWeight,
    residual: torch.Tensor,
    norm_weight: torch.Tensor,
    config: GemvConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The residual add after a projection and the part of the next RMSNorm that needs no global sum.

    ``h = residual + x @ W.T`` (the product rounded to residual's dtype first, as an unfused add sees it) and,
    in residual's dtype, ``h * norm_weight``. Returns ``(scaled, h, sum_squares)``: ``sum_squares`` holds
    float32 ``sum(h^2)`` per 64-row tile, from which a :data:`RMS_SCALED` launch over ``scaled`` finishes
    ``rms_norm(h) @ W2.T`` (:class:`RmsScale`).
    """
    n = weight.shape[0]
    if residual.shape != (1, n) or norm_weight.shape != (n,) or residual.device != x.device:
        raise ValueError(
            f"packed_gemv_add_rms_norm: residual (1, {n}) and norm weight ({n},) on {x.device}, got "
            f"{tuple(residual.shape)}, {tuple(norm_weight.shape)} on {residual.device}"
        )
    scaled = torch.empty((1, n), dtype=residual.dtype, device=x.device)
    h = torch.empty_like(scaled)
    sum_squares = torch.empty(triton.cdiv(n, TILE_ROWS), dtype=torch.float32, device=x.device)
    norm, residual = norm_weight.contiguous(), residual.contiguous()
    _launch(x, weight, scaled, config, ADD_RMS_NORM.value, norm=norm, residual=residual, h=h, sum_squares=sum_squares)
    return scaled, h, sum_squares


def _launch(
    x: torch.Tensor,
    weight: PackedWeight,
    out: torch.Tensor,
    config: GemvConfig | None,
    epilogue: int,
    *,
    norm: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    h: torch.Tensor | None = None,
    sum_squares: torch.Tensor | None = None,
    norm_cols: int = 1,
    eps: float = 0.0,
) -> None:
    n, k = weight.shape
    if weight.qtype not in GEMV_TYPES:
        raise ValueError(f"packed_gemv: {weight.qtype.name} is not one of {sorted(t.name for t in GEMV_TYPES)}")
    if x.dim() != 2 or x.shape != (1, k):
        raise ValueError(f"packed_gemv: x must be (1, {k}), got {tuple(x.shape)}")
    if x.device != weight.device:
        raise ValueError(f"packed_gemv: x on {x.device}, weight on {weight.device}")
    config = config or CONFIGS[weight.qtype]
    if config.block_n != TILE_ROWS or config.rows_per_thread not in (1, 2, 4):
        raise ValueError(f"packed_gemv: block_n {TILE_ROWS} (the column tile), 1, 2 or 4 rows a thread; got {config}")
    x = x.contiguous()
    grid_n = triton.cdiv(n, config.block_n)
    # Programs read one super-block a step from contiguous tiles: a split may be a single step.
    split = _auto_split(grid_n, k // 256, config.programs_per_sm, x.device, 1)
    partials = split_partials(weight, out, split, grid_n)
    n_sum_sq = sum_squares.numel() if sum_squares is not None else 1
    _gemv_kernel[(grid_n, split)](
        x,
        out,
        partials,
        weight.split_counters,
        *_planes(weight),
        n,
        k,
        split,
        1,
        norm if norm is not None else out,  # unused pointers stand in as out
        residual if residual is not None else out,
        h if h is not None else out,
        sum_squares if sum_squares is not None else out,
        n_sum_sq,
        norm_cols,
        eps,
        QTYPE=int(weight.qtype.value),
        TQ=TILE_ROWS // config.rows_per_thread,
        SPLIT_BLOCK=triton.next_power_of_2(split),
        EPILOGUE=epilogue,
        SUM_SQ_BLOCK=triton.next_power_of_2(n_sum_sq),
        num_warps=config.num_warps,
    )
