"""The packed-weight matmul and dequantization kernels, and QuantLinear on packed weights.

Without a GPU these run on the CPU through ``TRITON_INTERPRET=1`` (see conftest.py) at small shapes; tests marked
``gpu`` run 7B shapes on a CUDA/ROCm device. Reference: ``x @ W.T`` in float64 with W from the torch dequantizer
``rocmforge.gguf.quants.dequantize`` of the GGUF bytes.

Tolerances, relative to each output's absolute sum ``|x| @ |W|.T`` (so they do not depend on cancellation):
float32 activations 1e-5 (the interpreter multiplies in float32, only the summation order differs; the GPU's
tf32x3 products err by ~2**-21 each); bf16/fp16 activations 2**-7 (the weight tile is rounded to x's dtype, the
interpreter even truncates bf16).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from rocmforge.gguf.quants import dequantize
from rocmforge.kernels.triton import triton_device
from rocmforge.kernels.triton.packed_matmul import KernelConfig, dequantize_packed, kernel_config, packed_matmul
from rocmforge.layers.packed_weight import PACKED_TYPES, pack
from rocmforge.layers.quant_linear import QuantEmbedding, QuantLinear
from tests.quant_blocks import random_blocks, uniform_f16_bits

Q = GGMLQuantizationType
TYPES = sorted(PACKED_TYPES, key=lambda t: t.value)
RTOL_FP32 = 1e-5
RTOL_HALF = 2.0**-7


def random_raw(qtype: GGMLQuantizationType, n: int, k: int, seed: int) -> torch.Tensor:
    """GGUF bytes (n, row bytes) of random blocks with f16 scales in +-0.05 (realistic weight magnitudes)."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(random_blocks(rng, qtype, n, k // GGML_QUANT_SIZES[qtype][0], uniform_f16_bits(0.05)))


def k_for(qtype: GGMLQuantizationType) -> int:
    # Q8_0: 10 blocks, not a multiple of its K step of 8 blocks, so the K edge is masked.
    return 320 if qtype == Q.Q8_0 else 512


def assert_within(
    out: torch.Tensor, x: torch.Tensor, raw: torch.Tensor, qtype: GGMLQuantizationType, rtol: float
) -> None:
    """|out - x @ W.T| <= rtol * (|x| @ |W|.T) elementwise, in float64 on out's device."""
    weight = dequantize(raw.to(out.device), qtype, (raw.shape[0], x.shape[1])).double()
    xd = x.to(out.device).double()
    bound = rtol * (xd.abs() @ weight.abs().T) + 1e-30
    worst = ((out.double() - xd @ weight.T).abs() / bound).max().item()
    assert worst <= 1.0, f"{qtype.name}: error reaches {worst:.3g} x the bound (rtol {rtol})"


@pytest.fixture
def device() -> torch.device:
    return triton_device()


# N = 40 is not a multiple of any BLOCK_N, so the masked edge tile is always exercised; M = 130 takes the
# large-M tiles (two row blocks of 128).
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("m", [1, 3, 16, 40, 130])
def test_matches_reference(qtype: GGMLQuantizationType, m: int, device: torch.device) -> None:
    n, k = 40, k_for(qtype)
    raw = random_raw(qtype, n, k, seed=m)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
    out = packed_matmul(x.to(device), pack(raw.to(device), qtype, (n, k)))
    assert out.shape == (m, n) and out.dtype == torch.float32
    assert_within(out, x, raw, qtype, RTOL_FP32)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize(
    ("block_m", "kb", "split_k", "reduce"),
    [
        (1, 2, 1, False),
        (1, 4, 3, True),
        (1, 8, 2, True),
        (4, 4, 2, True),
        (2, 8, 1, True),
        (16, 2, 2, False),
        (16, 4, 3, False),
        (16, 8, 1, False),
    ],
)
def test_tiles_and_split_k(
    qtype: GGMLQuantizationType, block_m: int, kb: int, split_k: int, reduce: bool, device: torch.device
) -> None:
    # K = 768: 3 super-blocks; split 3 of few steps leaves some program one step or none (it writes zeros).
    # M = 3: one row block of 4 (or 16) with a masked row, or two of 2.
    n, k = 24, 768
    raw = random_raw(qtype, n, k, seed=split_k)
    x = torch.randn(3, k, generator=torch.Generator().manual_seed(split_k))
    config = KernelConfig(16, block_m, 4, 2, split_k=split_k, kb=kb, reduce_each_step=reduce)
    packed = pack(raw.to(device), qtype, (n, k))
    out = packed_matmul(x.to(device), packed, config=config)
    assert_within(out, x, raw, qtype, RTOL_FP32)
    # Each tile's last program summed the partials and reset its counter: a second launch gives the same bits.
    assert int(packed.split_counters.count_nonzero()) == 0
    assert torch.equal(packed_matmul(x.to(device), packed, config=config), out)


