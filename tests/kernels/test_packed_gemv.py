"""The Q4_K decode GEMV (scales per sub-block) against ``x @ W.T`` with W from the GGUF torch dequantizer.

Without a GPU it runs through ``TRITON_INTERPRET=1`` at small shapes (N not a multiple of the row block, K of
one and of several super-blocks, so split-K is exercised); the ``gpu`` tests run 7B shapes. Tolerances as in
test_packed_matmul.py, relative to ``|x| @ |W|.T``: float32 x 1e-5 (summation order only), bf16 x 2**-7.
"""

from __future__ import annotations

import pytest
import torch
from gguf.constants import GGMLQuantizationType

from rocmforge.kernels.triton import triton_device
from rocmforge.kernels.triton.packed_gemv import q4_k_gemv
from rocmforge.layers.packed_weight import pack
from tests.kernels.test_packed_matmul import RTOL_FP32, RTOL_HALF, assert_within, random_raw

Q4_K = GGMLQuantizationType.Q4_K


@pytest.mark.parametrize(("n", "k"), [(40, 256), (24, 1024), (8, 2304)])
@pytest.mark.parametrize("block_n", [8, 16])
def test_q4_k_gemv_matches_reference(n: int, k: int, block_n: int) -> None:
    device = triton_device()
    raw = random_raw(Q4_K, n, k, seed=n + k)
    x = torch.randn(1, k, generator=torch.Generator().manual_seed(k))
    out = q4_k_gemv(x.to(device), pack(raw.to(device), Q4_K, (n, k)), block_n=block_n, programs_per_sm=8)
    assert out.shape == (1, n) and out.dtype == torch.float32
    assert_within(out, x, raw, Q4_K, RTOL_FP32)


def test_q4_k_gemv_rejects_other_shapes_and_types() -> None:
    device = triton_device()
    packed = pack(random_raw(Q4_K, 4, 256, seed=0).to(device), Q4_K, (4, 256))
    with pytest.raises(ValueError, match="must be"):
        q4_k_gemv(torch.zeros(2, 256, device=device), packed)
    q8 = pack(random_raw(GGMLQuantizationType.Q8_0, 4, 64, seed=0).to(device), GGMLQuantizationType.Q8_0, (4, 64))
    with pytest.raises(ValueError, match="not Q4_K"):
        q4_k_gemv(torch.zeros(1, 64, device=device), q8)


@pytest.mark.gpu
@pytest.mark.parametrize(("n", "k"), [(4096, 4096), (11008, 4096), (4096, 11008), (32000, 4096)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_q4_k_gemv_model_shapes(n: int, k: int, dtype: torch.dtype) -> None:
    raw = random_raw(Q4_K, n, k, seed=n).cuda()
    x = torch.randn(1, k, generator=torch.Generator().manual_seed(k)).to(dtype)
    out = q4_k_gemv(x.cuda(), pack(raw, Q4_K, (n, k)))
    assert_within(out.float(), x.float(), raw, Q4_K, RTOL_FP32 if dtype == torch.float32 else RTOL_HALF)
