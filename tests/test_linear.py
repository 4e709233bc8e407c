"""Dense Linear layers on the CPU."""

from __future__ import annotations

import torch

from rocmforge.layers.linear import Linear


def test_a_lone_row_goes_through_the_same_matmul_as_a_batch() -> None:
    torch.manual_seed(0)
    # K = 1536 and 4864 are shapes where the CPU's single-row GEMV sums in another order than the GEMM.
    for out_features, in_features in ((576, 1536), (896, 4864)):
        layer = Linear(torch.randn(out_features, in_features).bfloat16())
        x = torch.randn(32, in_features)
        batch = layer(x)
        assert all(torch.equal(layer(x[r : r + 1])[0], batch[r]) for r in range(32))
