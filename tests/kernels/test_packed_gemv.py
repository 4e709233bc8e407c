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
from rocmforge.kernels.triton.packed_gemv import GemvConfig, packed_gemv
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
