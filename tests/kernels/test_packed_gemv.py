"""The Q4_K and Q6_K decode GEMVs against ``x @ W.T`` with W from the GGUF torch dequantizer.

Without a GPU it runs through ``TRITON_INTERPRET=1`` at small shapes (N not a multiple of the row block, K of
one and of several super-blocks, so split-K is exercised); the ``gpu`` tests run 7B shapes. Tolerances as in
test_packed_matmul.py, relative to ``|x| @ |W|.T``: float32 x 1e-5 (summation order only), bf16 x 2**-7.
"""

from __future__ import annotations

import pytest
import torch
from gguf.constants import GGMLQuantizationType

from rocmforge.kernels.triton import triton_device
from rocmforge.kernels.triton.packed_gemv import GemvConfig, RmsScale, packed_gemv, packed_gemv_add_rms_norm
from rocmforge.layers.norm import rms_norm
from rocmforge.layers.packed_weight import TILE_ROWS, PackedWeight, pack
from tests.kernels.test_packed_matmul import RTOL_FP32, RTOL_HALF, assert_within, random_raw

Q = GGMLQuantizationType
TYPES = [Q.Q4_K, Q.Q6_K]


# Both types: the 64-row column tile with 1, 2 or 4 rows a thread, programs per SM and warps varied.
CONFIGS = {
    qtype: [GemvConfig(TILE_ROWS, 8, 4, 2), GemvConfig(TILE_ROWS, 16, 2, 1), GemvConfig(TILE_ROWS, 8, 4, 4)]
    for qtype in (Q.Q4_K, Q.Q6_K)
}


@pytest.mark.parametrize(
    ("qtype", "config"),
    [(qtype, config) for qtype in TYPES for config in CONFIGS[qtype]],
    ids=lambda v: v.name if isinstance(v, Q) else f"bn{v.block_n}-w{v.num_warps}-r{v.rows_per_thread}",
)
@pytest.mark.parametrize(("n", "k"), [(40, 256), (24, 1024), (8, 2304), (100, 512)])
def test_packed_gemv_matches_reference(qtype: GGMLQuantizationType, config: GemvConfig, n: int, k: int) -> None:
    device = triton_device()
    raw = random_raw(qtype, n, k, seed=n + k)
    x = torch.randn(1, k, generator=torch.Generator().manual_seed(k))
    packed = pack(raw.to(device), qtype, (n, k))
    out = packed_gemv(x.to(device), packed, config=config)
    assert out.shape == (1, n) and out.dtype == torch.float32
    assert_within(out, x, raw, qtype, RTOL_FP32)
    assert_split_finished(packed)
    assert torch.equal(packed_gemv(x.to(device), packed, config=config), out)


