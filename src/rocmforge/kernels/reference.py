"""Plain torch references for the Triton kernels: slow, obvious, and the oracle in every parity test."""

from __future__ import annotations

import torch
from gguf.constants import GGMLQuantizationType

from rocmforge.gguf.quants import dequantize

__all__ = ["quant_matmul_reference"]


def quant_matmul_reference(
    x: torch.Tensor, raw: torch.Tensor, qtype: GGMLQuantizationType, shape: tuple[int, int]
) -> torch.Tensor:
    """``x @ W.T`` with ``W = dequantize(raw, qtype, shape)``, accumulated in float32.

    Args:
        x: activations, (M, K), any float dtype.
        raw: the weight's GGUF bytes, (N, bytes_per_row) uint8 (or any layout of the same bytes).
        qtype: the weight's ggml type.
        shape: the weight's logical shape ``(N, K)``.

    Returns:
        (M, N) float32 on ``x``'s device.
    """
    if x.dim() != 2 or len(shape) != 2 or x.shape[1] != shape[1]:
        raise ValueError(f"quant_matmul_reference: x of shape {tuple(x.shape)} does not match weight shape {shape}")
    weight = dequantize(raw, qtype, shape).to(x.device)
    return x.to(torch.float32) @ weight.T
