"""RoPE on a step's q and k with k and v written into their paged-cache slots, in one Triton launch.

The unfused GPU path is three launches (rotate q and k, then one index_copy each for K and V); inside a decode
step's CUDA graph each launch costs a few microseconds however little it moves, so the fusion saves two per layer.

Same contract as the composition it replaces (:meth:`rocmforge.layers.rotary.RotaryEmbedding.apply` on
``qk [T, H + KVH, D]``, then :func:`rocmforge.layers.paged_attention.store_kv` of its last KVH heads and of ``v``):
the first ``rope_dim`` dims of every head rotated in float32 as adjacent pairs ("norm") or halves ("neox"), the
rest copied; rotated q returned as a new ``[T, H, D]`` tensor in qk's dtype; k and v stored in the cache's dtype
at flat slot ``slots[t]`` of ``[num_blocks * block_size, KVH, D]``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["rope_store_kv_triton"]


@triton.jit
def _rope_store_kv_kernel(
    qk_ptr,
    v_ptr,
    cos_ptr,
    sin_ptr,
    q_out_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slots_ptr,
    num_heads,
    num_kv_heads,
    stride_qkt,
    stride_qkh,
    stride_vt,
    stride_vh,
    HEAD_DIM: tl.constexpr,
    V_DIM: tl.constexpr,
    V_DIM_PAD: tl.constexpr,
    HALF: tl.constexpr,
    HALF_PAD: tl.constexpr,
    REST: tl.constexpr,
    REST_PAD: tl.constexpr,
    BLOCK_H: tl.constexpr,
    NEOX: tl.constexpr,
):
    # Program (t, j): BLOCK_H heads of token t's q-then-k rows, and the same range of its v heads.
    t = tl.program_id(0).to(tl.int64)
    hs = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    head_mask = hs < num_heads + num_kv_heads
    slot = tl.load(slots_ptr + t).to(tl.int64)
    is_q = hs < num_heads
    # Destination rows: q heads into the new q tensor, k heads into the cache slot (never both for one head).
    q_rows = q_out_ptr + (t * num_heads + hs[:, None]) * HEAD_DIM
    k_rows = k_cache_ptr + (slot * num_kv_heads + (hs[:, None] - num_heads)) * HEAD_DIM
    i = tl.arange(0, HALF_PAD)
    pair_mask = i < HALF
    cos = tl.load(cos_ptr + t * HALF + i, mask=pair_mask, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(sin_ptr + t * HALF + i, mask=pair_mask, other=0.0).to(tl.float32)[None, :]
    if NEOX:
        first, second = i, i + HALF
    else:
        first, second = 2 * i, 2 * i + 1
    src = qk_ptr + t * stride_qkt + hs[:, None] * stride_qkh
    mask = head_mask[:, None] & pair_mask[None, :]
    x0 = tl.load(src + first[None, :], mask=mask, other=0.0).to(tl.float32)
    x1 = tl.load(src + second[None, :], mask=mask, other=0.0).to(tl.float32)
    out0 = x0 * cos - x1 * sin
    out1 = x0 * sin + x1 * cos
    q_mask = mask & is_q[:, None]
    k_mask = mask & ~is_q[:, None]
    # Round to q's dtype first, as the unfused path does (rotate, then store_kv casts to the cache's dtype).
    q_type = q_out_ptr.dtype.element_ty
    k_type = k_cache_ptr.dtype.element_ty
    tl.store(q_rows + first[None, :], out0.to(q_type), mask=q_mask)
    tl.store(q_rows + second[None, :], out1.to(q_type), mask=q_mask)
    tl.store(k_rows + first[None, :], out0.to(q_type).to(k_type), mask=k_mask)
    tl.store(k_rows + second[None, :], out1.to(q_type).to(k_type), mask=k_mask)
    if REST > 0:
        j = tl.arange(0, REST_PAD)
        rest_mask = head_mask[:, None] & (j < REST)[None, :]
        rest = tl.load(src + 2 * HALF + j[None, :], mask=rest_mask, other=0.0)
        tl.store(q_rows + 2 * HALF + j[None, :], rest.to(q_type), mask=rest_mask & is_q[:, None])
        tl.store(k_rows + 2 * HALF + j[None, :], rest.to(k_type), mask=rest_mask & ~is_q[:, None])
    # v heads: program j copies heads j * BLOCK_H.. of them (the grid has at least as many rows as v heads).
    kv = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    d = tl.arange(0, V_DIM_PAD)
    v_mask = (kv < num_kv_heads)[:, None] & (d < V_DIM)[None, :]
    values = tl.load(v_ptr + t * stride_vt + kv[:, None] * stride_vh + d[None, :], mask=v_mask, other=0.0)
    v_rows = v_cache_ptr + (slot * num_kv_heads + kv[:, None]) * V_DIM
    tl.store(v_rows + d[None, :], values.to(v_cache_ptr.dtype.element_ty), mask=v_mask)


def rope_store_kv_triton(
    qk: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    num_heads: int,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slots: torch.Tensor,
    rope_dim: int,
    style: str,
) -> torch.Tensor:
    """Rotate ``qk [T, H + KVH, D]`` (q heads first), store its k heads and ``v [T, KVH, Dv]`` at ``slots [T]``
    of the caches ``[num_blocks, block_size, KVH, D or Dv]``; return rotated q ``[T, H, D]`` in qk's dtype."""
    if qk.dim() != 3 or v.dim() != 3 or key_cache.dim() != 4 or value_cache.dim() != 4:
        raise ValueError("qk and v must be [T, heads, dim] and the caches [blocks, block_size, kv_heads, dim]")
    if style not in ("norm", "neox"):
        raise ValueError(f"unknown rope style {style!r}")
    num_t, rows, head_dim = qk.shape
    num_kv_heads, v_dim = v.shape[1], v.shape[2]
    if rows != num_heads + num_kv_heads or v.shape[0] != num_t or slots.shape != (num_t,):
        raise ValueError(
            f"qk {tuple(qk.shape)} must hold {num_heads} q and {num_kv_heads} k heads for v {tuple(v.shape)} "
            f"and slots {tuple(slots.shape)}"
        )
    if key_cache.shape[2:] != (num_kv_heads, head_dim) or value_cache.shape[2:] != (num_kv_heads, v_dim):
        raise ValueError(f"caches {tuple(key_cache.shape)}, {tuple(value_cache.shape)} do not fit k and v")
    if not (key_cache.is_contiguous() and value_cache.is_contiguous()):
        raise ValueError("the caches must be contiguous")
    if rope_dim % 2 or rope_dim > head_dim:
        raise ValueError(f"rope_dim {rope_dim} must be even and at most head_dim {head_dim}")
    qk = qk if qk.stride(-1) == 1 else qk.contiguous()
    v = v if v.stride(-1) == 1 else v.contiguous()
    q = torch.empty((num_t, num_heads, head_dim), dtype=qk.dtype, device=qk.device)
    if num_t == 0:
        return q
    half = rope_dim // 2
    half_pad = triton.next_power_of_2(max(half, 1))
    rest = head_dim - rope_dim
    # A decode step has one token: spread its heads over ~16 programs (one program for all 64 heads of a 7B
    # model took 14.5 us on an H100, about 5x a launch's cost); long steps get up to 4096 pairs per program.
    per_program = triton.cdiv(rows, 16) if num_t < 16 else rows
    block_h = min(triton.next_power_of_2(per_program), max(1, 4096 // half_pad))  # both powers of two
    _rope_store_kv_kernel[(num_t, triton.cdiv(rows, block_h))](
        qk,
        v,
        cos.contiguous(),
        sin.contiguous(),
        q,
        key_cache,
        value_cache,
        slots,
        num_heads,
        num_kv_heads,
        qk.stride(0),
        qk.stride(1),
        v.stride(0),
        v.stride(1),
        HEAD_DIM=head_dim,
        V_DIM=v_dim,
        V_DIM_PAD=triton.next_power_of_2(v_dim),
        HALF=half,
        HALF_PAD=half_pad,
        REST=rest,
        REST_PAD=triton.next_power_of_2(max(rest, 1)),
        BLOCK_H=block_h,
        NEOX=style == "neox",
        num_warps=4,
    )
    return q
