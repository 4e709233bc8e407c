"""Dense Linear layers on the CPU."""

from __future__ import annotations

import pytest
import torch

from rocmforge.layers.linear import ConcatLinear, Linear, split_projection


def test_a_lone_row_goes_through_the_same_matmul_as_a_batch() -> None:
    torch.manual_seed(0)
    # K = 1536 and 4864 are shapes where the CPU's single-row GEMV sums in another order than the GEMM.
    for out_features, in_features in ((576, 1536), (896, 4864)):
        layer = Linear(torch.randn(out_features, in_features).bfloat16())
        x = torch.randn(32, in_features)
        batch = layer(x)
        assert all(torch.equal(layer(x[r : r + 1])[0], batch[r]) for r in range(32))


class _Recording:
    """A projection that keeps its last output, to tell a returned chunk that is that output from a copy."""

    def __init__(self, linear: Linear) -> None:
        self.linear = linear
        self.last: torch.Tensor | None = None

    @property
    def out_features(self) -> int:
        return self.linear.out_features

    def __call__(self, x: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        self.last = self.linear(x, out_dtype)
        return self.last


def test_split_projection_returns_the_parts_outputs_where_boundaries_meet() -> None:
    torch.manual_seed(1)
    parts = [_Recording(Linear(torch.randn(n, 64))) for n in (32, 16, 24)]
    layer = ConcatLinear(parts)
    x = torch.randn(3, 64)
    whole = layer(x)
    # q|k (two parts, concatenated once) and v (one part: its own output, not a copy).
    qk, v = split_projection(layer, x, (48, 24))
    assert torch.equal(torch.cat([qk, v], dim=-1), whole)
    assert v is parts[2].last
    # Boundaries inside a part: the whole output, split.
    a, b = split_projection(layer, x, (40, 32))
    assert torch.equal(a, whole[:, :40]) and torch.equal(b, whole[:, 40:])
    # A plain layer splits its output.
    gate, up = split_projection(Linear(torch.randn(8, 64)), x, (4, 4))
    assert gate.shape == up.shape == (3, 4)
    with pytest.raises(ValueError, match="do not add up to 72"):
        split_projection(layer, x, (48, 20))
