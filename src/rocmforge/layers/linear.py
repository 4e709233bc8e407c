"""Dense linear layers: a weight dequantized once at load into the chosen storage dtype, and their concatenation.

``Linear`` is what the CPU path uses for every matrix and what the GPU path uses for float (F32/F16/BF16)
matrices; :class:`rocmforge.layers.quant_linear.QuantLinear` keeps GGUF blocks quantized on the device. Both
satisfy :class:`LinearLayer`, and :class:`ConcatLinear` runs several of them as one layer.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from rocmforge.layers.norm import DeferredRMSNorm, normed


class LinearLayer(Protocol):
    """What the decoder needs of a projection: ``y [M, out_features] = layer(x [M, in_features])`` in x's dtype,
    or in ``out_dtype`` where given (the logits: float32 from bf16 activations). x may be a
    :class:`DeferredRMSNorm`: the normed activation, which a layer finishes itself or takes ``normed`` of."""

    @property
    def out_features(self) -> int: ...

    def __call__(self, x: torch.Tensor | DeferredRMSNorm, out_dtype: torch.dtype | None = None) -> torch.Tensor: ...


class Linear:
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        self.weight = weight  # [out_features, in_features]
        self.bias = bias

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])

    def __call__(self, x: torch.Tensor | DeferredRMSNorm, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """x in any float dtype -> ``out_dtype`` (x's by default); the product runs in the weight's dtype (bf16
        matmuls on CPU)."""
        x = normed(x)
        y = matmul_rows(x.to(self.weight.dtype), self.weight).to(out_dtype or x.dtype)
        # In place: the output keeps its dtype (a float32 bias would promote a bf16 activation to float32).
        return y.add_(self.bias) if self.bias is not None else y


def matmul_rows(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` where every row's result is the same whatever the other rows are.

    On the CPU a single row takes a GEMV path that sums in another order than the GEMM every larger batch takes,
    so a token's output (and after bf16 rounding, its logits) would depend on whether it had batch mates. A lone
    row therefore goes through the matmul as two, which costs about the same.
    """
    if x.device.type == "cpu" and x.dim() == 2 and x.shape[0] == 1:
        return F.linear(x.expand(2, -1), weight)[:1]
    return F.linear(x, weight)


def stack_rows(
    layers: Sequence[Any], field: str, cat: Callable[[list[Any]], Any] = torch.cat
) -> tuple[Any, torch.Tensor | None]:
    """Concatenate the layers' row-major ``field`` weights (and biases) and re-point each layer at its slice.

    ``field`` holds a tensor, or anything whose rows ``cat`` stacks and ``[start:stop]`` slices (the planes of a
    packed weight). The re-pointing keeps one copy of every matrix in memory while the parts stay usable on their
    own. Where some layers have a bias and others not, the missing ones become exact zeros: outputs stay
    bit-identical.
    """
    stacked = cat([getattr(layer, field) for layer in layers])
    bias = None
    biases = [layer.bias for layer in layers if layer.bias is not None]
    if biases:
        bias = torch.cat(
            [
                layer.bias
                if layer.bias is not None
                else torch.zeros(layer.out_features, dtype=biases[0].dtype, device=biases[0].device)
                for layer in layers
            ]
        )
    offset = 0
    for layer in layers:
        rows = slice(offset, offset + layer.out_features)
        setattr(layer, field, stacked[rows])
        if layer.bias is not None and bias is not None:
            layer.bias = bias[rows]
        offset += layer.out_features
    return stacked, bias


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

    def __call__(self, x: torch.Tensor | DeferredRMSNorm, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.cat([part(x, out_dtype) for part in self.parts], dim=-1)


def split_projection(layer: LinearLayer, x: torch.Tensor | DeferredRMSNorm, sizes: Sequence[int]) -> list[torch.Tensor]:
    """``layer(x)`` split along the last dimension into chunks of ``sizes``.

    Where ``layer`` is a :class:`ConcatLinear` whose parts end at every chunk boundary (q and k sharing a Q4_K
    matrix, v in Q6_K, split as q|k and v), each chunk is its parts' own output: no concatenation copy (a
    kernel and a graph node per layer in decode) only to be split again.

    Raises:
        ValueError: ``sizes`` do not add up to ``layer.out_features``.
    """
    if sum(sizes) != layer.out_features:
        raise ValueError(f"split_projection: sizes {list(sizes)} do not add up to {layer.out_features} outputs")
    if isinstance(layer, ConcatLinear):
        bounds = set(itertools.accumulate(sizes))
        ends = list(itertools.accumulate(part.out_features for part in layer.parts))
        if bounds <= set(ends):
            chunks: list[torch.Tensor] = []
            pending: list[torch.Tensor] = []
            for end, part in zip(ends, layer.parts, strict=True):
                pending.append(part(x))
                if end in bounds:
                    chunks.append(pending[0] if len(pending) == 1 else torch.cat(pending, dim=-1))
                    pending = []
            return chunks
    return list(layer(x).split(list(sizes), dim=-1))
