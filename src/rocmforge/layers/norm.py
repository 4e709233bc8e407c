"""RMSNorm, computed in float32 whatever the activation dtype (as llama.cpp does).

On a GPU it runs as one Triton launch for decode-sized steps (``rocmforge.kernels.triton.norm_rope``); the torch
code below is the CPU path and the reference, checked against llama.cpp.
"""

from __future__ import annotations

import functools

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


class DeferredRMSNorm:
    """``rms_norm(h, weight, eps)`` left for the next projection to finish: ``scaled = h * weight`` (activation
    dtype) and float32 sums of h^2 per 64-row tile, written by the projection before it with the residual add
    (``packed_gemv_add_rms_norm``). A one-row Q4_K/Q6_K projection multiplies ``scaled`` and applies
    ``1 / sqrt(mean(h^2) + eps)`` to its outputs, so the norm costs no launch of its own; any other layer takes
    :attr:`normed`, computed once on first use."""

    def __init__(
        self, h: torch.Tensor, weight: torch.Tensor, eps: float, scaled: torch.Tensor, sum_squares: torch.Tensor
    ) -> None:
        self.h, self.weight, self.eps = h, weight, eps
        self.scaled, self.sum_squares = scaled, sum_squares

    @functools.cached_property
    def normed(self) -> torch.Tensor:
        return rms_norm(self.h, self.weight, self.eps)


def normed(x: torch.Tensor | DeferredRMSNorm) -> torch.Tensor:
    """x as a tensor: a deferred norm computed (see :class:`DeferredRMSNorm`)."""
    return x.normed if isinstance(x, DeferredRMSNorm) else x