def assert_split_finished(packed: PackedWeight) -> None:
    """Every split-K tile's last program set its arrival counter back to zero for the next launch."""
    assert int(packed.split_counters.count_nonzero()) == 0


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_packed_gemv_reads_row_slices_of_a_fused_weight(qtype: GGMLQuantizationType) -> None:
    """A layer re-pointed at tiles of a fused weight (QuantLinear.fuse) multiplies only its own rows."""
    device = triton_device()
    k = 512
    raws = [random_raw(qtype, n, k, seed=n) for n in (TILE_ROWS, 70)]
    fused = PackedWeight.cat([pack(r.to(device), qtype, (r.shape[0], k)) for r in raws])
    x = torch.randn(1, k, generator=torch.Generator().manual_seed(3))
    out = packed_gemv(x.to(device), fused.rows(TILE_ROWS, TILE_ROWS + 70))
    assert out.shape == (1, 70)
    assert_within(out, x, raws[1], qtype, RTOL_FP32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("config", [None, GemvConfig(TILE_ROWS, 16, 2, 2)], ids=["committed", "split"])
def test_add_rms_norm_epilogue_equals_the_unfused_ops(
    qtype: GGMLQuantizationType, dtype: torch.dtype, config: GemvConfig | None
) -> None:
    """h = residual + x @ W.T, h * norm weight, and per-tile sums of h^2; N = 100 pads the last tile with
    repeated rows, which must not reach the sums."""
    device = triton_device()
    n, k = 100, 512
    raw = random_raw(qtype, n, k, seed=11)
    gen = torch.Generator().manual_seed(11)
    x, residual, norm_weight = (
        torch.randn(1, k, generator=gen),
        torch.randn(1, n, generator=gen),
        torch.rand(n, generator=gen),
    )
    packed = pack(raw.to(device), qtype, (n, k))
    scaled, h, sum_squares = packed_gemv_add_rms_norm(
        x.to(device, dtype), packed, residual.to(device, dtype), norm_weight.to(device), config
    )
    assert scaled.dtype == h.dtype == dtype and scaled.shape == h.shape == (1, n) and sum_squares.shape == (2,)
    # The product as the plain launch writes it, then the add in dtype: what an unfused add_rms_norm is given.
    delta = packed_gemv(x.to(device, dtype), packed, config=config)
    expected_h = residual.to(device, dtype) + delta
    # Compiled kernels round to bf16 to nearest even as torch does; Triton's interpreter truncates (one ulp).
    ulp = 2.0**-7 if dtype == torch.bfloat16 and device.type != "cuda" else 0.0
    torch.testing.assert_close(h, expected_h, rtol=ulp, atol=0)
    h32 = h.float()
    torch.testing.assert_close(scaled.float(), (h32 * norm_weight.to(device)).to(dtype).float(), rtol=ulp, atol=0)
    tiles = torch.stack([(h32[0, :64] ** 2).sum(), (h32[0, 64:] ** 2).sum()])
    torch.testing.assert_close(sum_squares, tiles, rtol=1e-6, atol=0)
    assert_split_finished(packed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize(("producer", "consumer"), [(Q.Q4_K, Q.Q6_K), (Q.Q6_K, Q.Q4_K)], ids=["q4k-q6k", "q6k-q4k"])
def test_rms_scaled_after_add_rms_norm_equals_the_norm_then_the_product(
    producer: GGMLQuantizationType, consumer: GGMLQuantizationType, dtype: torch.dtype
) -> None:
    """The pair replaces projection -> add_rms_norm -> projection: W2 rms_norm(residual + W1 x)."""
    device = triton_device()
    hidden, k, n = 512, 256, 72
    raw1, raw2 = random_raw(producer, hidden, k, seed=4), random_raw(consumer, n, hidden, seed=5)
    gen = torch.Generator().manual_seed(4)
    x, residual = torch.randn(1, k, generator=gen), torch.randn(1, hidden, generator=gen)
    norm_weight, eps = torch.rand(hidden, generator=gen) + 0.5, 1e-6
    w1, w2 = pack(raw1.to(device), producer, (hidden, k)), pack(raw2.to(device), consumer, (n, hidden))
    scaled, h, sum_squares = packed_gemv_add_rms_norm(
        x.to(device, dtype), w1, residual.to(device, dtype), norm_weight.to(device)
    )
    out = packed_gemv(scaled, w2, rms_scale=RmsScale(sum_squares, hidden, eps))
    assert out.dtype == dtype and out.shape == (1, n)
    normed = rms_norm(h, norm_weight.to(device), eps)  # what the unfused decoder gives the projection
    # bf16: the unfused path rounds h * rstd * w, the fused one h * w (rstd multiplies the float32 sums).
    assert_within(out.float(), normed.float(), raw2, consumer, RTOL_FP32 * 4 if dtype == torch.float32 else RTOL_HALF)


def test_packed_gemv_rejects_other_shapes_and_types() -> None:
    device = triton_device()
    packed = pack(random_raw(Q.Q6_K, 4, 256, seed=0).to(device), Q.Q6_K, (4, 256))
    with pytest.raises(ValueError, match="must be"):
        packed_gemv(torch.zeros(2, 256, device=device), packed)
    q8 = pack(random_raw(Q.Q8_0, 4, 64, seed=0).to(device), Q.Q8_0, (4, 64))
    with pytest.raises(ValueError, match="Q8_0 is not"):
        packed_gemv(torch.zeros(1, 64, device=device), q8)
    q4 = pack(random_raw(Q.Q4_K, 4, 256, seed=0).to(device), Q.Q4_K, (4, 256))
    with pytest.raises(ValueError, match="block_n 64"):
        packed_gemv(torch.zeros(1, 256, device=device), q4, config=GemvConfig(32, 8, 4))


@pytest.mark.gpu
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize(("n", "k"), [(4096, 4096), (11008, 4096), (4096, 11008), (32000, 4096)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_packed_gemv_model_shapes(qtype: GGMLQuantizationType, n: int, k: int, dtype: torch.dtype) -> None:
    raw = random_raw(qtype, n, k, seed=n).cuda()
    x = torch.randn(1, k, generator=torch.Generator().manual_seed(k)).to(dtype)
    out = packed_gemv(x.cuda(), pack(raw, qtype, (n, k)))
    assert_within(out.float(), x.float(), raw, qtype, RTOL_FP32 if dtype == torch.float32 else RTOL_HALF)


@pytest.mark.gpu
@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_gpu_split_k_finish_is_ordered(qtype: GGMLQuantizationType) -> None:
    """Split over K 16 ways, back-to-back launches all give the first one's bits: each tile's last program reads
    every other program's partials (a missed release/acquire would show as a differing or stale row)."""
    n, k = 4096, 4096
    packed = pack(random_raw(qtype, n, k, seed=2).cuda(), qtype, (n, k))
    xs = torch.randn(8, 1, k, generator=torch.Generator().manual_seed(5)).cuda()
    config = GemvConfig(TILE_ROWS, programs_per_sm=32, num_warps=2, rows_per_thread=1)
    first = [packed_gemv(x, packed, config=config) for x in xs]
    for _ in range(50):
        for x, expected in zip(xs, first, strict=True):
            assert torch.equal(packed_gemv(x, packed, config=config), expected)
    assert_within(first[0], xs[0].cpu(), random_raw(qtype, n, k, seed=2), qtype, RTOL_FP32)
    assert_split_finished(packed)
