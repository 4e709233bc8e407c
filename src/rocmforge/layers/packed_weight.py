"""GGUF weights repacked at load into planes that a Triton matmul reads as whole, aligned tiles.

GGUF interleaves each block's scales with its quants and orders the nibbles for ggml's CPU loops, so a kernel
that reads it in place gathers 2-byte-aligned fields and spends its time unpacking. Here every field of a type
becomes its own plane, and the quants are reordered for the kernels that read them:

* Q4_K and Q6_K are stored in **column tiles** of :data:`TILE_ROWS` (64) rows, the order in which the
  one-row kernels (``packed_gemv``) stream them: each tile's bytes are contiguous, a sub-block's 64 rows are one
  run, a row's part of a sub-block is one vector of 4 words, and a GPU thread holds whole sub-blocks of a few
  rows (BENCHMARKS.md, "Q4_K column tiles", "Q6_K column tiles"). Within a 32-value sub-block, element
  4e + j (e 0..7, j 0..3) sits in lane j of the sub-block's vectors, field e. N is padded to whole tiles by
  repeating its last row (no kernel stores those rows). Rows slice and concatenate at whole tiles only.
* Q4_K (148 bytes per 256 values, GGUF 144): ``qs`` int32 [T, K/32, 64, 4]: word j holds in nibble e (bits
  4e..4e+3) the quant of element 4e + j of sub-block g (element 32g + 4e + j of the row); ``sc``, ``mn`` uint8
  [T, K/32, 64] (the 6-bit scales and mins, unpacked); ``d``, ``dmin`` float16 [T, K/256, 64].
  value = (d * sc) * q - (dmin * mn).
* Q6_K (210 bytes per 256 values, as GGUF): ``ql`` int32 [T, K/32, 64, 4], the low 4 bits of each 6-bit
  quant placed as Q4_K's; ``qh`` int16 [T, K/32, 64, 4]: halfword j holds in bits 2e..2e+1 the top 2 bits of
  element 4e + j; ``sc`` int8 [T, K/32, 64, 2]: the scales of the sub-block's halves (elements 0..15, 16..31:
  e < 4 and e >= 4); ``d`` float16 [T, K/256, 64]. value = (d * sc) * (q - 32).
* Q8_0 (34 bytes per 32 values, as GGUF), row-major: ``qs`` int8 [N, K]; ``d`` float16 [N, K/32]. value = d * q.

``dequantize`` is the torch reference of the layout: bit-identical to ``rocmforge.gguf.quants.dequantize`` of
the GGUF bytes (the same float32 operations in the same order).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

__all__ = [
    "PACKED_TYPES",
    "PLANE_NAMES",
    "ROWS_PER_SPLIT_COUNTER",
    "TILE_ROWS",
    "PackedWeight",
    "new_split_counters",
    "pack",
]

_Q = GGMLQuantizationType

PACKED_TYPES: frozenset[GGMLQuantizationType] = frozenset({_Q.Q4_K, _Q.Q6_K, _Q.Q8_0})

# Plane names per type, in the order the kernels take them.
PLANE_NAMES: dict[GGMLQuantizationType, tuple[str, ...]] = {
    _Q.Q4_K: ("qs", "sc", "mn", "d", "dmin"),
    _Q.Q6_K: ("ql", "qh", "sc", "d"),
    _Q.Q8_0: ("qs", "d"),
}

# Rows (output features) per column tile of a Q4_K or Q6_K weight: the one-row kernels' tile width
# (BENCHMARKS.md).
TILE_ROWS = 64

# Rows packed at a time: bounds the uint8/int temporaries (a few bytes a value) while packing a large matrix.
_PACK_ROWS_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class PackedWeight:
    """A [N, K] weight of ``qtype`` as planes (see the module doc); rows slice like a tensor's (tiled: at tiles)."""

    qtype: GGMLQuantizationType
    shape: tuple[int, int]
    planes: tuple[torch.Tensor, ...]
    # int32 arrival counters of split-K launches over this weight, zero between launches (the kernels'
    # ``finish_split``): one per output tile that a launch splits over K. Held by the weight, not the device, so
    # that weights used on different streams (two engines in one process) never share one.
    split_counters: torch.Tensor

    @property
    def device(self) -> torch.device:
        return self.planes[0].device

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.planes)

    @property
    def row_align(self) -> int:
        """Rows per plane row: where row slices may start (1, or the column tile's height for Q4_K and Q6_K)."""
        return _tile_rows(self.qtype)

    def rows(self, start: int = 0, stop: int | None = None) -> PackedWeight:
        """Rows ``start:stop`` (views of the planes). Tiled types: start a multiple of :data:`TILE_ROWS`, stop
        too or N.

        Raises:
            ValueError: the rows cut through a column tile.
        """
        n = self.shape[0]
        stop = n if stop is None else min(stop, n)
        start = min(start, stop)
        align = self.row_align
        if start % align or (stop % align and stop != n):
            raise ValueError(f"PackedWeight rows {start}:{stop} of a {self.qtype.name} weight cut a {align}-row tile")
        planes = tuple(p[start // align : -(-stop // align)] for p in self.planes)
        # The slice shares its parent's counters: launches on one stream run one after another, and each leaves
        # every counter at zero.
        return PackedWeight(self.qtype, (stop - start, self.shape[1]), planes, self.split_counters)

    def __getitem__(self, rows: slice) -> PackedWeight:
        """Rows ``rows`` (a slice without step; views of the planes), as a tensor's rows slice."""
        if rows.step not in (None, 1):
            raise ValueError(f"PackedWeight rows take no step, got {rows}")
        return self.rows(rows.start or 0, rows.stop)

    def index_select(self, ids: torch.Tensor) -> PackedWeight:
        """Rows ``ids`` (a 1-D long tensor on the planes' device), copied (only those rows are read)."""
        if self.row_align == 1:
            planes = tuple(p.index_select(0, ids) for p in self.planes)
        else:
            tile, col = ids // self.row_align, ids % self.row_align
            # [T, G, 64, ...][tile, :, col] -> [R, G, ...]: the advanced indices gather whole rows of every plane.
            planes = tuple(_to_tiles(p[tile, :, col], self.row_align) for p in self.planes)
        # Shares the parent's counters, as a row slice does: gathered rows are read by the dequantize kernel, and
        # a new tensor here would be a host-to-device copy, which a CUDA-graph capture (embedding lookups) forbids.
        return PackedWeight(self.qtype, (int(ids.numel()), self.shape[1]), planes, self.split_counters)

    @staticmethod
    def cat(weights: Sequence[PackedWeight]) -> PackedWeight:
        """The weights' rows stacked in order (all of one qtype and K), in one new allocation.

        Raises:
            ValueError: a tiled weight other than the last does not end at a whole tile.
        """
        first = weights[0]
        align = first.row_align
        if any(w.shape[0] % align for w in weights[:-1]):
            raise ValueError(f"PackedWeight.cat: {first.qtype.name} parts must be whole {align}-row tiles")
        n = sum(w.shape[0] for w in weights)
        planes = _empty_planes(first.qtype, n, first.shape[1], first.device)
        for i, plane in enumerate(planes):
            torch.cat([w.planes[i] for w in weights], out=plane)
        return PackedWeight(first.qtype, (n, first.shape[1]), planes, new_split_counters(n, first.device))

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The [N, K] weight in ``dtype`` by torch ops (the float32 values equal GGUF's dequantization exactly)."""
        n, k = self.shape
        if self.qtype == _Q.Q8_0:
            qs, d = self.planes
            out = torch.mul(qs.view(n, k // 32, 32).to(torch.float32), d.to(torch.float32).unsqueeze(-1))
        elif self.qtype == _Q.Q4_K:
            qs, sc, mn, d, dmin = (_from_tiles(p, n) for p in self.planes)  # [n, K/32, 4], [n, K/32], [n, K/256]
            shifts = 4 * torch.arange(8, device=qs.device, dtype=torch.int32)
            q = ((qs.unsqueeze(-2) >> shifts.view(8, 1)) & 0xF).to(torch.float32)  # [n, K/32, 8 (e), 4 (j)]
            q = q.view(n, k // 256, 8, 32)  # [n, super-block, sub-block, element 4e + j]
            d32 = d.to(torch.float32).view(n, -1, 1)
            dl = (d32 * sc.view(n, -1, 8).to(torch.float32)).unsqueeze(-1)
            ml = (dmin.to(torch.float32).view(n, -1, 1) * mn.view(n, -1, 8).to(torch.float32)).unsqueeze(-1)
            out = torch.sub(q.mul_(dl), ml)
        else:
            ql, qh, sc, d = (_from_tiles(p, n) for p in self.planes)  # [n, K/32, 4 | 4 | 2], [n, K/256]
            e = torch.arange(8, device=ql.device, dtype=torch.int32).view(8, 1)
            low = (ql.unsqueeze(-2) >> (4 * e)) & 0xF  # [n, K/32, 8 (e), 4 (j)]: element 4e + j
            top = (qh.to(torch.int32).unsqueeze(-2) >> (2 * e)) & 3
            q = ((low | (top << 4)) - 32).to(torch.float32).reshape(n, k // 16, 16)
            dl = (d.to(torch.float32).view(n, -1, 1) * sc.view(n, -1, 16).to(torch.float32)).view(n, k // 16, 1)
            out = torch.mul(dl, q)
        return out.reshape(n, k).to(dtype)


# Rows of a weight per split-K arrival counter: the smallest output tile a split launch uses is 16 rows by 16
# rows of x, and split-K serves M <= 64 (four such x tiles), so one counter per 4 rows covers every tile.
ROWS_PER_SPLIT_COUNTER = 4


def new_split_counters(n: int, device: torch.device) -> torch.Tensor:
    """Zeroed split-K arrival counters for an [n, K] weight on ``device``.

    Zeros made on the host and copied: a device fill would load torch's fill kernels (~8 MiB of host memory)."""
    return torch.zeros(max(1, -(-n // ROWS_PER_SPLIT_COUNTER)), dtype=torch.int32).to(device)


def _tile_rows(qtype: GGMLQuantizationType) -> int:
    return TILE_ROWS if qtype in (_Q.Q4_K, _Q.Q6_K) else 1


def _pad_rows(rows: torch.Tensor, tile: int) -> torch.Tensor:
    """``rows`` [R, ...] grown to whole tiles by repeating its last row.

    Pad rows only need finite values (every kernel masks them out of its output); repeating a row takes the copy
    kernels that packing runs anyway, where zeros would load torch's fill kernels (~8 MiB of host memory)."""
    pad = -rows.shape[0] % tile
    return torch.cat([rows, rows[-1:].expand(pad, *rows.shape[1:]).contiguous()]) if pad else rows


def _to_tiles(rows: torch.Tensor, tile: int) -> torch.Tensor:
    """Per-row values [R, G, *inner] -> column tiles [ceil(R / tile), G, tile, *inner] (the last one padded)."""
    rows = _pad_rows(rows, tile)
    return rows.view(-1, tile, *rows.shape[1:]).transpose(1, 2).contiguous()


def _store_tiles(plane: torch.Tensor, start: int, rows: torch.Tensor) -> None:
    """Write per-row values [R, G, *inner] (R whole tiles) into column tiles [T, G, tile, *inner] from row
    ``start``: one strided copy into the plane, no temporary tiles."""
    tile = plane.shape[2]
    first, full = start // tile, rows.shape[0] // tile
    plane[first : first + full].transpose(1, 2).copy_(rows.view(full, tile, *rows.shape[1:]))


def _from_tiles(plane: torch.Tensor, n: int) -> torch.Tensor:
    """Column tiles [T, G, tile, *inner] -> the first ``n`` rows [n, G, *inner]."""
    t, g, tile = plane.shape[:3]
    return plane.transpose(1, 2).reshape(t * tile, g, *plane.shape[3:])[:n].contiguous()


def _sub_block_words(q: torch.Tensor) -> torch.Tensor:
    """4-bit values uint8 [B, 8 (sub-block), 8 (e), 4 (j)] -> int32 [B, 8, 4]: word j holds value (e, j) in nibble e."""
    pairs = q[:, :, 0::2] | (q[:, :, 1::2] << 4)  # [B, 8, byte b (nibbles 2b, 2b + 1), j]
    return pairs.transpose(2, 3).contiguous().view(torch.int32).view(q.shape[0], 8, 4)


def _sub_block_halfwords(q: torch.Tensor) -> torch.Tensor:
    """2-bit values uint8 [B, 8 (sub-block), 8 (e), 4 (j)] -> int16 [B, 8, 4]: halfword j holds value (e, j) in
    bits 2e..2e+1."""
    quads = q[:, :, 0::4] | (q[:, :, 1::4] << 2) | (q[:, :, 2::4] << 4) | (q[:, :, 3::4] << 6)  # [B, 8, 2, j]
    return quads.transpose(2, 3).contiguous().view(torch.int16).view(q.shape[0], 8, 4)


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
    # high nibbles = sub-block 2r + 1 (rocmforge.gguf.quants._q4_k). Per block: words [8 (sub-block), 4 (j)].
    from rocmforge.gguf.quants import _k_scale_min

    sc, mn = _k_scale_min(blocks[:, 4:16])
    q = _split_nibbles(blocks[:, 16:144], 32).view(-1, 8, 8, 4)  # [block, sub-block, e, j]: element 4e + j
    return _sub_block_words(q), sc, mn, _f16_field(blocks, 0), _f16_field(blocks, 2)


def _pack_q6_k(blocks: torch.Tensor) -> tuple[torch.Tensor, ...]:
    # GGUF block: ql[128] (2 runs of 64: low nibbles then high) | qh[64] (2 runs of 32, four 2-bit fields a byte)
    # | scales int8[16] (one per 16 values: sub-block g's halves are 2g, 2g + 1) | d f16
    # (rocmforge.gguf.quants._q6_k).
    r = blocks.shape[0]
    low = _split_nibbles(blocks[:, 0:128], 64).view(r, 8, 8, 4)  # [block, sub-block, e, j]: element 4e + j
    qh = blocks[:, 128:192].contiguous().view(r, 2, 1, 32)
    top = torch.cat([(qh >> s) & 3 for s in (0, 2, 4, 6)], dim=2).view(r, 8, 8, 4)
    sc = blocks[:, 192:208].contiguous().view(torch.int8).view(r, 8, 2)
    return _sub_block_words(low), _sub_block_halfwords(top), sc, _f16_field(blocks, 208)


def _pack_q8_0(blocks: torch.Tensor) -> tuple[torch.Tensor, ...]:
    # GGUF block: d f16 | qs int8[32].
    return blocks[:, 2:34].contiguous().view(torch.int8), _f16_field(blocks, 0)


def _empty_planes(qtype: GGMLQuantizationType, n: int, k: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Uninitialized planes of an [n, k] weight, as views of one allocation.

    One block per weight, not one per plane: the caching allocator would otherwise hand the planes the freed
    blocks of earlier GGUF tensors, a little larger than each plane and not split (it keeps remainders under
    1 MiB attached), and those unused ends would count as allocated memory.
    """
    tile = _tile_rows(qtype)
    shapes = [_plane_shape(n, k, div, tile) for _, div in _PLANE_SPECS[qtype]]
    sizes = [math.prod(shape) * dtype.itemsize for (dtype, _), shape in zip(_PLANE_SPECS[qtype], shapes, strict=True)]
    offsets = [0]
    for size in sizes:
        offsets.append(offsets[-1] + -(-size // _PLANE_ALIGN) * _PLANE_ALIGN)
    buffer = torch.empty(offsets[-1], dtype=torch.uint8, device=device)
    return tuple(
        buffer[offset : offset + size].view(dtype).view(shape)
        for (dtype, _), shape, offset, size in zip(_PLANE_SPECS[qtype], shapes, offsets[:-1], sizes, strict=True)
    )


def _plane_shape(n: int, k: int, div: int, tile: int) -> tuple[int, ...]:
    """Row-major [n, k / div]; tiled [ceil(n / tile), groups, tile, values per group] (see the module doc)."""
    if tile == 1:
        return (n, k // div)
    # Plane values per 32-value sub-block: 4 quant words or halfwords, Q6_K's 2 half scales; else one per group.
    per_group = 32 // div if div < 32 else 1
    groups = k // (div * per_group)
    return (-(-n // tile), groups, tile, per_group) if per_group > 1 else (-(-n // tile), groups, tile)


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
    tile = _tile_rows(qtype)
    step = max(1, _PACK_ROWS_ELEMENTS // k // tile) * tile
    for start in range(0, n, step):
        part = rows[start : start + step]
        if tile > 1:
            part = _pad_rows(part, tile)  # the last tile of the weight
        r = part.shape[0]
        for plane, value in zip(planes, _PACKERS[qtype](part.reshape(r * per_row, type_size)), strict=True):
            if tile == 1:
                plane[start : start + r] = value.reshape(r, -1)
            else:
                _store_tiles(plane, start, value.reshape(r, plane.shape[1], *plane.shape[3:]))
    return PackedWeight(qtype, (n, k), planes, new_split_counters(n, raw.device))
