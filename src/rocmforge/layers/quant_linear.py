"""A linear layer whose weight stays in its GGUF blocks on the device, and the quantized token embedding.

A Q4_K_M model then takes about its file size in GPU memory instead of its bf16 size. ``QuantLinear(x)``
picks one of two paths by the number of rows M of x:

* M <= :data:`FUSED_MAX_M` of the type (2-3 for the K-quants and Q8_0, measured): ``quant_matmul``, the Triton
  kernel that dequantizes inside the matmul (decode: it reads the quantized weight once);
* larger M: the weight is dequantized to the matmul dtype (bf16 by default) by the Triton row kernel in chunks
  of at most :data:`DEQUANT_CHUNK_BYTES`, and each chunk goes to ``torch.matmul`` (cuBLAS / hipBLAS). The
  dequantization is paid once per call and amortized over M rows (prefill).

Where does which run: on a CUDA/ROCm device both paths use Triton; on the CPU under ``TRITON_INTERPRET=1`` too
(so that the tests can check them without a GPU); otherwise (the CPU, or a GPU without Triton) the weight is
dequantized chunk by chunk with the torch dequantizer of ``rocmforge.gguf.quants`` and multiplied in the
matmul dtype, which is also what ``Linear`` computes on a weight dequantized at load.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from gguf.constants import GGMLQuantizationType

from rocmforge.errors import UnsupportedModelError
from rocmforge.gguf.quants import SUPPORTED_QUANT_TYPES, dequantize, quant_block_info
from rocmforge.kernels.triton.availability import interpreter_enabled, triton_available
from rocmforge.layers.linear import matmul_rows, stack_rows

__all__ = ["DEQUANT_CHUNK_BYTES", "FUSED_MAX_M", "QuantEmbedding", "QuantLinear", "embedding_rows", "fused_max_m"]

_Q = GGMLQuantizationType

# Largest M that goes through the fused decode kernel, per type (the kernel takes M <= 16). Above it, dequantizing
# the whole weight to bf16 and calling cuBLAS is faster: the decode kernels multiply on CUDA cores in fp32, so their
# time grows with M while the dequantize + cuBLAS time hardly does. Measured on an H200 (benchmarks/gpu_linear.py,
# BENCHMARKS.md "GPU quantized linear": the two times cross at M = 2.4 for Q4_K, 3.5 Q6_K, 2.0 Q8_0, 14.0 F16,
# summed over four 7B shapes). Q4_0 has a whole-block decode kernel like Q8_0 and takes its value (not measured).
# The other block types only have the per-element kernel, 10-80x slower at M = 1 than the whole-block ones
# (BENCHMARKS.md, "before" column), far above a dequantize + cuBLAS call, so they never use it (inferred from
# those numbers, not measured for them).
FUSED_MAX_M: dict[GGMLQuantizationType, int] = {
    _Q.Q4_K: 2,
    _Q.Q6_K: 3,
    _Q.Q8_0: 2,
    _Q.Q4_0: 2,
    _Q.F16: 14,
    _Q.BF16: 14,
    _Q.F32: 14,
}
# Types not in the table: the per-element kernel (Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q5_K).
_DEFAULT_FUSED_MAX_M = 0

# Bound on the dequantized temporary of the large-M path: a 32000 x 4096 vocabulary projection would be 250 MiB
# of bf16 in one piece.
DEQUANT_CHUNK_BYTES = 64 << 20

# Activation dtypes the fused kernel takes; others go through the dequantize + torch path.
_KERNEL_X_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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
    """``y = x @ W.T (+ bias)`` with ``W`` [out, in] kept as its raw GGUF blocks (one row of blocks per output).

    Args:
        raw: the weight's bytes, uint8, (out_features, bytes per row) or flat, on the device that computes.
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
        self.raw = raw.reshape(n, row_bytes)
        self.qtype = qtype
        self.shape = (n, k)
        self.bias = bias
        self.dtype = dtype

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def in_features(self) -> int:
        return self.shape[1]

    @property
    def device(self) -> torch.device:
        return self.raw.device

    @property
    def nbytes(self) -> int:
        """Bytes of the quantized weight (the bias not included)."""
        return self.raw.numel()

    def __repr__(self) -> str:
        bias = ", bias" if self.bias is not None else ""
        return f"QuantLinear({self.qtype.name}, {self.shape}{bias}, {self.dtype}, {self.device})"

    def dequantize_weight(
        self, start: int = 0, stop: int | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """Rows ``start:stop`` of the weight as a float tensor of ``dtype`` (the matmul dtype by default)."""
        return _dequantize_rows(self.raw[start:stop], self.qtype, self.in_features, dtype or self.dtype)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in_features] in any float dtype -> [..., out_features] in x's dtype (plus the bias)."""
        if x.shape[-1] != self.in_features:
            raise ValueError(f"QuantLinear: input of shape {tuple(x.shape)} for weight of shape {self.shape}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        m = x2.shape[0]
        if m == 0:
            y = x2.new_empty((0, self.out_features))
        elif m <= fused_max_m(self.qtype) and _triton_on(x2.device) and x2.dtype in _KERNEL_X_DTYPES:
            y = self.fused_matmul(x2)
        else:
            y = self.dequant_matmul(x2)
        y = y.reshape(*lead, self.out_features)
        return y + self.bias if self.bias is not None else y

    def fused_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T`` through the fused decode kernel (M <= 16, Triton device only), in x's dtype, no bias."""
        from rocmforge.kernels.triton.quant_matmul import quant_matmul

        return quant_matmul(x, self.raw, self.qtype, self.shape, out_dtype=x.dtype)

    def dequant_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T`` by dequantizing W to the matmul dtype in row chunks and calling torch; x's dtype, no bias."""
        n, k = self.shape
        rows = max(1, DEQUANT_CHUNK_BYTES // (k * self.dtype.itemsize))
        xw = x.to(self.dtype)
        if rows >= n:
            return matmul_rows(xw, self.dequantize_weight()).to(x.dtype)
        out = torch.empty((x.shape[0], n), dtype=self.dtype, device=x.device)
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            out[:, start:stop] = matmul_rows(xw, self.dequantize_weight(start, stop))
        return out.to(x.dtype)

    def can_fuse(self, other: QuantLinear) -> bool:
        """Whether ``other`` can share one matrix with this layer (rows of whole blocks concatenate)."""
        return (
            self.qtype == other.qtype
            and self.in_features == other.in_features
            and self.device == other.device
            and self.dtype == other.dtype
        )

    @classmethod
    def fuse(cls, linears: Sequence[QuantLinear]) -> QuantLinear:
        """One layer whose output is the given ones' outputs concatenated; they become views of its storage.

        GGUF rows are whole blocks, so stacking the raw rows stacks the weights. Re-pointing the originals at
        slices keeps one copy of the bytes on the device while they stay usable on their own.
        """
        first = linears[0]
        for linear in linears[1:]:
            if not first.can_fuse(linear):
                raise ValueError(f"QuantLinear.fuse: {linear!r} does not fit {first!r}")
        raw, bias = stack_rows(linears, "raw")
        offset = int(raw.shape[0])
        return cls(raw, first.qtype, (offset, first.in_features), bias, first.dtype)


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
        w = self.weight
        return embedding_rows(w.raw, w.qtype, w.in_features, token_ids, torch.float32)

    def __repr__(self) -> str:
        return f"QuantEmbedding({self.weight!r})"
