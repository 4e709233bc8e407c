"""RMSNorm, computed in float32 whatever the activation dtype (as llama.cpp does).

On a GPU it runs as one Triton launch for decode-sized steps (``rocmforge.kernels.triton.norm_rope``); the torch
code below is the CPU path and the reference, checked against llama.cpp.
"""

from __future__ import annotations

import torch

from rocmforge.layers.gpu_kernels import fused_kernel_for


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x * weight / sqrt(mean(x^2) + eps) over the last dim. Gemma's (1 + w) is already folded into GGUF weights."""
    if (kernel := fused_kernel_for(x, "rms_norm")) is not None:
        return kernel(x, weight, eps)
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (normed * weight).to(x.dtype)


def add_rms_norm(
    delta: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual update and the next norm: ``h = residual + delta``, returned with ``rms_norm(h)``.

    Returns (normed, h). One Triton launch for decode-sized GPU steps; on the CPU exactly the two ops.
    """
    if (kernel := fused_kernel_for(residual, "add_rms_norm")) is not None and delta.dtype == residual.dtype:
        return kernel(delta, residual, weight, eps)
    h = residual + delta
    return rms_norm(h, weight, eps), h
