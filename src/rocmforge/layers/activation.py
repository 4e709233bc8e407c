"""Gated feed-forward activations: act(gate) * up."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rocmforge.config import Activation


def gated_activation(gate: torch.Tensor, up: torch.Tensor, activation: Activation) -> torch.Tensor:
    if activation == "silu":
        return F.silu(gate) * up
    # Gemma uses the tanh approximation of GELU (llama.cpp's ggml_gelu), not the exact erf form.
    return F.gelu(gate, approximate="tanh") * up
