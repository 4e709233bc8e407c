"""The packed weight layout: packing GGUF bytes and the torch dequantization of the planes (CPU, no Triton).

The planes must hold exactly GGUF's values: ``PackedWeight.dequantize`` is compared bit for bit with
``rocmforge.gguf.quants.dequantize`` (itself bit-exact against gguf-py), over random blocks whose f16 scale fields
cover the whole finite range (zeros, subnormals, up to 65504).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from rocmforge.gguf.quants import dequantize
from rocmforge.layers.packed_weight import PACKED_TYPES, PLANE_NAMES, TILE_ROWS, PackedWeight, pack
from tests.quant_blocks import finite_f16_bits, random_blocks

Q = GGMLQuantizationType
TYPES = sorted(PACKED_TYPES, key=lambda t: t.value)


def raw_weight(qtype: GGMLQuantizationType, n: int, k: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(random_blocks(rng, qtype, n, k // GGML_QUANT_SIZES[qtype][0], finite_f16_bits))


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_pack_then_dequantize_is_bit_exact(qtype: GGMLQuantizationType) -> None:
    n, k = 37, 768
    raw = raw_weight(qtype, n, k, seed=1)
    packed = pack(raw, qtype, (n, k))
    assert packed.shape == (n, k) and len(packed.planes) == len(PLANE_NAMES[qtype])
    plane_rows = n if qtype == Q.Q8_0 else -(-n // TILE_ROWS)  # Q4_K, Q6_K: column tiles, the last one padded
    assert all(p.shape[0] == plane_rows and p.is_contiguous() for p in packed.planes)
    assert same_bits(packed.dequantize(), dequantize(raw, qtype, (n, k)))


def test_q4_k_tile_layout() -> None:
    """Word j of sub-block g of tile row c holds element 32g + 4e + j in nibble e; pad rows repeat the last."""
    n, k = 70, 512
    raw = raw_weight(Q.Q4_K, n, k, seed=4)
    qs, sc, mn, d, dmin = pack(raw, Q.Q4_K, (n, k)).planes
    assert qs.shape == (2, k // 32, TILE_ROWS, 4) and sc.shape == mn.shape == (2, k // 32, TILE_ROWS)
    assert d.shape == dmin.shape == (2, k // 256, TILE_ROWS)
    # Row 65 = tile 1, column 1; its quants from GGUF: value = d * sc * q - dmin * mn, so q = (value + m) / (d sc).
    row, g, j, e = 65, 13, 2, 5
    quant = (qs[1, g, 1, j] >> (4 * e)) & 0xF
    values = dequantize(raw, Q.Q4_K, (n, k))[row]
    dsc = d[1, g // 8, 1].float() * sc[1, g, 1].float()
    m = dmin[1, g // 8, 1].float() * mn[1, g, 1].float()
    assert values[32 * g + 4 * e + j] == dsc * quant.float() - m
    assert all(torch.equal(p[1, :, 6:], p[1, :, 5:6].expand_as(p[1, :, 6:])) for p in (qs, sc, mn, d, dmin))


def test_q6_k_tile_layout() -> None:
    """ql word j nibble e and qh halfword j bits 2e..2e+1 hold element 32g + 4e + j; sc holds the halves."""
    n, k = 70, 512
    raw = raw_weight(Q.Q6_K, n, k, seed=6)
    ql, qh, sc, d = pack(raw, Q.Q6_K, (n, k)).planes
    assert ql.shape == qh.shape == (2, k // 32, TILE_ROWS, 4) and qh.dtype == torch.int16
    assert sc.shape == (2, k // 32, TILE_ROWS, 2) and d.shape == (2, k // 256, TILE_ROWS)
    row, g, j, e = 66, 9, 3, 6  # tile 1, column 2; element 4e + j = 27 of sub-block 9: half 1
    quant = ((ql[1, g, 2, j] >> (4 * e)) & 0xF) | (((qh[1, g, 2, j].int() >> (2 * e)) & 3) << 4)
    value = dequantize(raw, Q.Q6_K, (n, k))[row, 32 * g + 4 * e + j]
    assert value == d[1, g // 8, 2].float() * sc[1, g, 2, 1].float() * (quant - 32).float()


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_packed_bytes_stay_near_the_file(qtype: GGMLQuantizationType) -> None:
    n, k = TILE_ROWS, 4096  # whole column tiles (a model's row counts are multiples of 64)
    raw = raw_weight(qtype, n, k, seed=2)
    ratio = pack(raw, qtype, (n, k)).nbytes / raw.numel()
    assert ratio <= 1.03  # Q4_K: 148 / 144; Q6_K and Q8_0: exactly the GGUF bytes
    assert ratio == (148 / 144 if qtype == Q.Q4_K else 1.0)


@pytest.mark.parametrize(("qtype", "n"), [(Q.Q8_0, 21), (Q.Q6_K, 150), (Q.Q4_K, 150)], ids=["Q8_0", "Q6_K", "Q4_K"])
def test_chunked_packing_matches_whole(qtype: GGMLQuantizationType, n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    import rocmforge.layers.packed_weight as pw

    k = 512
    raw = raw_weight(qtype, n, k, seed=3)
    whole = pack(raw.reshape(-1), qtype, (n, k))  # flat bytes are accepted too
    # 4 rows a chunk: Q8_0 six chunks, the last one short; Q4_K, Q6_K round up to whole tiles, the last partial.
    monkeypatch.setattr(pw, "_PACK_ROWS_ELEMENTS", 4 * k)
    chunked = pack(raw, qtype, (n, k))
    assert all(torch.equal(a, b) for a, b in zip(whole.planes, chunked.planes, strict=True))
    assert same_bits(chunked.dequantize(), dequantize(raw, qtype, (n, k)))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_rows_cat_and_index_select(qtype: GGMLQuantizationType) -> None:
    k = 512
    align = 5 if qtype == Q.Q8_0 else TILE_ROWS  # row counts: tiled parts end at whole tiles but the last
    sizes = (align, 11)
    raws = [raw_weight(qtype, n, k, seed=n) for n in sizes]
    parts = [pack(r, qtype, (r.shape[0], k)) for r in raws]
    stacked = PackedWeight.cat(parts)
    total = sum(sizes)
    assert stacked.shape == (total, k) and stacked.nbytes == sum(p.nbytes for p in parts)
    full = dequantize(torch.cat(raws), qtype, (total, k))
    assert same_bits(stacked.dequantize(), full)
    assert same_bits(stacked.rows(align, total).dequantize(), full[align:])
    assert same_bits(stacked[:align].dequantize(), full[:align])
    ids = torch.tensor([total - 1, 0, 7, 7, align])
    assert same_bits(stacked.index_select(ids).dequantize(), full[ids])
    assert stacked.dequantize(torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q6_K], ids=lambda t: t.name)
def test_tiled_rows_and_cat_keep_whole_tiles(qtype: GGMLQuantizationType) -> None:
    k = 256
    parts = [pack(raw_weight(qtype, n, k, seed=n), qtype, (n, k)) for n in (70, 64)]
    with pytest.raises(ValueError, match="whole 64-row tiles"):
        PackedWeight.cat(parts)
    with pytest.raises(ValueError, match="cut a 64-row tile"):
        parts[0].rows(5, 70)
    with pytest.raises(ValueError, match="cut a 64-row tile"):
        parts[1].rows(0, 32)
    assert parts[0].rows(64, 70).shape == (6, k)


def test_rejects_what_it_cannot_pack() -> None:
    raw = raw_weight(Q.Q8_0, 4, 64, seed=0)
    with pytest.raises(ValueError, match="no packed layout"):
        pack(raw, Q.Q4_0, (4, 64))
    with pytest.raises(ValueError, match="does not fit"):
        pack(raw[:, :-2], Q.Q8_0, (4, 64))
    with pytest.raises(ValueError, match="does not fit"):
        pack(raw, Q.Q8_0, (4, 48))
