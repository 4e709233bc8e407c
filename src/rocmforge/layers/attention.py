"""Reference attention over explicit key positions: causal, grouped-query, optionally windowed."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def attention_mask(q_positions: torch.Tensor, k_positions: torch.Tensor, window: int | None) -> torch.Tensor:
    """Boolean [T, S]: query t may see key s. A window of W keeps distances 0..W-1, as llama.cpp's SWA mask."""
    distance = q_positions[:, None] - k_positions[None, :]
    allowed = distance >= 0
    if window is not None:
        allowed &= distance < window
    return allowed


def reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """q [T, H, D], k [S, KVH, D], v [S, KVH, Dv], mask [T, S] -> [T, H * Dv], softmax in float32."""
    num_heads, num_kv_heads = q.shape[1], k.shape[1]
    group = num_heads // num_kv_heads
    # Query head h reads KV head h // group (the layout llama.cpp and HF share).
    k = k.repeat_interleave(group, dim=1) if group > 1 else k
    v = v.repeat_interleave(group, dim=1) if group > 1 else v
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1).float(),
        k.transpose(0, 1).float(),
        v.transpose(0, 1).float(),
        attn_mask=mask,
        scale=scale,
    )
    return out.transpose(0, 1).reshape(q.shape[0], -1).to(q.dtype)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """One query token over keys it may all see: q [1, H, D], k [S, KVH, D], v [S, KVH, Dv] -> [1, H * Dv].

    The decode step's fast path (the caller drops keys outside a sliding window first). The query heads that
    share a KV head become that head's query rows, so grouped-query attention needs no repeat_interleave copy
    of K/V, and without a mask SDPA takes its fused CPU kernel instead of the masked math path.
    """
    num_heads, num_kv_heads = q.shape[1], k.shape[1]
    group = num_heads // num_kv_heads
    out = F.scaled_dot_product_attention(
        q.reshape(1, num_kv_heads, group, q.shape[2]).float(),
        k.transpose(0, 1).unsqueeze(0).float(),
        v.transpose(0, 1).unsqueeze(0).float(),
        scale=scale,
    )
    return out.reshape(1, num_heads * v.shape[2]).to(q.dtype)
