"""Rotary position embedding in llama.cpp's two layouts.

"norm" rotates adjacent pairs (x[2i], x[2i+1]) — the layout llama.cpp's converter produces for llama-family
models by permuting Q/K rows; "neox" rotates (x[i], x[i + d/2]) — HF's layout, kept for Qwen and Gemma.
On a GPU, ``apply_and_store`` runs as one Triton launch for decode-sized steps (RoPE with the KV-cache write,
``rocmforge.kernels.triton.rope_cache``); the torch code is the CPU path and the reference.
"""

from __future__ import annotations

import torch

from rocmforge.config import RopeStyle
from rocmforge.layers.gpu_kernels import fused_kernel_for
from rocmforge.layers.paged_attention import store_kv


class RotaryEmbedding:
    def __init__(
        self,
        rope_dim: int,
        theta: float,
        style: RopeStyle,
        scaling_factor: float = 1.0,
        freq_factors: torch.Tensor | None = None,
    ) -> None:
        exponents = torch.arange(0, rope_dim, 2, dtype=torch.float64) / rope_dim
        inv_freq = theta**-exponents
        if freq_factors is not None:
            # Llama 3.1-style long-context files carry per-frequency divisors (tensor rope_freqs.weight).
            inv_freq = inv_freq / freq_factors.to(torch.float64)
        # Linear ("position interpolation") scaling compresses positions by the factor.
        self.inv_freq = (inv_freq / scaling_factor).to(torch.float32)
        self.rope_dim = rope_dim
        self.style = style
        # One copy per device, made once: a host-to-device copy inside every step would block CUDA graph capture.
        self._inv_freq_on: dict[torch.device, torch.Tensor] = {}

    def _inv_freq(self, device: torch.device) -> torch.Tensor:
        if device not in self._inv_freq_on:
            self._inv_freq_on[device] = self.inv_freq.to(device)
        return self._inv_freq_on[device]

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of shape [T, rope_dim / 2] for integer positions [T]."""
        angles = positions.to(torch.float32)[:, None] * self._inv_freq(positions.device)[None, :]
        return angles.cos(), angles.sin()

    def apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate the first rope_dim dims of every head; x is [T, heads, head_dim]."""
        rot, rest = x[..., : self.rope_dim].float(), x[..., self.rope_dim :]
        cos, sin = cos[:, None, :], sin[:, None, :]
        if self.style == "norm":
            x0, x1 = rot[..., 0::2], rot[..., 1::2]
            out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)
        else:
            half = self.rope_dim // 2
            x0, x1 = rot[..., :half], rot[..., half:]
            out = torch.cat((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
        return torch.cat((out.to(x.dtype), rest), dim=-1) if rest.numel() else out.to(x.dtype)

    def apply_and_store(
        self,
        qk: torch.Tensor,
        v: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        num_heads: int,
        key_cache: torch.Tensor,
        value_cache: torch.Tensor,
        slots: torch.Tensor,
    ) -> torch.Tensor:
        """Rotate ``qk [T, H + KVH, D]`` (q heads, then k heads), write k and ``v`` to their cache ``slots``
        (see :func:`~rocmforge.layers.paged_attention.store_kv`) and return the rotated q ``[T, H, D]``.

        One Triton launch for decode-sized GPU steps; elsewhere :meth:`apply` and then ``store_kv``.
        """
        if (kernel := fused_kernel_for(qk, "rope_store_kv")) is not None:
            return kernel(qk, v, cos, sin, num_heads, key_cache, value_cache, slots, self.rope_dim, self.style)
        qk = self.apply(qk, cos, sin)
        store_kv(key_cache, value_cache, qk[:, num_heads:], v, slots)
        return qk[:, :num_heads]
