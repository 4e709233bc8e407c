"""Gated feed-forward activations: act(gate) * up (one Triton launch for decode-sized GPU steps)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rocmforge.config import Activation
from rocmforge.layers.gpu_kernels import fused_kernel_for


def gated_activation(gate: torch.Tensor, up: torch.Tensor, activation: Activation) -> torch.Tensor:
    if (kernel := fused_kernel_for(gate, "gated_activation")) is not None:
        return kernel(gate, up, activation)
    if activation == "silu":
        return F.silu(gate) * up
    # Gemma uses the tanh approximation of GELU (llama.cpp's ggml_gelu), not the exact erf form.
    return F.gelu(gate, approximate="tanh") * up
