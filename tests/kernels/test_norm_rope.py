"""The Triton RMSNorm and gated-activation kernels against the CPU functions they replace on the GPU.

Without a GPU these run on the CPU through ``TRITON_INTERPRET=1`` in float32 at small shapes (hidden sizes
that are not powers of two, per-head q/k norm weights on the strided ``[T, heads, head_dim]`` views of a fused
QKV output that the decoder hands them); tests marked ``gpu`` run model-sized shapes in bf16 and float32 on a
CUDA/ROCm device against the CPU functions on the same inputs. RoPE's tests are in test_rope_cache.py.
"""

from __future__ import annotations

import pytest
import torch

from rocmforge.kernels.triton.norm_rope import (
    add_rms_norm_triton,
    gated_activation_triton,
    rms_norm_triton,
)
from rocmforge.layers.activation import gated_activation
from rocmforge.layers.norm import add_rms_norm, rms_norm

CPU = torch.device("cpu")
KERNEL_DEVICE = torch.device("cuda") if torch.cuda.is_available() else CPU
EPS = 1e-6


def _fused_view(num_tokens: int, heads: int, head_dim: int, extra: int, gen: torch.Generator) -> torch.Tensor:
    """A [T, heads, head_dim] view of a wider [T, heads * head_dim + extra] buffer, like the decoder's qk."""
    buffer = torch.randn(num_tokens, heads * head_dim + extra, generator=gen) * 3.0
    return buffer[:, : heads * head_dim].view(num_tokens, heads, head_dim)


def _assert_rms_norm_matches(x: torch.Tensor, weight: torch.Tensor, rtol: float, atol: float) -> None:
    expected = rms_norm(x.to(CPU), weight.to(CPU), EPS)
    actual = rms_norm_triton(x.to(KERNEL_DEVICE), weight.to(KERNEL_DEVICE), EPS)
    assert actual.dtype == x.dtype and actual.shape == x.shape
    torch.testing.assert_close(actual.to(CPU).float(), expected.float(), rtol=rtol, atol=atol)


# ---- interpreter (or GPU) at small shapes, float32 --------------------------------------------------------


@pytest.mark.parametrize("hidden", [64, 576, 896])
def test_rms_norm_rows(hidden: int) -> None:
    gen = torch.Generator().manual_seed(hidden)
    x = torch.randn(5, hidden, generator=gen) * 2.0 + 0.5
    weight = torch.randn(hidden, generator=gen)
    _assert_rms_norm_matches(x, weight, rtol=1e-5, atol=1e-6)


