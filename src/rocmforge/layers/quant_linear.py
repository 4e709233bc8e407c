"""A linear layer whose weight stays quantized on the device, and the quantized token embedding.

A Q4_K_M model then takes about its file size in GPU memory instead of its bf16 size. Where Triton runs, Q4_K,
Q6_K and Q8_0 weights are repacked at construction into planes (``rocmforge.layers.packed_weight``, at most
1.03x the GGUF bytes, Q4_K/Q6_K row counts rounded up to 64-row column tiles; the GGUF bytes are dropped) that
``packed_matmul`` reads as aligned tiles (at M = 1 on an H100: 31% / 35% / 60% of copy bandwidth for Q4_K / Q6_K /
Q8_0, 1.3-1.6x the GGUF-block kernel, BENCHMARKS.md; the one-row kernels of ``packed_gemv`` raise Q4_K / Q6_K to
40% / 41%, and their column tiles another 1.16x / 1.28x on an H200), and ``QuantLinear(x)`` picks its path by the number
of rows M of x:

* packed types, M <= :data:`FUSED_MAX_M` (1): ``packed_gemv`` (Q4_K, Q6_K) or ``packed_matmul``'s GEMV (Q8_0),
  in x's dtype (float32 stays float32) or the ``out_dtype`` asked for (float32 logits from bf16 activations);
* packed types, larger M: x is cast to the matmul dtype (bf16 by default) and multiplied by ``packed_matmul``,
  or, above :data:`PACKED_GEMM_MAX_M` (measured per type), by torch on the weight dequantized in chunks;
* packed types with a float32 matmul dtype (the reference mode, as ``Linear`` on the weight dequantized at
  load, bit for bit): the weight dequantized exactly in chunks and torch at every M (slow on purpose);
* F16 / BF16 weights: above M = 1, ``torch.nn.functional.linear`` (cuBLAS) on the bytes viewed as the weight, x
  cast to it; at M = 1 the float decode kernel of ``quant_matmul`` (measured faster there);
* the other block types (not packed) keep the GGUF bytes: M <= :data:`FUSED_MAX_M` (Q4_0: 2) ``quant_matmul``,
  the Triton kernel that dequantizes GGUF blocks inside the matmul; larger M: the weight is dequantized to the
  matmul dtype by the Triton row kernel in chunks of at most :data:`DEQUANT_CHUNK_BYTES`, and each chunk goes
  to ``torch.matmul`` (cuBLAS / hipBLAS).

Where does which run: on a CUDA/ROCm device both paths use Triton; on the CPU under ``TRITON_INTERPRET=1`` too
(so that the tests can check them without a GPU); otherwise (the CPU, or a GPU without Triton) the weight is
dequantized chunk by chunk with the torch dequantizer of ``rocmforge.gguf.quants`` and multiplied in the
matmul dtype, which is also what ``Linear`` computes on a weight dequantized at load.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from gguf.constants import GGMLQuantizationType

from rocmforge.errors import UnsupportedModelError
from rocmforge.gguf.quants import SUPPORTED_QUANT_TYPES, dequantize, quant_block_info
from rocmforge.kernels.triton.availability import interpreter_enabled, triton_available
from rocmforge.layers.linear import matmul_rows, stack_rows
from rocmforge.layers.norm import DeferredRMSNorm
from rocmforge.layers.packed_weight import PACKED_TYPES, PackedWeight, pack

__all__ = [
    "DEQUANT_CHUNK_BYTES",
    "FUSED_MAX_M",
    "PACKED_GEMM_MAX_M",
    "QuantEmbedding",
    "QuantLinear",
    "embedding_rows",
    "fused_max_m",
]

_Q = GGMLQuantizationType

# Largest M that runs the kernel in x's own dtype, per type.
# Packed types (Q4_K, Q6_K, Q8_0): 1, the one-row kernels (packed_matmul's GEMV was as fast on float32 x as on bf16,
# measured on an H100, BENCHMARKS.md "GPU quantized linear", packed subsection; packed_gemv, which now takes Q4_K and
# Q6_K, was timed on bf16 x only); above it x is cast to the matmul dtype, because the
# dot kernel on float32 x (tf32x3, to stay exact) is 4-60x slower than on bf16.
# Q4_0 keeps the GGUF-block decode kernel of quant_matmul, which multiplies on CUDA cores in fp32 and loses to
# dequantize + cuBLAS from M = 2-3 (its value is Q8_0's old crossing, not measured for Q4_0). F16/BF16: the
# float decode kernel at M = 1 (1.07-1.4x faster than casting x and calling cuBLAS, whose two casts are extra
# launches), cuBLAS on the weight's own bytes from M = 2 (1.5-2.1x faster than the kernel at M = 4; M = 2-3 not
# measured); BF16 takes F16's values. F32 keeps the float decode kernel up to 14 (measured for F16 on an H200).
# The other block types only have the per-element kernel, 10-80x slower at M = 1 than the whole-block ones
# (BENCHMARKS.md, "before" column), so they never use it.
FUSED_MAX_M: dict[GGMLQuantizationType, int] = {
    _Q.Q4_K: 1,
    _Q.Q6_K: 1,
    _Q.Q8_0: 1,
    _Q.Q4_0: 2,
    _Q.F16: 1,
    _Q.BF16: 1,
    _Q.F32: 14,
}
# Types not in the table: the per-element kernel (Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q5_K).
_DEFAULT_FUSED_MAX_M = 0

# Packed types: above this M the large-M path dequantizes the weight to bf16 (Triton, 64 MiB chunks) and calls
# cuBLAS instead of running packed_matmul. Measured on an H100 at 7B shapes (BENCHMARKS.md "GPU quantized linear",
# packed subsection): packed_matmul wins at M = 16 and 64 (Q4_K about ties at 64), and loses 2-3x at M = 512,
# where its tile dequantization costs more than cuBLAS's tensor-core GEMM on a bf16 copy.
PACKED_GEMM_MAX_M: dict[GGMLQuantizationType, int] = {
    _Q.Q4_K: 64,
    _Q.Q6_K: 64,
    _Q.Q8_0: 64,
}

# Float weight types whose bytes cuBLAS multiplies as they are.
_VIEW_DTYPES: dict[GGMLQuantizationType, torch.dtype] = {_Q.F16: torch.float16, _Q.BF16: torch.bfloat16}

# Bound on the dequantized temporary of the large-M path: a 32000 x 4096 vocabulary projection would be 250 MiB
# of bf16 in one piece.
DEQUANT_CHUNK_BYTES = 64 << 20

# Activation dtypes the fused kernel takes; others go through the dequantize + torch path.
_KERNEL_X_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def fused_max_m(qtype: GGMLQuantizationType) -> int:
    """Largest M for which :class:`QuantLinear` uses the fused decode kernel for ``qtype``."""
    return FUSED_MAX_M.get(GGMLQuantizationType(qtype), _DEFAULT_FUSED_MAX_M)


def _triton_on(device: torch.device) -> bool:
    """Whether the Triton kernels serve tensors on ``device``: a GPU, or the CPU under the interpreter."""
    if device.type == "cuda":
        return triton_available()
    return device.type == "cpu" and interpreter_enabled() and triton_available()


def _dequantize_rows(raw: torch.Tensor, qtype: GGMLQuantizationType, k: int, dtype: torch.dtype) -> torch.Tensor:
    """Rows of blocks ``raw`` (R, row_bytes) -> (R, k) in ``dtype``, by Triton where it runs, else by torch."""
    if _triton_on(raw.device):
        # Imported on use: importing Triton defines its kernels, which must follow TRITON_INTERPRET (see conftest).
        from rocmforge.kernels.triton.dequant_rows import dequantize_rows

        return dequantize_rows(raw, qtype, k, dtype)
    return dequantize(raw, qtype, (raw.shape[0], k)).to(dtype)


class QuantLinear:
    """``y = x @ W.T (+ bias)`` with ``W`` [out, in] kept quantized: packed planes, or the raw GGUF blocks.

    Args:
        raw: the weight's bytes, uint8, (out_features, bytes per row) or flat, on the device that computes.
            Packed types on a Triton device are repacked here and ``raw`` is not kept (``self.raw`` is None,
            ``self.packed`` holds the planes); otherwise ``self.raw`` is a (rows, row bytes) view of it.
        qtype: its ggml type (any type ``rocmforge.gguf.quants`` dequantizes).
        shape: ``(out_features, in_features)``.
        bias: optional (out_features,) tensor, float32 in the models.
        dtype: the matmul dtype of the large-M path (bf16 by default; float32 keeps it exact).
    """

    def __init__(
        self,
        raw: torch.Tensor,
        qtype: GGMLQuantizationType,
        shape: tuple[int, int],
        bias: torch.Tensor | None = None,
        dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        qtype = GGMLQuantizationType(qtype)
        if qtype not in SUPPORTED_QUANT_TYPES:
            raise UnsupportedModelError(f"QuantLinear: unsupported tensor type {qtype.name}")
        n, k = (int(s) for s in shape)
        block, type_size = quant_block_info(qtype)
        if k % block:
            raise ValueError(f"QuantLinear: in_features {k} is not a multiple of {qtype.name}'s block of {block}")
        row_bytes = k // block * type_size
        if raw.dtype != torch.uint8 or raw.numel() != n * row_bytes:
            raise ValueError(
                f"QuantLinear: a {qtype.name} weight of shape {(n, k)} needs {n * row_bytes} uint8 bytes, "
                f"got {raw.numel()} of {raw.dtype}"
            )
        if bias is not None and tuple(bias.shape) != (n,):
            raise ValueError(f"QuantLinear: bias of shape {tuple(bias.shape)} for {n} output features")
        self.raw: torch.Tensor | None = raw.reshape(n, row_bytes)
        self.packed: PackedWeight | None = None
        if qtype in PACKED_TYPES and _triton_on(raw.device):
            # The caller's reference to raw is its last one (the loader's): dropping ours frees the GGUF bytes.
            self.packed = pack(self.raw, qtype, (n, k))
            self.raw = None
        self.qtype = qtype
        self.shape = (n, k)
        self.bias = bias
        self.dtype = dtype

    @classmethod
    def from_packed(cls, packed: PackedWeight, bias: torch.Tensor | None, dtype: torch.dtype) -> QuantLinear:
        """A layer over already packed planes (no copy)."""
        layer = cls.__new__(cls)
        layer.raw, layer.packed = None, packed
        layer.qtype, layer.shape, layer.bias, layer.dtype = packed.qtype, packed.shape, bias, dtype
        return layer

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def device(self) -> torch.device:
        return self.packed.device if self.packed is not None else self._raw().device

    @property
    def nbytes(self) -> int:
        """Bytes of the quantized weight on its device, packed or raw (the bias not included)."""
        return self.packed.nbytes if self.packed is not None else self._raw().numel()

    def _raw(self) -> torch.Tensor:
        assert self.raw is not None  # exactly one of raw and packed is set
        return self.raw

    def __repr__(self) -> str:
        bias = ", bias" if self.bias is not None else ""
        packed = ", packed" if self.packed is not None else ""
        return f"QuantLinear({self.qtype.name}, {self.shape}{bias}{packed}, {self.dtype}, {self.device})"

    def dequantize_weight(
        self, start: int = 0, stop: int | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """Rows ``start:stop`` of the weight as a float tensor of ``dtype`` (the matmul dtype by default)."""
        dtype = dtype or self.dtype
        if self.packed is not None:
            # Packed Q4_K/Q6_K slice at whole column tiles: dequantize the tiles around the rows, then cut.
            stop = self.out_features if stop is None else stop
            align = self.packed.row_align
            lo, hi = start // align * align, min(self.out_features, -(-stop // align) * align)
            return _dequantize_packed(self.packed.rows(lo, hi), dtype)[start - lo : stop - lo]
        return _dequantize_rows(self._raw()[start:stop], self.qtype, self.in_features, dtype)

    def lookup_rows(self, token_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rows ``token_ids`` [...] of the weight, dequantized: [..., in_features] of ``dtype`` (capturable)."""
        if self.packed is None:
            return embedding_rows(self._raw(), self.qtype, self.in_features, token_ids, dtype)
        ids = token_ids.reshape(-1).to(device=self.device, dtype=torch.long)
        rows = _dequantize_packed(self.packed.index_select(ids), dtype)
        return rows.view(*token_ids.shape, self.in_features)

    def __call__(self, x: torch.Tensor | DeferredRMSNorm, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """x [..., in_features] in any float dtype -> [..., out_features] in ``out_dtype`` (x's by default), plus
        the bias. The kernels write ``out_dtype`` themselves: float32 logits from bf16 activations are never
        rounded to bf16 on the way. A deferred RMSNorm is finished by the one-row kernel where it serves x (the
        norm's factor applied to the outputs), else computed first."""
        if isinstance(x, DeferredRMSNorm):
            if not self._one_row_gemv(x.scaled):
                return self(x.normed, out_dtype)
            from rocmforge.kernels.triton.packed_gemv import RmsScale, packed_gemv

            assert self.packed is not None  # _one_row_gemv
            scale = RmsScale(x.sum_squares, x.h.shape[-1], x.eps)
            y = packed_gemv(x.scaled, self.packed, out_dtype or x.scaled.dtype, rms_scale=scale)
            return y.add_(self.bias) if self.bias is not None else y
        out_dtype = out_dtype or x.dtype
        if x.shape[-1] != self.in_features:
            raise ValueError(f"QuantLinear: input of shape {tuple(x.shape)} for weight of shape {self.shape}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        m = x2.shape[0]
        if m == 0:
            y = x2.new_empty((0, self.out_features), dtype=out_dtype)
        elif self.qtype in _VIEW_DTYPES and m > fused_max_m(self.qtype) and _triton_on(x2.device):
            y = self.float_matmul(x2, out_dtype)
        elif (
            m <= fused_max_m(self.qtype)
            and _triton_on(x2.device)
            and x2.dtype in _KERNEL_X_DTYPES
            and (self.packed is None or self.dtype in _HALF_DTYPES)
        ):
            y = self.fused_matmul(x2, out_dtype)
        else:
            y = self.dequant_matmul(x2, out_dtype)
        y = y.reshape(*lead, self.out_features)
        # In place: the output keeps its dtype (a float32 bias would promote a bf16 activation to float32).
        return y.add_(self.bias) if self.bias is not None else y

    def add_rms_norm(
        self, x: torch.Tensor, residual: torch.Tensor, norm_weight: torch.Tensor, eps: float
    ) -> DeferredRMSNorm | None:
        """``residual + self(x)`` and the RMSNorm after it, in this projection's launch, with the norm deferred to
        the next projection (``packed_gemv_add_rms_norm``): None where the one-row kernel does not serve x (the
        caller runs the projection and ``norm.add_rms_norm``), or a bias would come between."""
        if self.bias is not None or residual.dtype != x.dtype or not self._one_row_gemv(x):
            return None
        from rocmforge.kernels.triton.packed_gemv import packed_gemv_add_rms_norm

        assert self.packed is not None  # _one_row_gemv
        scaled, h, sum_squares = packed_gemv_add_rms_norm(x, self.packed, residual, norm_weight)
        return DeferredRMSNorm(h, norm_weight, eps, scaled, sum_squares)

    def _one_row_gemv(self, x: torch.Tensor) -> bool:
        """Whether x is one row that ``packed_gemv`` serves: :meth:`fused_matmul`'s choice of kernel, and where a
        deferred RMSNorm can be finished inside the projection (:meth:`add_rms_norm`, :meth:`__call__`)."""
        if (
            self.packed is None
            or self.dtype not in _HALF_DTYPES
            or x.shape != (1, self.in_features)
            or x.dtype not in _KERNEL_X_DTYPES
            or not _triton_on(x.device)
        ):
            return False
        from rocmforge.kernels.triton.packed_gemv import GEMV_TYPES

        return self.qtype in GEMV_TYPES

    def float_matmul(self, x: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """F16/BF16 weights: cuBLAS on the bytes viewed as the [N, K] weight, x cast to its dtype; ``out_dtype``
        (x's by default)."""
        wdtype = _VIEW_DTYPES[self.qtype]
        weight = self._raw().view(wdtype).view(self.shape)
        return F.linear(x.to(wdtype), weight).to(out_dtype or x.dtype)

    def fused_matmul(self, x: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """``x @ W.T`` by a kernel that dequantizes inside the matmul (Triton device only), no bias, written by the
        kernel in ``out_dtype`` (x's by default).

        Packed weights: ``packed_gemv`` for one row of Q4_K or Q6_K, else ``packed_matmul`` (any M); GGUF blocks:
        ``quant_matmul`` (M <= 16).
        """
        out_dtype = out_dtype or x.dtype
        if self.packed is not None:
            from rocmforge.kernels.triton.packed_gemv import packed_gemv
            from rocmforge.kernels.triton.packed_matmul import packed_matmul

            if self._one_row_gemv(x):
                return packed_gemv(x, self.packed, out_dtype=out_dtype)  # the faster single-row kernels
            return packed_matmul(x, self.packed, out_dtype=out_dtype)
        from rocmforge.kernels.triton.quant_matmul import quant_matmul

        return quant_matmul(x, self._raw(), self.qtype, self.shape, out_dtype=out_dtype)

    def dequant_matmul(self, x: torch.Tensor, out_dtype: torch.dtype | None = None) -> torch.Tensor:
        """``x @ W.T`` in the matmul dtype (x cast to it), result in ``out_dtype`` (x's by default), no bias (the
        large-M path).

        Packed weights in a half matmul dtype up to :data:`PACKED_GEMM_MAX_M`: ``packed_matmul``. Otherwise W
        is dequantized to the matmul dtype in row chunks, each multiplied by torch: with float32 that is exactly
        what ``Linear`` computes on the weight dequantized at load (the reference mode).
        """
        n, k = self.shape
        out_dtype = out_dtype or x.dtype
        xw = x.to(self.dtype)
        if (
            self.packed is not None
            and x.shape[0] <= PACKED_GEMM_MAX_M[self.qtype]
            and self.dtype in _HALF_DTYPES
            and _triton_on(x.device)
        ):
            from rocmforge.kernels.triton.packed_matmul import packed_matmul

            return packed_matmul(xw, self.packed, out_dtype=out_dtype)
        align = self.packed.row_align if self.packed is not None else 1  # Q4_K/Q6_K slice at whole tiles
        rows = max(1, DEQUANT_CHUNK_BYTES // (k * self.dtype.itemsize) // align) * align
        if rows >= n:
            return matmul_rows(xw, self.dequantize_weight()).to(out_dtype)
        out = torch.empty((x.shape[0], n), dtype=self.dtype, device=x.device)
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            out[:, start:stop] = matmul_rows(xw, self.dequantize_weight(start, stop))
        return out.to(out_dtype)

    def can_fuse(self, other: QuantLinear) -> bool:
        """Whether ``other`` can share one matrix with this layer, stacked after it (rows concatenate: blocks
        or planes; packed Q4_K/Q6_K only after whole column tiles)."""
        return (
            self.qtype == other.qtype
            and self.in_features == other.in_features
            and self.device == other.device
            and self.dtype == other.dtype
            and (self.packed is None) == (other.packed is None)
            and (self.packed is None or self.out_features % self.packed.row_align == 0)
        )

    @classmethod
    def fuse(cls, linears: Sequence[QuantLinear]) -> QuantLinear:
        """One layer whose output is the given ones' outputs concatenated; they become views of its storage.

        GGUF rows are whole blocks and packed planes hold whole rows (or Q4_K/Q6_K's whole tiles of rows), so
        stacking rows stacks the weights. Re-pointing the originals at slices keeps one copy of the bytes on the
        device while they stay usable on their own.
        """
        first = linears[0]
        for before, linear in itertools.pairwise(linears):
            if not before.can_fuse(linear):
                raise ValueError(f"QuantLinear.fuse: {linear!r} does not fit after {before!r}")
        if first.packed is None:
            raw, bias = stack_rows(linears, "raw")
            return cls(raw, first.qtype, (int(raw.shape[0]), first.in_features), bias, first.dtype)
        packed, bias = stack_rows(linears, "packed", PackedWeight.cat)
        return cls.from_packed(packed, bias, first.dtype)


def _dequantize_packed(packed: PackedWeight, dtype: torch.dtype) -> torch.Tensor:
    """Packed rows -> [rows, K] of ``dtype``: the Triton kernel where it runs, else the torch reference."""
    if _triton_on(packed.device):
        from rocmforge.kernels.triton.packed_matmul import dequantize_packed

        return dequantize_packed(packed, dtype)
    return packed.dequantize(dtype)


def embedding_rows(
    raw: torch.Tensor,
    qtype: GGMLQuantizationType,
    k: int,
    token_ids: torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Rows ``token_ids`` of a quantized [vocab, k] matrix, dequantized: token_ids [...] -> [..., k] of ``dtype``.

    Gathers the ids' rows of blocks first (a few KiB), so only the looked-up rows are ever dequantized.
    """
    if raw.dim() != 2:
        raise ValueError(f"embedding_rows: raw must be (rows, bytes per row), got shape {tuple(raw.shape)}")
    ids = token_ids.reshape(-1).to(device=raw.device, dtype=torch.long)
    gathered = raw.index_select(0, ids)
    return _dequantize_rows(gathered, qtype, k, dtype).view(*token_ids.shape, k)


class QuantEmbedding:
    """The token embedding kept quantized; ``embedding[token_ids]`` dequantizes only those rows, in float32.

    It wraps the :class:`QuantLinear` of the same matrix, which a model with tied embeddings also uses as its
    output projection: the bytes are on the device once.
    """

    def __init__(self, weight: QuantLinear) -> None:
        self.weight = weight

    @property
    def shape(self) -> torch.Size:
        return torch.Size(self.weight.shape)

    @property
    def device(self) -> torch.device:
        return self.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def __getitem__(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.weight.lookup_rows(token_ids, torch.float32)

    def __repr__(self) -> str:
        return f"QuantEmbedding({self.weight!r})"