def test_configs_shrink_to_fit_shared_memory() -> None:
    from rocmforge.kernels.triton.packed_matmul import _fitted

    big = KernelConfig(block_n=128, block_m=128, num_warps=8, num_stages=4, kb=8)
    assert _fitted(Q.Q4_K, big, 2, 1 << 30) == big
    fitted = _fitted(Q.Q4_K, big, 2, 160 * 1024)
    assert fitted.num_stages == 2 and fitted.kb == 4
    assert _fitted(Q.Q4_K, big, 2, 1).kb == 2  # never below one 64-value step
    with pytest.raises(ValueError, match="sub-blocks"):
        packed_matmul(
            torch.zeros(1, 256),
            pack(random_raw(Q.Q4_K, 4, 256, 0), Q.Q4_K, (4, 256)),
            config=KernelConfig(16, 16, 4, 2, kb=16),
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_half_precision_activations(qtype: GGMLQuantizationType, dtype: torch.dtype, device: torch.device) -> None:
    n, k = 32, k_for(qtype)
    raw = random_raw(qtype, n, k, seed=5)
    x = torch.randn(3, k, generator=torch.Generator().manual_seed(5)).to(dtype)
    packed = pack(raw.to(device), qtype, (n, k))
    out = packed_matmul(x.to(device), packed)
    assert out.dtype == dtype
    assert_within(out.float(), x.float(), raw, qtype, RTOL_HALF)
    assert_within(packed_matmul(x.to(device), packed, out_dtype=torch.float32), x.float(), raw, qtype, RTOL_HALF)


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_dequantize_kernel(qtype: GGMLQuantizationType, device: torch.device) -> None:
    n, k = 19, k_for(qtype)
    raw = random_raw(qtype, n, k, seed=6)
    expected = dequantize(raw, qtype, (n, k))
    packed = pack(raw.to(device), qtype, (n, k))
    out = dequantize_packed(packed).cpu()
    # Exact but for a fused multiply-add the compiler may make of Q4_K's d * sc * q - dmin * m (one rounding).
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6 * expected.abs().max().item())
    half = dequantize_packed(packed, torch.bfloat16).cpu()
    torch.testing.assert_close(half.float(), expected, rtol=2.0**-7, atol=0)


def test_rejects_bad_arguments(device: torch.device) -> None:
    packed = pack(random_raw(Q.Q8_0, 4, 64, seed=0).to(device), Q.Q8_0, (4, 64))
    with pytest.raises(ValueError, match="does not match"):
        packed_matmul(torch.zeros(1, 32, device=device), packed)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        packed_matmul(torch.zeros(1, 64, dtype=torch.float64, device=device), packed)
    assert packed_matmul(torch.zeros(0, 64, device=device), packed).shape == (0, 4)
    # A split launch needs a counter per output tile: more tiles than the weight holds is refused, not raced.
    few = dataclasses.replace(packed, split_counters=packed.split_counters[:1])
    split = KernelConfig(16, 16, 4, 2, split_k=2, kb=2)
    with pytest.raises(ValueError, match="exceed the weight's 1 counters"):
        packed_matmul(torch.zeros(17, 64, device=device), few, config=split)


def test_config_table_covers_every_m() -> None:
    for qtype in TYPES:
        for m in (1, 16, 17, 64, 65, 512, 100_000):
            config = kernel_config(qtype, m)
            assert config.block_n >= 16 and (config.block_m >= 16 or m <= config.block_m <= 8)  # tl.dot: 16


# -- QuantLinear on packed weights ---------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_quant_linear_packs_and_drops_the_gguf_bytes(qtype: GGMLQuantizationType, device: torch.device) -> None:
    n, k = 64, k_for(qtype)  # one whole Q4_K column tile
    raw = random_raw(qtype, n, k, seed=7)
    bias = torch.randn(n)
    layer = QuantLinear(raw.to(device), qtype, (n, k), bias.to(device))
    assert layer.raw is None and layer.packed is not None and layer.device.type == device.type
    assert raw.numel() <= layer.nbytes <= 1.03 * raw.numel()
    torch.testing.assert_close(layer.dequantize_weight(3, 9, torch.float32).cpu(), dequantize(raw, qtype, (n, k))[3:9])
    tail = layer.dequantize_weight(60, None, torch.float32).cpu()
    torch.testing.assert_close(tail, dequantize(raw, qtype, (n, k))[60:])
    for m in (1, 17):  # the fused path in x's dtype, then the large-M path in bf16
        x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
        out = layer(x.to(device))
        assert out.shape == (m, n) and out.dtype == torch.float32
        assert_within(out - bias.to(device), x, raw, qtype, RTOL_FP32 if m == 1 else 1.6e-2)
    exact = QuantLinear(raw.to(device), qtype, (n, k), dtype=torch.float32)
    x = torch.randn(20, k, generator=torch.Generator().manual_seed(20))
    assert_within(exact(x.to(device)), x, raw, qtype, RTOL_FP32)


