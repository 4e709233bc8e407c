"""One decoder-only transformer covering llama, qwen2, qwen3 and gemma3 through ModelConfig flags.

This is the CPU reference path: plain torch, one sequence at a time, a contiguous KV cache. Faster paths
(batched, paged, Triton) are tested against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rocmforge.config import ModelConfig
from rocmforge.layers.activation import gated_activation
from rocmforge.layers.attention import attention_mask, reference_attention
from rocmforge.layers.linear import Linear
from rocmforge.layers.norm import rms_norm
from rocmforge.layers.rotary import RotaryEmbedding


@dataclass
class LayerWeights:
    attn_norm: torch.Tensor
    q_proj: Linear
    k_proj: Linear
    v_proj: Linear
    o_proj: Linear
    ffn_norm: torch.Tensor
    gate_proj: Linear
    up_proj: Linear
    down_proj: Linear
    q_norm: torch.Tensor | None = None
    k_norm: torch.Tensor | None = None
    post_attn_norm: torch.Tensor | None = None
    post_ffn_norm: torch.Tensor | None = None


@dataclass
class ModelWeights:
    embed_tokens: torch.Tensor  # [vocab, hidden]
    layers: list[LayerWeights]
    final_norm: torch.Tensor
    lm_head: Linear  # shares embed_tokens' storage when the model ties them
    rope_freq_factors: torch.Tensor | None = None


class KVCache:
    """Contiguous per-layer K/V for one sequence: [max_len, num_kv_heads, head_dim]."""

    def __init__(self, config: ModelConfig, max_len: int, dtype: torch.dtype, device: torch.device) -> None:
        shape_k = (max_len, config.num_kv_heads, config.head_dim)
        shape_v = (max_len, config.num_kv_heads, config.v_head_dim)
        self.keys = [torch.zeros(shape_k, dtype=dtype, device=device) for _ in range(config.num_layers)]
        self.values = [torch.zeros(shape_v, dtype=dtype, device=device) for _ in range(config.num_layers)]
        self.max_len = max_len


class DecoderModel:
    def __init__(self, config: ModelConfig, weights: ModelWeights, dtype: torch.dtype) -> None:
        self.config = config
        self.weights = weights
        self.dtype = dtype
        self.device = weights.embed_tokens.device
        # Sliding-window layers may use their own RoPE base (Gemma 3); linear scaling applies to global ones.
        self._rope = {
            swa: RotaryEmbedding(
                config.rope_dim,
                config.rope_theta_swa if swa else config.rope_theta,
                config.rope_style,
                1.0 if swa else config.rope_scaling_factor,
                weights.rope_freq_factors,
            )
            for swa in (False, True)
        }

    def new_kv_cache(self, max_len: int) -> KVCache:
        return KVCache(self.config, max_len, self.dtype, self.device)

    @torch.inference_mode()
    def forward(
        self, token_ids: torch.Tensor, start_pos: int, cache: KVCache, all_logits: bool = False
    ) -> torch.Tensor:
        """Run tokens at positions start_pos.. through the model, appending their K/V.

        Returns float32 logits: [T, vocab] with all_logits, else [1, vocab] for the last token only (prefill
        needs just that one, and the vocab projection is the largest matmul of small models).
        """
        cfg, w = self.config, self.weights
        num_tokens = token_ids.shape[0]
        end_pos = start_pos + num_tokens
        if end_pos > cache.max_len:
            raise ValueError(f"sequence of {end_pos} tokens exceeds the KV cache of {cache.max_len}")
        positions = torch.arange(start_pos, end_pos, device=self.device)
        k_positions = torch.arange(0, end_pos, device=self.device)
        rope_tables = {swa: rope.cos_sin(positions) for swa, rope in self._rope.items()}
        masks = {
            window: attention_mask(positions, k_positions, window)
            for window in {cfg.layer_window(i) for i in range(cfg.num_layers)}
        }

        h = w.embed_tokens[token_ids].to(self.dtype)
        if cfg.embedding_scale != 1.0:
            h = h * cfg.embedding_scale
        for index, layer in enumerate(w.layers):
            swa = cfg.sliding_window_layers[index]
            x = rms_norm(h, layer.attn_norm, cfg.rms_norm_eps)
            q = layer.q_proj(x).view(num_tokens, cfg.num_heads, cfg.head_dim)
            k = layer.k_proj(x).view(num_tokens, cfg.num_kv_heads, cfg.head_dim)
            v = layer.v_proj(x).view(num_tokens, cfg.num_kv_heads, cfg.v_head_dim)
            if layer.q_norm is not None and layer.k_norm is not None:
                q = rms_norm(q, layer.q_norm, cfg.rms_norm_eps)
                k = rms_norm(k, layer.k_norm, cfg.rms_norm_eps)
            cos, sin = rope_tables[swa]
            q = self._rope[swa].apply(q, cos, sin)
            k = self._rope[swa].apply(k, cos, sin)
            cache.keys[index][start_pos:end_pos] = k
            cache.values[index][start_pos:end_pos] = v
            attn = reference_attention(
                q,
                cache.keys[index][:end_pos],
                cache.values[index][:end_pos],
                masks[cfg.layer_window(index)],
                cfg.attention_scale,
            )
            attn = layer.o_proj(attn)
            if layer.post_attn_norm is not None:
                attn = rms_norm(attn, layer.post_attn_norm, cfg.rms_norm_eps)
            h = h + attn

            x = rms_norm(h, layer.ffn_norm, cfg.rms_norm_eps)
            ffn = layer.down_proj(gated_activation(layer.gate_proj(x), layer.up_proj(x), cfg.activation))
            if layer.post_ffn_norm is not None:
                ffn = rms_norm(ffn, layer.post_ffn_norm, cfg.rms_norm_eps)
            h = h + ffn
        if not all_logits:
            h = h[-1:]
        h = rms_norm(h, w.final_norm, cfg.rms_norm_eps)
        return w.lm_head(h).float()
