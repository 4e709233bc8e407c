"""The Q6_K decode GEMV and the Q4_K int8 GEMV against ``x @ W.T`` with W from the GGUF torch dequantizer.

Without a GPU it runs through ``TRITON_INTERPRET=1`` at small shapes (N not a multiple of the row block, K of
one and of several super-blocks, so split-K is exercised); the ``gpu`` tests run 7B shapes. Tolerances as in
test_packed_matmul.py, relative to ``|x| @ |W|.T``: float32 x 1e-5 (summation order only), bf16 x 2**-7.
"""

from __future__ import annotations

import pytest
import torch
from gguf.constants import GGMLQuantizationType

from rocmforge.gguf.quants import dequantize
from rocmforge.kernels.triton import triton_device
from rocmforge.kernels.triton.packed_gemv import GemvConfig, packed_gemv, q4_k_int8_gemv
from rocmforge.layers.packed_weight import pack
from tests.kernels.test_packed_matmul import RTOL_FP32, RTOL_HALF, assert_within, random_raw

Q = GGMLQuantizationType
TYPES = [Q.Q6_K]


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize(("n", "k"), [(40, 256), (24, 1024), (8, 2304)])
@pytest.mark.parametrize("block_n", [8, 16])
def test_packed_gemv_matches_reference(qtype: GGMLQuantizationType, n: int, k: int, block_n: int) -> None:
    device = triton_device()
    raw = random_raw(qtype, n, k, seed=n + k)
    x = torch.randn(1, k, generator=torch.Generator().manual_seed(k))
    out = packed_gemv(x.to(device), pack(raw.to(device), qtype, (n, k)), config=GemvConfig(block_n, 8, 4))
    assert out.shape == (1, n) and out.dtype == torch.float32
    assert_within(out, x, raw, qtype, RTOL_FP32)


def test_packed_gemv_rejects_other_shapes_and_types() -> None:
    device = triton_device()
    packed = pack(random_raw(Q.Q6_K, 4, 256, seed=0).to(device), Q.Q6_K, (4, 256))
    with pytest.raises(ValueError, match="must be"):
        packed_gemv(torch.zeros(2, 256, device=device), packed)
    q4 = pack(random_raw(Q.Q4_K, 4, 256, seed=0).to(device), Q.Q4_K, (4, 256))
    with pytest.raises(ValueError, match="Q4_K is not"):
        packed_gemv(torch.zeros(1, 256, device=device), q4)
    q8 = pack(random_raw(Q.Q8_0, 4, 64, seed=0).to(device), Q.Q8_0, (4, 64))
    with pytest.raises(ValueError, match="Q8_0 is not"):
        packed_gemv(torch.zeros(1, 64, device=device), q8)


@pytest.mark.gpu
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize(("n", "k"), [(4096, 4096), (11008, 4096), (4096, 11008), (32000, 4096)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_packed_gemv_model_shapes(qtype: GGMLQuantizationType, n: int, k: int, dtype: torch.dtype) -> None:
    raw = random_raw(qtype, n, k, seed=n).cuda()
    x = torch.randn(1, k, generator=torch.Generator().manual_seed(k)).to(dtype)
    out = packed_gemv(x.cuda(), pack(raw, qtype, (n, k)))
    assert_within(out.float(), x.float(), raw, qtype, RTOL_FP32 if dtype == torch.float32 else RTOL_HALF)


def assert_int8_gemv_within(out: torch.Tensor, x: torch.Tensor, raw: torch.Tensor) -> None:
    """|out - x @ W.T| <= sum_k |W[n, k]| * amax(x's 32-value block of k) / 254 (rounding x to 8 bits per block,
    half a quant step a value) + 1e-5 |x| @ |W|.T (float32 sums)."""
    n, k = raw.shape[0], x.shape[1]
    weight = dequantize(raw.to(out.device), Q.Q4_K, (n, k)).double()
    xd = x.to(out.device).double()
    step = xd.abs().view(1, k // 32, 32).amax(dim=-1, keepdim=True).expand(1, k // 32, 32).reshape(1, k) / 254
    bound = step @ weight.abs().T + 1e-5 * (xd.abs() @ weight.abs().T) + 1e-30
    worst = ((out.double() - xd @ weight.T).abs() / bound).max().item()
    assert worst <= 1.0, f"error reaches {worst:.3g} x the bound"


@pytest.mark.parametrize(("n", "k"), [(40, 256), (24, 1024), (8, 2304)])
@pytest.mark.parametrize("block_n", [8, 16])
def test_q4_k_int8_gemv_matches_reference(n: int, k: int, block_n: int) -> None:
    device = triton_device()
    raw = random_raw(Q.Q4_K, n, k, seed=n + k)
    x = torch.randn(1, k, generator=torch.Generator().manual_seed(k))
    x[0, :32] = 0.0  # an all-zero block: its scale is 0, not a division by zero
    out = q4_k_int8_gemv(x.to(device), pack(raw.to(device), Q.Q4_K, (n, k)), config=GemvConfig(block_n, 8, 4))
    assert out.shape == (1, n) and out.dtype == torch.float32
    assert_int8_gemv_within(out, x, raw)


@pytest.mark.gpu
@pytest.mark.parametrize(("n", "k"), [(4096, 4096), (11008, 4096), (4096, 11008), (32000, 4096)])
def test_gpu_q4_k_int8_gemv_model_shapes(n: int, k: int) -> None:
    raw = random_raw(Q.Q4_K, n, k, seed=n).cuda()
    x = torch.randn(1, k, generator=torch.Generator().manual_seed(k)).to(torch.bfloat16)
    out = q4_k_int8_gemv(x.cuda(), pack(raw, Q.Q4_K, (n, k)), out_dtype=torch.float32)
    assert_int8_gemv_within(out, x.float(), raw)