def test_quant_linear_fuse_packed(device: torch.device) -> None:
    k = 256
    layers = [
        QuantLinear(
            random_raw(Q.Q4_K, n, k, seed=n).to(device), Q.Q4_K, (n, k), torch.randn(n).to(device) if b else None
        )
        for n, b in ((64, True), (128, False), (48, True))  # Q4_K stacks after whole 64-row column tiles
    ]
    x = torch.randn(3, k, device=device)
    separate = torch.cat([layer(x) for layer in layers], dim=-1)
    fused = QuantLinear.fuse(layers)
    assert fused.shape == (240, k) and fused.packed is not None and fused.bias is not None
    torch.testing.assert_close(fused(x), separate, rtol=1e-5, atol=1e-5)
    # The originals now view the fused planes and still compute the same.
    base = fused.packed.planes[0].data_ptr()
    tile = fused.packed.planes[0][0].numel() * 4
    assert [layer.packed.planes[0].data_ptr() - base for layer in layers] == [0, tile, 3 * tile]
    torch.testing.assert_close(torch.cat([layer(x) for layer in layers], dim=-1), separate, rtol=1e-6, atol=1e-6)
    assert torch.equal(fused.bias[64:192].cpu(), torch.zeros(128))
    raw_q6 = random_raw(Q.Q6_K, 16, k, seed=1).to(device)
    with pytest.raises(ValueError, match="does not fit"):
        QuantLinear.fuse([layers[0], QuantLinear(raw_q6, Q.Q6_K, (16, k))])
    with pytest.raises(ValueError, match="does not fit after"):  # 48 rows end inside a tile
        QuantLinear.fuse([layers[2], layers[0]])


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_embedding_rows_from_packed(qtype: GGMLQuantizationType, device: torch.device) -> None:
    vocab, k = 50, k_for(qtype)
    raw = random_raw(qtype, vocab, k, seed=8)
    embedding = QuantEmbedding(QuantLinear(raw.to(device), qtype, (vocab, k)))
    ids = torch.tensor([[3, 0, 49], [7, 7, 12]])
    rows = embedding[ids.to(device)]
    assert rows.shape == (2, 3, k) and rows.dtype == torch.float32
    full = dequantize(raw, qtype, (vocab, k))
    torch.testing.assert_close(rows.cpu(), full[ids], rtol=1e-6, atol=1e-6 * full.abs().max().item())


# ---- 7B shapes on a real GPU --------------------------------------------------------------------------------

SHAPES_7B = [(4096, 4096), (11008, 4096), (4096, 11008)]


@pytest.mark.gpu
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize(("n", "k"), SHAPES_7B)
def test_gpu_model_shapes(qtype: GGMLQuantizationType, n: int, k: int) -> None:
    raw = random_raw(qtype, n, k, seed=n + k).cuda()
    packed = pack(raw, qtype, (n, k))
    for m in (1, 5, 16, 40, 64, 130, 512):
        x = torch.randn(m, k, device="cuda", generator=torch.Generator("cuda").manual_seed(m))
        assert_within(packed_matmul(x, packed), x, raw, qtype, RTOL_FP32)
        xb = x.to(torch.bfloat16)
        assert_within(packed_matmul(xb, packed, out_dtype=torch.float32), xb.float(), raw, qtype, 2.0**-8)
    expected = dequantize(raw, qtype, (n, k))
    torch.testing.assert_close(dequantize_packed(packed), expected, rtol=1e-6, atol=1e-6 * expected.abs().max().item())
    torch.testing.assert_close(dequantize_packed(packed, torch.bfloat16), expected.to(torch.bfloat16), rtol=0, atol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_gpu_cuda_graph_capture(qtype: GGMLQuantizationType) -> None:
    n, k = 4096, 4096
    layer = QuantLinear(random_raw(qtype, n, k, seed=1).cuda(), qtype, (n, k))
    assert layer.packed is not None
    x = torch.randn(1, k, device="cuda")
    x16 = torch.randn(16, k, device="cuda", dtype=torch.bfloat16)
    ids = torch.tensor([5, 4095, 0], device="cuda")
    split = dataclasses.replace(kernel_config(qtype, 1), split_k=4)
    eager = (layer(x), layer(x16), packed_matmul(x, layer.packed, config=split), layer.lookup_rows(ids))
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = (layer(x), layer(x16), packed_matmul(x, layer.packed, config=split), layer.lookup_rows(ids))
    graph.replay()
    torch.cuda.synchronize()
    for a, b in zip(eager, captured, strict=True):
        assert torch.equal(a, b)  # deterministic: split-K sums its partials in a fixed order


@pytest.mark.gpu
def test_gpu_packing_frees_the_gguf_bytes() -> None:
    n, k = 11008, 4096
    raw = random_raw(Q.Q4_K, n, k, seed=2).cuda()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated() - raw.numel()
    layer = QuantLinear(raw, Q.Q4_K, (n, k))
    del raw
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated() - before
    assert layer.nbytes <= held <= 1.03 * n * k // 256 * 144 + (2 << 20)
