"""A dense linear layer whose weight is dequantized once at load into the chosen storage dtype."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
