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
