"""Parity of the fused dequantize + matmul Triton kernel with the torch reference.

Without a GPU these run on the CPU through ``TRITON_INTERPRET=1`` (see conftest.py) at small but
realistic shapes; tests marked ``gpu`` run model-sized shapes on a CUDA/ROCm device.

Weights are random GGUF blocks: random bytes everywhere except the f16 scale fields, which hold
finite values (moderate ones by default, the full f16 range incl. subnormals in one test), plus
properly quantized data from ``gguf.quants.quantize`` for the legacy types.

Tolerance: both sides accumulate in float32 but in different orders, so each output element may
differ by a few ulps of its *absolute* sum ``sum_k |x_k| |w_k|``; the bound is
``RTOL * (|x| @ |W|.T)`` elementwise (for fp32 and K <= 4096 the worst case is ~K * 2**-24 and the
typical error far smaller).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import quantize as gguf_quantize

from rocmforge.errors import UnsupportedModelError
from rocmforge.gguf.quants import dequantize
from rocmforge.kernels.reference import quant_matmul_reference
from rocmforge.kernels.triton import triton_available, triton_device
from rocmforge.kernels.triton.quant_matmul import MAX_M, TRITON_QUANT_TYPES, quant_matmul
from tests.quant_blocks import BLOCK_TYPES, finite_f16_bits, random_blocks, uniform_f16_bits

Q = GGMLQuantizationType

FLOAT_DTYPES: dict[GGMLQuantizationType, torch.dtype] = {
    Q.F32: torch.float32,
    Q.F16: torch.float16,
    Q.BF16: torch.bfloat16,
}
ALL_TYPES = sorted(TRITON_QUANT_TYPES, key=lambda t: t.value)
LEGACY_TYPES = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0]

RTOL = 1e-4


def random_weight(qtype: GGMLQuantizationType, n: int, k: int, seed: int, full_range: bool = False) -> torch.Tensor:
    """Raw bytes (n, row_bytes) uint8 of a random (n, k) weight of ``qtype``.

    Block types: random bytes with f16 scales uniform in +-0.05 (or, with ``full_range``, any finite
    f16 bit pattern: zeros, subnormals, up to 65504). Float types: normal values in that dtype.
    """
    rng = np.random.default_rng(seed)
    if qtype in FLOAT_DTYPES:
        values = torch.from_numpy(rng.standard_normal((n, k), dtype=np.float32))
        return values.to(FLOAT_DTYPES[qtype]).view(torch.uint8)
    block_size, _ = GGML_QUANT_SIZES[qtype]
    scale_bits = finite_f16_bits if full_range else uniform_f16_bits(0.05)
    return torch.from_numpy(random_blocks(rng, qtype, n, k // block_size, scale_bits))


def assert_close(
    actual: torch.Tensor, x: torch.Tensor, raw: torch.Tensor, qtype: GGMLQuantizationType, rtol: float = RTOL
) -> None:
    """``actual`` matches the reference within ``rtol`` of each element's absolute sum (see module doc)."""
    shape = (raw.shape[0], x.shape[1])
    expected = quant_matmul_reference(x.cpu(), raw.cpu(), qtype, shape)
    weight = dequantize(raw.cpu(), qtype, shape)
    bound = rtol * (x.cpu().double().abs() @ weight.double().abs().T) + 1e-30
    error = (actual.cpu().double() - expected.double()).abs()
    worst = (error / bound).max().item()
    assert worst <= 1.0, f"{qtype.name}: error reaches {worst:.3g} x the bound (rtol {rtol})"


@pytest.fixture
def device() -> torch.device:
    return triton_device()


def test_triton_available() -> None:
    assert triton_available()


def test_reference_is_x_times_dequantized_weight_transposed() -> None:
    raw = random_weight(Q.Q4_K, 8, 256, seed=1)
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(0))
    expected = x.double() @ dequantize(raw, Q.Q4_K, (8, 256)).double().T
    actual = quant_matmul_reference(x, raw, Q.Q4_K, (8, 256))
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual.double(), expected, rtol=1e-5, atol=0.0)


# N = 40 is not a multiple of any BLOCK_N, so the masked edge tile is always exercised.
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize(("m", "n", "k"), [(1, 40, 512), (3, 64, 256), (8, 40, 256)])
def test_matches_reference(qtype: GGMLQuantizationType, m: int, n: int, k: int, device: torch.device) -> None:
    raw = random_weight(qtype, n, k, seed=m * 1000 + n + k)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
    out = quant_matmul(x.to(device), raw.to(device), qtype, (n, k))
    assert out.shape == (m, n) and out.dtype == torch.float32
    assert_close(out, x, raw, qtype)


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda t: t.name)
def test_full_range_f16_scales(qtype: GGMLQuantizationType, device: torch.device) -> None:
    n, k = 32, 256
    raw = random_weight(qtype, n, k, seed=7, full_range=True)
    x = torch.randn(2, k, generator=torch.Generator().manual_seed(7))
    assert_close(quant_matmul(x.to(device), raw.to(device), qtype, (n, k)), x, raw, qtype)


