"""Dense linear layers: a weight dequantized once at load into the chosen storage dtype, and their concatenation.

``Linear`` is what the CPU path uses for every matrix and what the GPU path uses for float (F32/F16/BF16)
matrices; :class:`rocmforge.layers.quant_linear.QuantLinear` keeps GGUF blocks quantized on the device. Both
satisfy :class:`LinearLayer`, and :class:`ConcatLinear` runs several of them as one layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F


class LinearLayer(Protocol):
    """What the decoder needs of a projection: ``y [M, out_features] = layer(x [M, in_features])`` in x's dtype."""

    @property
    def out_features(self) -> int: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


class Linear:
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.weight = weight  # [out_features, in_features]
        self.bias = bias

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x in any float dtype -> x's dtype; the product runs in the weight's dtype (bf16 matmuls on CPU)."""
        y = F.linear(x.to(self.weight.dtype), self.weight)
        y = y.to(x.dtype)
        return y + self.bias if self.bias is not None else y


class ConcatLinear:
    """Several layers over the same input whose outputs are concatenated along the last dimension.

    Used where projections cannot share one matrix (a Q4_K_M file stores attn_q as Q4_K but attn_v as Q6_K): the
    decoder still gets one fused q/k/v output, at the cost of one launch per part and a copy of the output.
    """

    def __init__(self, parts: Sequence[LinearLayer]) -> None:
        if not parts:
            raise ValueError("ConcatLinear needs at least one layer")
        self.parts = list(parts)

    @property
    def out_features(self) -> int:
        return sum(part.out_features for part in self.parts)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([part(x) for part in self.parts], dim=-1)
