"""One decoder-only transformer covering llama, qwen2, qwen3 and gemma3 through ModelConfig flags.

One forward serves every caller: ``forward_batch`` runs a step's packed tokens from many sequences over the
paged KV cache (the engine), and ``forward`` is its one-sequence special case over a one-block cache (the
reference generator and the parity tests), so the path checked against llama.cpp is the path that serves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rocmforge.config import ModelConfig
from rocmforge.layers.activation import gated_activation
from rocmforge.layers.linear import ConcatLinear, Linear, LinearLayer, split_projection, stack_rows
from rocmforge.layers.norm import DeferredRMSNorm, add_rms_norm, normed, rms_norm
from rocmforge.layers.paged_attention import PagedAttentionMetadata, SequenceSlice, paged_attention
from rocmforge.layers.quant_linear import QuantLinear
from rocmforge.layers.rotary import RotaryEmbedding
from rocmforge.models.kv_cache import PagedKVCache


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


@dataclass
class _FusedLayer:
    """Per-layer tensors derived once at construction so that each step launches fewer, larger ops."""

    qkv_proj: LinearLayer  # q, k and v projections stacked on out_features: one matmul (and one cast) for three
    gate_up_proj: LinearLayer  # likewise gate and up
    qk_norm: torch.Tensor | None  # [num_heads + num_kv_heads, head_dim]: q_norm rows, then k_norm rows


def _project_add_norm(
    proj: LinearLayer,
    x: torch.Tensor,
    post_norm: torch.Tensor | None,
    residual: torch.Tensor,
    norm_weight: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor | DeferredRMSNorm, torch.Tensor]:
    """A projection, its optional post-norm (Gemma), the residual add and the next RMSNorm: (normed, h).

    Where the projection's one-row kernel can end with the add and leave the norm to the next projection
    (``QuantLinear.add_rms_norm``, decode steps of one sequence), normed is a :class:`DeferredRMSNorm` and the
    add + norm launch is gone (64 of a 7B step's launches); otherwise the ops run one by one.
    """
    if post_norm is None and isinstance(proj, QuantLinear):
        deferred = proj.add_rms_norm(x, residual, norm_weight, eps)
        if deferred is not None:
            return deferred, deferred.h
    y = proj(x)
    if post_norm is not None:
        y = rms_norm(y, post_norm, eps)
    return add_rms_norm(y, residual, norm_weight, eps)


def _fuse_dense(linears: list[Linear]) -> Linear:
    """One Linear whose output is the given ones' outputs concatenated; they become views of its storage.

    Re-pointing the originals at slices keeps a single copy of every matrix in memory while
    ModelWeights still exposes q_proj, k_proj, ... with unchanged values.
    """
    weight, bias = stack_rows(linears, "weight")
    return Linear(weight, bias)


def _shares_matrix(a: LinearLayer, b: LinearLayer) -> bool:
    """Whether two projections can be stacked into one matrix: both dense, or both quantized alike."""
    if isinstance(a, Linear) and isinstance(b, Linear):
        return True
    return isinstance(a, QuantLinear) and isinstance(b, QuantLinear) and a.can_fuse(b)


def _fuse_linears(linears: list[LinearLayer]) -> LinearLayer:
    """One layer whose output is the given ones' outputs concatenated, in order.

    Runs of neighbours that can share a matrix are stacked into one (dense weights, or GGUF rows of one type);
    when types differ (Q4_K_M keeps attn_v and some ffn tensors in Q6_K) the runs stay separate and a
    ConcatLinear runs them one after another. The dense-only case (the CPU path) is a single stacked Linear.
    """
    runs: list[list[LinearLayer]] = [[linears[0]]]
    for linear in linears[1:]:
        if _shares_matrix(runs[-1][-1], linear):
            runs[-1].append(linear)
        else:
            runs.append([linear])
    fused: list[LinearLayer] = []
    for run in runs:
        if len(run) == 1:
            fused.append(run[0])
        elif isinstance(run[0], Linear):
            fused.append(_fuse_dense([linear for linear in run if isinstance(linear, Linear)]))
        else:
            fused.append(QuantLinear.fuse([linear for linear in run if isinstance(linear, QuantLinear)]))
    return fused[0] if len(fused) == 1 else ConcatLinear(fused)


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

    @property
    def attention_windows(self) -> tuple[int | None, ...]:
        """The distinct sliding windows of the layers (None: global attention)."""
        return tuple({self.config.layer_window(i) for i in range(self.config.num_layers)})

    def new_kv_cache(self, max_len: int) -> PagedKVCache:
        """A one-sequence cache: a single block of max_len slots."""
        return PagedKVCache(self.config, 1, max_len, self.dtype, self.device)

    def forward(
        self, token_ids: torch.Tensor, start_pos: int, cache: PagedKVCache, all_logits: bool = False
    ) -> torch.Tensor:
        """One sequence's tokens at positions start_pos.. over a cache from ``new_kv_cache``.

        Returns float32 logits: [T, vocab] with all_logits, else [1, vocab] for the last token only (prefill
        needs just that one, and the vocab projection is the largest matmul of small models).
        """
        num_tokens = int(token_ids.shape[0])
        end_pos = start_pos + num_tokens
        if cache.num_blocks != 1 or end_pos > cache.max_len:
            raise ValueError(f"sequence of {end_pos} tokens exceeds the KV cache of {cache.max_len}")
        metadata = PagedAttentionMetadata.build(
            [SequenceSlice(0, num_tokens, end_pos, (0,))], cache.block_size, self.attention_windows, self.device
        )
        positions = torch.arange(start_pos, end_pos, device=self.device)
        logits_indices = None if all_logits else torch.tensor([num_tokens - 1], device=self.device)
        return self.forward_batch(token_ids.to(self.device), positions, cache, metadata, logits_indices)

    @torch.inference_mode()
    def forward_batch(
        self,
        token_ids: torch.Tensor,
        positions: torch.Tensor,
        cache: PagedKVCache,
        metadata: PagedAttentionMetadata,
        logits_indices: torch.Tensor | None,
    ) -> torch.Tensor:
        """Run a step's packed tokens [T] at their positions [T], writing their K/V to ``metadata.slot_mapping``.

        Returns float32 logits for the rows ``logits_indices`` (all rows when None): only the tokens that
        sample need the vocab projection, the largest matmul of small models.
        """
        cfg, w = self.config, self.weights
        num_tokens = token_ids.shape[0]
        rope_tables = {swa: rope.cos_sin(positions) for swa, rope in self._rope.items()}
        q_size, kv_size = cfg.q_size, cfg.kv_size
        v_size = cfg.num_kv_heads * cfg.v_head_dim
        num_qk_heads = cfg.num_heads + cfg.num_kv_heads
        h = w.embed_tokens[token_ids].to(self.dtype)
        if cfg.embedding_scale != 1.0:
            h = h * cfg.embedding_scale
        # h is the residual stream; each residual add is fused with the norm that follows it (add_rms_norm), or
        # into the projection before it, the norm finished by the projection after it (_project_add_norm).
        x = rms_norm(h, w.layers[0].attn_norm, cfg.rms_norm_eps)
        for index, (layer, fused) in enumerate(zip(w.layers, self._fused, strict=True)):
            swa = cfg.sliding_window_layers[index]
            qk, v = split_projection(fused.qkv_proj, x, (q_size + kv_size, v_size))
            # q and k side by side as [T, H + KVH, D]: their norms and RoPE run once for both.
            qk = qk.view(num_tokens, num_qk_heads, cfg.head_dim)
            v = v.view(num_tokens, cfg.num_kv_heads, cfg.v_head_dim)
            if fused.qk_norm is not None:
                qk = rms_norm(qk, fused.qk_norm, cfg.rms_norm_eps)
            cos, sin = rope_tables[swa]
            key_cache, value_cache = cache.key_caches[index], cache.value_caches[index]
            q = self._rope[swa].apply_and_store(
                qk, v, cos, sin, cfg.num_heads, key_cache, value_cache, metadata.slot_mapping
            )
            attn = paged_attention(q, key_cache, value_cache, metadata, cfg.layer_window(index), cfg.attention_scale)
            x, h = _project_add_norm(layer.o_proj, attn, layer.post_attn_norm, h, layer.ffn_norm, cfg.rms_norm_eps)
            gate, up = split_projection(fused.gate_up_proj, x, (cfg.intermediate_size, cfg.intermediate_size))
            act = gated_activation(gate, up, cfg.activation)
            next_norm = w.layers[index + 1].attn_norm if index + 1 < len(w.layers) else w.final_norm
            x, h = _project_add_norm(layer.down_proj, act, layer.post_ffn_norm, h, next_norm, cfg.rms_norm_eps)
        if logits_indices is not None:
            x = normed(x)[logits_indices]
        return w.lm_head(x, torch.float32)  # written in float32 by the GPU kernels: no bf16 rounding of logits
