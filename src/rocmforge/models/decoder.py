"""One decoder-only transformer covering llama, qwen2, qwen3 and gemma3 through ModelConfig flags.

This is the CPU reference path: plain torch, one sequence at a time, a contiguous KV cache. Faster paths
(batched, paged, Triton) are tested against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rocmforge.config import ModelConfig
from rocmforge.layers.activation import gated_activation
from rocmforge.layers.attention import attention_mask, decode_attention, reference_attention
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


@dataclass
class _FusedLayer:
    """Per-layer tensors derived once at construction so that each step launches fewer, larger ops."""

    qkv_proj: Linear  # q, k and v projections stacked on out_features: one matmul (and one cast) for three
    gate_up_proj: Linear  # likewise gate and up
    qk_norm: torch.Tensor | None  # [num_heads + num_kv_heads, head_dim]: q_norm rows, then k_norm rows


def _fuse_linears(linears: list[Linear]) -> Linear:
    """One Linear whose output is the given ones' outputs concatenated; they become views of its storage.

    Re-pointing the originals at slices keeps a single copy of every matrix in memory while
    ModelWeights still exposes q_proj, k_proj, ... with unchanged values.
    """
    weight = torch.cat([linear.weight for linear in linears])
    bias = None
    biases = [linear.bias for linear in linears if linear.bias is not None]
    if biases:
        # Adding an exact 0.0 where a projection has no bias leaves its outputs bit-identical.
        bias = torch.cat(
            [
                linear.bias
                if linear.bias is not None
                else torch.zeros(linear.out_features, dtype=biases[0].dtype, device=biases[0].device)
                for linear in linears
            ]
        )
    offset = 0
    for linear in linears:
        rows = slice(offset, offset + linear.out_features)
        linear.weight = weight[rows]
        if linear.bias is not None and bias is not None:
            linear.bias = bias[rows]
        offset += linear.out_features
    return Linear(weight, bias)


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
            for swa in set(config.sliding_window_layers)
        }
        self._fused = [self._fuse_layer(layer) for layer in weights.layers]

    def _fuse_layer(self, layer: LayerWeights) -> _FusedLayer:
        cfg = self.config
        qk_norm = None
        if layer.q_norm is not None and layer.k_norm is not None:
            # Per-head RMSNorm of q and k in one call: the same norm over head_dim, with a weight row per head.
            qk_norm = torch.cat(
                [layer.q_norm.expand(cfg.num_heads, -1), layer.k_norm.expand(cfg.num_kv_heads, -1)]
            ).contiguous()
        return _FusedLayer(
            qkv_proj=_fuse_linears([layer.q_proj, layer.k_proj, layer.v_proj]),
            gate_up_proj=_fuse_linears([layer.gate_proj, layer.up_proj]),
            qk_norm=qk_norm,
        )

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
        rope_tables = {swa: rope.cos_sin(positions) for swa, rope in self._rope.items()}
        # A single query token sees every cached key but those beyond its window: decode slices the cache
        # instead of building a mask (see decode_attention).
        decode = num_tokens == 1
        masks: dict[int | None, torch.Tensor] = {}
        if not decode:
            k_positions = torch.arange(0, end_pos, device=self.device)
            masks = {
                window: attention_mask(positions, k_positions, window)
                for window in {cfg.layer_window(i) for i in range(cfg.num_layers)}
            }
        q_size, kv_size = cfg.q_size, cfg.kv_size
        num_qk_heads = cfg.num_heads + cfg.num_kv_heads
        h = w.embed_tokens[token_ids].to(self.dtype)
        if cfg.embedding_scale != 1.0:
            h = h * cfg.embedding_scale
        for index, (layer, fused) in enumerate(zip(w.layers, self._fused, strict=True)):
            swa = cfg.sliding_window_layers[index]
            x = rms_norm(h, layer.attn_norm, cfg.rms_norm_eps)
            qkv = fused.qkv_proj(x)
            # q and k side by side as [T, H + KVH, D]: their norms and RoPE run once for both.
            qk = qkv[:, : q_size + kv_size].view(num_tokens, num_qk_heads, cfg.head_dim)
            v = qkv[:, q_size + kv_size :].view(num_tokens, cfg.num_kv_heads, cfg.v_head_dim)
            if fused.qk_norm is not None:
                qk = rms_norm(qk, fused.qk_norm, cfg.rms_norm_eps)
            cos, sin = rope_tables[swa]
            qk = self._rope[swa].apply(qk, cos, sin)
            q, k = qk[:, : cfg.num_heads], qk[:, cfg.num_heads :]
            cache.keys[index][start_pos:end_pos] = k
            cache.values[index][start_pos:end_pos] = v
            window = cfg.layer_window(index)
            if decode:
                first = 0 if window is None else max(0, end_pos - window)
                attn = decode_attention(
                    q,
                    cache.keys[index][first:end_pos],
                    cache.values[index][first:end_pos],
                    cfg.attention_scale,
                )
            else:
                attn = reference_attention(
                    q,
                    cache.keys[index][:end_pos],
                    cache.values[index][:end_pos],
                    masks[window],
                    cfg.attention_scale,
                )
            attn = layer.o_proj(attn)
            if layer.post_attn_norm is not None:
                attn = rms_norm(attn, layer.post_attn_norm, cfg.rms_norm_eps)
            h = h + attn
            x = rms_norm(h, layer.ffn_norm, cfg.rms_norm_eps)
            gate, up = fused.gate_up_proj(x).split(cfg.intermediate_size, dim=-1)
            ffn = layer.down_proj(gated_activation(gate, up, cfg.activation))
            if layer.post_ffn_norm is not None:
                ffn = rms_norm(ffn, layer.post_ffn_norm, cfg.rms_norm_eps)
            h = h + ffn
        if not all_logits:
            h = h[-1:]
        h = rms_norm(h, w.final_norm, cfg.rms_norm_eps)
        return w.lm_head(h).float()
