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
from rocmforge.layers.packed_weight import PACKED_TYPES, PLANE_NAMES, PackedWeight, pack
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
    assert all(p.shape[0] == n and p.is_contiguous() for p in packed.planes)
    assert same_bits(packed.dequantize(), dequantize(raw, qtype, (n, k)))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_packed_bytes_stay_near_the_file(qtype: GGMLQuantizationType) -> None:
    n, k = 8, 4096
    raw = raw_weight(qtype, n, k, seed=2)
    ratio = pack(raw, qtype, (n, k)).nbytes / raw.numel()
    assert ratio <= 1.03  # Q4_K: 148 / 144; Q6_K and Q8_0: exactly the GGUF bytes
    assert ratio == (148 / 144 if qtype == Q.Q4_K else 1.0)


def test_chunked_packing_matches_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    import rocmforge.layers.packed_weight as pw

    n, k = 21, 512
    raw = raw_weight(Q.Q6_K, n, k, seed=3)
    whole = pack(raw.reshape(-1), Q.Q6_K, (n, k))  # flat bytes are accepted too
    monkeypatch.setattr(pw, "_PACK_ROWS_ELEMENTS", 4 * k)  # 4 rows a chunk: six chunks, the last one short
    chunked = pack(raw, Q.Q6_K, (n, k))
    assert all(torch.equal(a, b) for a, b in zip(whole.planes, chunked.planes, strict=True))


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_rows_cat_and_index_select(qtype: GGMLQuantizationType) -> None:
    k = 512
    raws = [raw_weight(qtype, n, k, seed=n) for n in (5, 11)]
    parts = [pack(r, qtype, (r.shape[0], k)) for r in raws]
    stacked = PackedWeight.cat(parts)
    assert stacked.shape == (16, k) and stacked.nbytes == sum(p.nbytes for p in parts)
    full = dequantize(torch.cat(raws), qtype, (16, k))
    assert same_bits(stacked.dequantize(), full)
    assert same_bits(stacked.rows(5, 16).dequantize(), full[5:])
    ids = torch.tensor([15, 0, 7, 7])
    assert same_bits(stacked.index_select(ids).dequantize(), full[ids])
    assert stacked.dequantize(torch.bfloat16).dtype == torch.bfloat16


def test_rejects_what_it_cannot_pack() -> None:
    raw = raw_weight(Q.Q8_0, 4, 64, seed=0)
    with pytest.raises(ValueError, match="no packed layout"):
        pack(raw, Q.Q4_0, (4, 64))
    with pytest.raises(ValueError, match="does not fit"):
        pack(raw[:, :-2], Q.Q8_0, (4, 64))
    with pytest.raises(ValueError, match="does not fit"):
        pack(raw, Q.Q8_0, (4, 48))
