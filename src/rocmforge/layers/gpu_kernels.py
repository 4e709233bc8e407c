"""Which small fused Triton kernels the layers call instead of chains of torch ops on the GPU.

The kernels: RMSNorm, residual add + RMSNorm, RoPE + KV-cache write, and the gated activation.

They replace chains of elementwise torch launches with one launch each. That pays where a step is a long chain
of tiny launches replayed from a CUDA graph (decode: ~30 launches per layer became ~12, and in a graph each node
costs a few microseconds of GPU time however little it does). It was measured not to pay elsewhere: launched
eagerly from Python a Triton kernel costs more host time than the torch ops it replaces, and on 512-token
prefills the torch ops were faster (BENCHMARKS.md, "Fused RMSNorm / RoPE kernels"). So the kernels serve GPU
tensors of at most :data:`FUSED_MAX_TOKENS` tokens (decode batches) and torch serves the rest, including every
CPU tensor (the CPU path stays the reference).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal

import torch

from rocmforge.kernels.triton.availability import triton_available

__all__ = ["FUSED_MAX_TOKENS", "fused_kernel_for"]

# The largest decode batch the engine captures in CUDA graphs by default is 64 sequences; prefill chunks are
# usually far larger.
FUSED_MAX_TOKENS = 256

KernelName = Literal["rms_norm", "add_rms_norm", "rope_store_kv", "gated_activation"]


@functools.cache
def _kernel(name: KernelName) -> Callable[..., torch.Tensor]:
    # Imported on first use: defining Triton kernels must follow TRITON_INTERPRET (see tests/kernels/conftest.py).
    from rocmforge.kernels.triton import norm_rope, rope_cache

    kernels: dict[str, Callable[..., Any]] = {
        "rms_norm": norm_rope.rms_norm_triton,
        "add_rms_norm": norm_rope.add_rms_norm_triton,
        "rope_store_kv": rope_cache.rope_store_kv_triton,
        "gated_activation": norm_rope.gated_activation_triton,
    }
    return kernels[name]


def fused_kernel_for(x: torch.Tensor, name: KernelName) -> Callable[..., torch.Tensor] | None:
    """The fused kernel ``name`` if it should serve ``x`` (a GPU tensor of few tokens), else None (use torch)."""
    if x.device.type != "cuda" or x.dim() < 2 or x.shape[0] > FUSED_MAX_TOKENS or not triton_available():
        return None
    return _kernel(name)