def test_rms_norm_one_row_and_leading_dims() -> None:
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(96, generator=gen)
    _assert_rms_norm_matches(torch.randn(96, generator=gen), weight, rtol=1e-5, atol=1e-6)
    _assert_rms_norm_matches(torch.randn(2, 3, 4, 96, generator=gen), weight, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("head_dim", [64, 128])
def test_rms_norm_per_head_weight_on_a_strided_view(head_dim: int) -> None:
    """The decoder's q/k norm: x a strided [T, H + KVH, D] view, weight [H + KVH, D] (q rows, then k rows)."""
    gen = torch.Generator().manual_seed(head_dim)
    x = _fused_view(3, 6, head_dim, extra=2 * head_dim, gen=gen)
    assert not x.is_contiguous()
    weight = torch.randn(6, head_dim, generator=gen)
    _assert_rms_norm_matches(x, weight, rtol=1e-5, atol=1e-6)
    # A single [D] weight shared by every head too.
    _assert_rms_norm_matches(x, weight[0], rtol=1e-5, atol=1e-6)


def test_rms_norm_empty() -> None:
    out = rms_norm_triton(torch.empty(0, 64, device=KERNEL_DEVICE), torch.ones(64, device=KERNEL_DEVICE), EPS)
    assert out.shape == (0, 64)


# ---- model-sized shapes on a real GPU ---------------------------------------------------------------------

# bf16 results may differ from the CPU's by one bf16 rounding of a float32 value that differs in its last bits.
TOLERANCES = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (1.6e-2, 1e-2)}


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("num_tokens", "hidden"), [(1, 576), (64, 896), (256, 4096), (16, 8192)])
def test_gpu_rms_norm_model_shapes(dtype: torch.dtype, num_tokens: int, hidden: int) -> None:
    gen = torch.Generator().manual_seed(hidden + num_tokens)
    x = (torch.randn(num_tokens, hidden, generator=gen) * 4.0).to(dtype)
    weight = torch.randn(hidden, generator=gen)
    _assert_rms_norm_matches(x, weight, *TOLERANCES[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_qk_norm_model_shape(dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(3)
    x = _fused_view(128, 40, 128, extra=8 * 128, gen=gen).to(dtype)  # bf16 cast makes it contiguous again
    buffer = torch.zeros(128, 48 * 128, dtype=dtype, device=KERNEL_DEVICE)
    buffer[:, : 40 * 128] = x.reshape(128, -1).to(KERNEL_DEVICE)
    view = buffer[:, : 40 * 128].view(128, 40, 128)
    weight = torch.randn(40, 128, generator=gen)
    expected = rms_norm(x, weight, EPS)
    actual = rms_norm_triton(view, weight.to(KERNEL_DEVICE), EPS)
    torch.testing.assert_close(actual.to(CPU).float(), expected.float(), rtol=TOLERANCES[dtype][0], atol=1e-2)


def _assert_gated_activation_matches(num_tokens: int, inter: int, activation: str, dtype: torch.dtype) -> None:
    """gate and up as the two halves of one [T, 2I] gate_up output (strided views), as the decoder passes them."""
    gen = torch.Generator().manual_seed(num_tokens * inter)
    gate_up = (torch.randn(num_tokens, 2 * inter, generator=gen) * 3.0).to(dtype)
    expected = gated_activation(gate_up[:, :inter].float(), gate_up[:, inter:].float(), activation)  # type: ignore[arg-type]
    on_device = gate_up.to(KERNEL_DEVICE)
    actual = gated_activation_triton(on_device[:, :inter], on_device[:, inter:], activation)
    assert actual.dtype == dtype and actual.shape == (num_tokens, inter)
    # float32: the same formula up to exp/tanh rounding; bf16: one output rounding (torch's bf16 ops round twice).
    rtol, atol = (1e-5, 1e-5) if dtype == torch.float32 else (1e-2, 1e-2)
    torch.testing.assert_close(actual.to(CPU).float(), expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
@pytest.mark.parametrize(("num_tokens", "inter"), [(1, 96), (3, 1536), (2, 2000)])
def test_gated_activation(activation: str, num_tokens: int, inter: int) -> None:
    _assert_gated_activation_matches(num_tokens, inter, activation, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
@pytest.mark.parametrize(("num_tokens", "inter"), [(1, 11008), (64, 14336), (256, 2048)])
def test_gpu_gated_activation_model_shapes(dtype: torch.dtype, activation: str, num_tokens: int, inter: int) -> None:
    _assert_gated_activation_matches(num_tokens, inter, activation, dtype)


def _assert_add_rms_norm_matches(num_tokens: int, hidden: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(num_tokens + hidden)
    delta = (torch.randn(num_tokens, hidden, generator=gen) * 2.0).to(dtype)
    residual = (torch.randn(num_tokens, hidden, generator=gen) * 5.0).to(dtype)
    weight = torch.randn(hidden, generator=gen)
    expected_out, expected_sum = add_rms_norm(delta, residual, weight, EPS)  # CPU: the two torch ops
    out, total = add_rms_norm_triton(delta.to(KERNEL_DEVICE), residual.to(KERNEL_DEVICE), weight.to(KERNEL_DEVICE), EPS)
    assert out.dtype == total.dtype == dtype
    # The sum is one rounding of the same float32 sum: equal. The norm: float32 reduction order only (bf16: the
    # output rounding of values that differ in their last float32 bits).
    torch.testing.assert_close(total.to(CPU), expected_sum, rtol=0, atol=0)
    rtol, atol = (1e-5, 1e-5) if dtype == torch.float32 else (1e-2, 1e-2)
    torch.testing.assert_close(out.to(CPU).float(), expected_out.float(), rtol=rtol, atol=atol)


@pytest.mark.parametrize(("num_tokens", "hidden"), [(1, 64), (3, 576), (2, 896)])
def test_add_rms_norm(num_tokens: int, hidden: int) -> None:
    _assert_add_rms_norm_matches(num_tokens, hidden, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("num_tokens", "hidden"), [(1, 4096), (64, 896), (256, 8192)])
def test_gpu_add_rms_norm_model_shapes(dtype: torch.dtype, num_tokens: int, hidden: int) -> None:
    _assert_add_rms_norm_matches(num_tokens, hidden, dtype)