@pytest.mark.parametrize("qtype", LEGACY_TYPES, ids=lambda t: t.name)
def test_gguf_quantized_weights(qtype: GGMLQuantizationType, device: torch.device) -> None:
    n, k = 48, 256
    values = np.random.default_rng(3).standard_normal((n, k), dtype=np.float32)
    raw = torch.from_numpy(np.ascontiguousarray(gguf_quantize(values, qtype)))
    x = torch.randn(4, k, generator=torch.Generator().manual_seed(3))
    assert_close(quant_matmul(x.to(device), raw.to(device), qtype, (n, k)), x, raw, qtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_activations(dtype: torch.dtype, device: torch.device) -> None:
    n, k = 32, 256
    raw = random_weight(Q.Q6_K, n, k, seed=5)
    x = torch.randn(2, k, generator=torch.Generator().manual_seed(5)).to(dtype)
    out = quant_matmul(x.to(device), raw.to(device), Q.Q6_K, (n, k))
    assert out.dtype == dtype
    # The output is rounded to x's dtype: its own precision (2**-8 for bf16) dominates the error.
    assert_close(out.float(), x.float(), raw, Q.Q6_K, rtol=2**-7)
    out32 = quant_matmul(x.to(device), raw.to(device), Q.Q6_K, (n, k), out_dtype=torch.float32)
    assert_close(out32, x.float(), raw, Q.Q6_K)


def test_strided_x_and_flat_raw(device: torch.device) -> None:
    n, k = 32, 256
    raw = random_weight(Q.Q8_0, n, k, seed=9)
    x = torch.randn(k, 4, generator=torch.Generator().manual_seed(9)).T  # non-contiguous (4, k)
    out = quant_matmul(x.to(device), raw.reshape(-1).to(device), Q.Q8_0, (n, k))
    assert_close(out, x, raw, Q.Q8_0)


@pytest.mark.parametrize(
    ("m", "k", "qtype", "n_bytes", "error"),
    [
        (1, 256, Q.Q8_1, None, UnsupportedModelError),  # no kernel for this type
        (MAX_M + 1, 256, Q.Q8_0, None, ValueError),  # M too large for the small-M kernel
        (1, 128, Q.Q4_K, None, ValueError),  # K not a whole number of blocks
        (1, 256, Q.Q8_0, 100, ValueError),  # wrong byte count
    ],
)
def test_rejects_bad_arguments(
    m: int, k: int, qtype: GGMLQuantizationType, n_bytes: int | None, error: type[Exception], device: torch.device
) -> None:
    n = 4
    raw = torch.zeros(n_bytes if n_bytes is not None else n * 2 * 34, dtype=torch.uint8, device=device)
    with pytest.raises(error):
        quant_matmul(torch.zeros(m, k, device=device), raw, qtype, (n, k))


def test_rejects_mismatched_x(device: torch.device) -> None:
    raw = random_weight(Q.Q8_0, 4, 256, seed=0).to(device)
    with pytest.raises(ValueError, match="does not match"):
        quant_matmul(torch.zeros(1, 512, device=device), raw, Q.Q8_0, (4, 256))
    with pytest.raises(ValueError, match="does not match"):
        quant_matmul_reference(torch.zeros(1, 512), raw.cpu(), Q.Q8_0, (4, 256))


def test_interpreter_in_subprocess() -> None:
    """Runs this directory's CPU tests in a fresh process (only when this one cannot, see conftest.py)."""
    here = Path(__file__).resolve().parent
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not gpu", str(here)]
    result = subprocess.run(command, cwd=here.parents[1], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


# ---- model-sized shapes on a real GPU -------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("qtype", ALL_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize(("m", "n", "k"), [(1, 4096, 4096), (5, 11008, 4096), (16, 4096, 11008 // 256 * 256)])
def test_gpu_model_shapes(qtype: GGMLQuantizationType, m: int, n: int, k: int) -> None:
    raw = random_weight(qtype, n, k, seed=m + n + k)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
    out = quant_matmul(x.cuda(), raw.cuda(), qtype, (n, k))
    torch.cuda.synchronize()
    assert out.shape == (m, n) and out.is_cuda
    assert_close(out, x, raw, qtype)


@pytest.mark.gpu
@pytest.mark.parametrize("m", range(1, MAX_M + 1))
def test_gpu_every_m(m: int) -> None:
    n, k = 1024, 4096
    raw = random_weight(Q.Q4_K, n, k, seed=m)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
    assert_close(quant_matmul(x.cuda(), raw.cuda(), Q.Q4_K, (n, k)), x, raw, Q.Q4_K)
