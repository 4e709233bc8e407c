"""GGUF weights repacked at load into planes that a Triton matmul reads as whole, aligned tiles.

GGUF interleaves each block's scales with its quants and orders the nibbles for ggml's CPU loops, so a kernel
that reads it in place gathers 2-byte-aligned fields and spends its time unpacking. Here every field of a type
becomes its own row-major plane, one row per output feature (so rows slice and concatenate like the GGUF rows),
and the quants are reordered so that one 32-bit word per column holds the same column of every sub-block:

* Q4_K (148 bytes per 256 values, GGUF 144): ``qs`` int32 [N, K/8]: in each 256-value super-block, word w
  (0..31) holds in nibble s (0..7, bits 4s..4s+3) the quant of element 32s + w, so sub-block s is
  ``(words >> 4s) & 0xF`` of 32 consecutive words; ``sc``, ``mn`` uint8 [N, K/32] (the 6-bit scales and mins,
  unpacked); ``d``, ``dmin`` float16 [N, K/256]. value = (d * sc) * q - (dmin * mn).
* Q6_K (210 bytes per 256 values, as GGUF): ``ql`` int32 [N, K/8], the low 4 bits of each 6-bit quant placed
  as Q4_K's; ``qh`` int16 [N, K/8]: halfword w (0..31) of a super-block holds in bits 2s..2s+1 the top 2
  bits of element 32s + w; ``sc`` int8 [N, K/16] (one scale per 16 values, GGUF order); ``d`` float16
  [N, K/256]. value = (d * sc) * (q - 32).
* Q8_0 (34 bytes per 32 values, as GGUF): ``qs`` int8 [N, K]; ``d`` float16 [N, K/32]. value = d * q.

``dequantize`` is the torch reference of the layout: bit-identical to ``rocmforge.gguf.quants.dequantize`` of
the GGUF bytes (the same float32 operations in the same order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

__all__ = ["PACKED_TYPES", "PLANE_NAMES", "PackedWeight", "pack"]

_Q = GGMLQuantizationType

PACKED_TYPES: frozenset[GGMLQuantizationType] = frozenset({_Q.Q4_K, _Q.Q6_K, _Q.Q8_0})

# Plane names per type, in the order the kernels take them.
PLANE_NAMES: dict[GGMLQuantizationType, tuple[str, ...]] = {
    _Q.Q4_K: ("qs", "sc", "mn", "d", "dmin"),
    _Q.Q6_K: ("ql", "qh", "sc", "d"),
    _Q.Q8_0: ("qs", "d"),
}

# Rows packed at a time: bounds the uint8/int temporaries (a few bytes a value) while packing a large matrix.
_PACK_ROWS_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class PackedWeight:
    """A [N, K] weight of ``qtype`` as row-major planes (see the module doc); rows slice like a tensor's."""

    qtype: GGMLQuantizationType
    shape: tuple[int, int]
    planes: tuple[torch.Tensor, ...]

    @property
    def device(self) -> torch.device:
        return self.planes[0].device

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.planes)

    def rows(self, start: int = 0, stop: int | None = None) -> PackedWeight:
        """Rows ``start:stop`` (views of the planes)."""
        planes = tuple(p[start:stop] for p in self.planes)
        return PackedWeight(self.qtype, (int(planes[0].shape[0]), self.shape[1]), planes)

    def __getitem__(self, rows: slice) -> PackedWeight:
        """Rows ``rows`` (a slice without step; views of the planes), as a tensor's rows slice."""
        if rows.step not in (None, 1):
            raise ValueError(f"PackedWeight rows take no step, got {rows}")
        return self.rows(rows.start or 0, rows.stop)

    def index_select(self, ids: torch.Tensor) -> PackedWeight:
        """Rows ``ids`` (a 1-D long tensor on the planes' device), copied."""
        planes = tuple(p.index_select(0, ids) for p in self.planes)
        return PackedWeight(self.qtype, (int(ids.numel()), self.shape[1]), planes)

    @staticmethod
    def cat(weights: Sequence[PackedWeight]) -> PackedWeight:
        """The weights' rows stacked in order (all of one qtype and K), in one new allocation."""
        first = weights[0]
        n = sum(w.shape[0] for w in weights)
        planes = _empty_planes(first.qtype, n, first.shape[1], first.device)
        for i, plane in enumerate(planes):
            torch.cat([w.planes[i] for w in weights], out=plane)
        return PackedWeight(first.qtype, (n, first.shape[1]), planes)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The [N, K] weight in ``dtype`` by torch ops (the float32 values equal GGUF's dequantization exactly)."""
        n, k = self.shape
        if self.qtype == _Q.Q8_0:
            qs, d = self.planes
            out = torch.mul(qs.view(n, k // 32, 32).to(torch.float32), d.to(torch.float32).unsqueeze(-1))
        elif self.qtype == _Q.Q4_K:
            qs, sc, mn, d, dmin = self.planes
            q = _nibbles(qs, n, k).to(torch.float32)  # [n, k/256, 8, 32]
            d32 = d.to(torch.float32).view(n, -1, 1)
            dl = (d32 * sc.view(n, -1, 8).to(torch.float32)).unsqueeze(-1)
            ml = (dmin.to(torch.float32).view(n, -1, 1) * mn.view(n, -1, 8).to(torch.float32)).unsqueeze(-1)
            out = torch.sub(q.mul_(dl), ml)
        else:
            ql, qh, sc, d = self.planes
            low = _nibbles(ql, n, k)
            shifts = 2 * torch.arange(8, device=qh.device, dtype=torch.int32)
            top = qh.view(n, k // 256, 32, 1).to(torch.int32) >> shifts  # [n, sb, w, s]
            q6 = low | ((top & 3).transpose(-1, -2) << 4)  # [n, k/256, 8 (s), 32 (w)]
            q = (q6 - 32).to(torch.float32).reshape(n, k // 16, 16)
            dl = (d.to(torch.float32).view(n, -1, 1) * sc.view(n, -1, 16).to(torch.float32)).view(n, k // 16, 1)
            out = torch.mul(dl, q)
        return out.reshape(n, k).to(dtype)


def _nibbles(words: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Nibble planes int32 [n, k/8] -> int32 [n, k/256, 8 (s), 32 (w)]: element 32s + w of each super-block."""
    shifts = 4 * torch.arange(8, device=words.device, dtype=torch.int32)
    q = (words.view(n, k // 256, 32, 1) >> shifts) & 0xF  # [n, sb, w, s]
    return q.transpose(-1, -2)


def _pack_nibble_words(q: torch.Tensor) -> torch.Tensor:
    """4-bit values uint8 [R, 8 (s), 32 (w)] -> int32 [R, 32]: word w holds value (s, w) in bits 4s..4s+3."""
    # Byte b of a little-endian word is bits 8b..8b+7: nibble 2b low, nibble 2b + 1 high.
    pairs = q[:, 0::2] | (q[:, 1::2] << 4)  # [R, 4 (byte), 32]
    return pairs.transpose(1, 2).contiguous().view(torch.int32).view(q.shape[0], 32)


def _pack_2bit_halfwords(q: torch.Tensor) -> torch.Tensor:
    """2-bit values uint8 [R, 8 (s), 32 (w)] -> int16 [R, 32]: halfword w holds value (s, w) in bits 2s..2s+1."""
    quads = q[:, 0::4] | (q[:, 1::4] << 2) | (q[:, 2::4] << 4) | (q[:, 3::4] << 6)  # [R, 2 (byte), 32]
    return quads.transpose(1, 2).contiguous().view(torch.int16).view(q.shape[0], 32)


def _split_nibbles(packed: torch.Tensor, group: int) -> torch.Tensor:
    """GGUF's runs of ``group`` bytes (low nibbles, then high nibbles) -> uint8 [R, values] in element order."""
    r = packed.shape[0]
    x = packed.contiguous().view(r, -1, 1, group)
    return torch.cat((x & 0xF, x >> 4), dim=2).view(r, -1)


def _f16_field(blocks: torch.Tensor, offset: int) -> torch.Tensor:
    """The float16 field at byte ``offset`` of every block: [R, 1]."""
    return blocks[:, offset : offset + 2].contiguous().view(torch.float16)


def _pack_q4_k(blocks: torch.Tensor) -> tuple[torch.Tensor, ...]:
    # GGUF block: d f16 | dmin f16 | scales[12] | qs[128]: 4 runs of 32 bytes, low nibbles = sub-block 2r,
    # high nibbles = sub-block 2r + 1 (rocmforge.gguf.quants._q4_k).
    from rocmforge.gguf.quants import _k_scale_min

    sc, mn = _k_scale_min(blocks[:, 4:16])
    q = _split_nibbles(blocks[:, 16:144], 32).view(-1, 8, 32)
    return _pack_nibble_words(q), sc, mn, _f16_field(blocks, 0), _f16_field(blocks, 2)


def _pack_q6_k(blocks: torch.Tensor) -> tuple[torch.Tensor, ...]:
    # GGUF block: ql[128] (2 runs of 64: low nibbles then high) | qh[64] (2 runs of 32, four 2-bit fields a byte)
    # | scales int8[16] | d f16 (rocmforge.gguf.quants._q6_k).
    r = blocks.shape[0]
    low = _split_nibbles(blocks[:, 0:128], 64)
    qh = blocks[:, 128:192].contiguous().view(r, 2, 1, 32)
    top = torch.cat([(qh >> s) & 3 for s in (0, 2, 4, 6)], dim=2).view(r, 8, 32)
    words = _pack_nibble_words(low.view(r, 8, 32))
    return words, _pack_2bit_halfwords(top), blocks[:, 192:208].contiguous().view(torch.int8), _f16_field(blocks, 208)


def _pack_q8_0(blocks: torch.Tensor) -> tuple[torch.Tensor, ...]:
    # GGUF block: d f16 | qs int8[32].
    return blocks[:, 2:34].contiguous().view(torch.int8), _f16_field(blocks, 0)


def _empty_planes(qtype: GGMLQuantizationType, n: int, k: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Uninitialized planes of an [n, k] weight, as views of one allocation.

    One block per weight, not one per plane: the caching allocator would otherwise hand the planes the freed
    blocks of earlier GGUF tensors, a little larger than each plane and not split (it keeps remainders under
    1 MiB attached), and those unused ends would count as allocated memory.
    """
    sizes = [n * (k // div) * dtype.itemsize for dtype, div in _PLANE_SPECS[qtype]]
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + -(-size // _PLANE_ALIGN) * _PLANE_ALIGN)
    buffer = torch.empty(offsets[-1], dtype=torch.uint8, device=device)
    return tuple(
        buffer[offset : offset + size].view(dtype).view(n, k // div)
        for (dtype, div), offset, size in zip(_PLANE_SPECS[qtype], offsets[:-1], sizes, strict=True)
    )


# Plane start alignment inside the shared allocation (the kernels read 16-byte vectors).
_PLANE_ALIGN = 256

_PACKERS = {_Q.Q4_K: _pack_q4_k, _Q.Q6_K: _pack_q6_k, _Q.Q8_0: _pack_q8_0}

# (dtype, K / columns) of each plane, in PLANE_NAMES order.
_PLANE_SPECS: dict[GGMLQuantizationType, tuple[tuple[torch.dtype, int], ...]] = {
    _Q.Q4_K: ((torch.int32, 8), (torch.uint8, 32), (torch.uint8, 32), (torch.float16, 256), (torch.float16, 256)),
    _Q.Q6_K: ((torch.int32, 8), (torch.int16, 8), (torch.int8, 16), (torch.float16, 256)),
    _Q.Q8_0: ((torch.int8, 1), (torch.float16, 32)),
}


def pack(raw: torch.Tensor, qtype: GGMLQuantizationType, shape: tuple[int, int]) -> PackedWeight:
    """GGUF bytes ``raw`` (uint8, (N, row bytes) or flat) of an [N, K] weight -> its planes, on raw's device.

    Raises:
        ValueError: ``qtype`` is not packable, or the byte count or K does not fit it.
    """
    qtype = GGMLQuantizationType(qtype)
    if qtype not in PACKED_TYPES:
        raise ValueError(f"pack: no packed layout for {qtype.name}")
    n, k = (int(s) for s in shape)
    block, type_size = GGML_QUANT_SIZES[qtype]
    if k % block or raw.dtype != torch.uint8 or raw.numel() != n * (k // block) * type_size:
        raise ValueError(f"pack: {qtype.name} weight {(n, k)} does not fit {raw.numel()} bytes of {raw.dtype}")
    rows = raw.reshape(n, -1)
    per_row = k // block
    # Filled chunk by chunk: the peak is the raw bytes, the planes and one chunk's temporaries.
    planes = _empty_planes(qtype, n, k, raw.device)
    step = max(1, _PACK_ROWS_ELEMENTS // k)
    for start in range(0, n, step):
        part = rows[start : start + step]
        r = part.shape[0]
        for plane, value in zip(planes, _PACKERS[qtype](part.reshape(r * per_row, type_size)), strict=True):
            plane[start : start + r] = value.reshape(r, -1)
    return PackedWeight(qtype, (n, k), planes)
