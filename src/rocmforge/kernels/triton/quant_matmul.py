"""Fused dequantize + matmul for small M (decode): ``x (M, K) @ dequantize(raw (N, row_bytes)).T``.

The weights stay in their GGUF block bytes (a uint8 tensor on the device, one row of blocks per
output feature); each program owns ``BLOCK_N`` output features and all M (<= 16) rows of ``x``, walks
K in steps of 32 elements (one Q*_0/Q*_1 block, or one sub-block of a 256-element K-quant block),
dequantizes the ``[BLOCK_N, 32]`` weight tile in registers and accumulates ``x_tile * w_tile`` in
float32. Broadcast-multiply-sum instead of ``tl.dot`` keeps fp32 exact (no TF32) and works for any M;
tuning (tl.dot for larger M, wider K steps, split-K) comes with profiling on real GPUs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from rocmforge.errors import UnsupportedModelError
from rocmforge.kernels.triton.dequant_blocks import dequant_tile

__all__ = ["MAX_M", "TRITON_QUANT_TYPES", "quant_matmul"]

_Q = GGMLQuantizationType

# Bytes per element of the float types; they are walked as 32-element "blocks" like the rest.
_FLOAT_ELEMENT_BYTES: dict[GGMLQuantizationType, int] = {_Q.F32: 4, _Q.F16: 2, _Q.BF16: 2}

TRITON_QUANT_TYPES: frozenset[GGMLQuantizationType] = frozenset(
    {_Q.Q4_0, _Q.Q4_1, _Q.Q5_0, _Q.Q5_1, _Q.Q8_0, _Q.Q2_K, _Q.Q3_K, _Q.Q4_K, _Q.Q5_K, _Q.Q6_K}
) | frozenset(_FLOAT_ELEMENT_BYTES)

# Largest M this kernel takes: every program keeps all M rows of x in registers.
MAX_M = 16

# K step: one legacy block, or one K-quant sub-block (all ggml block sizes are multiples of 32).
_K_STEP = 32


@triton.jit
def _quant_matmul_kernel(
    x_ptr,
    w_ptr,
    out_ptr,
    M,
    N,
    K,
    stride_xm,
    stride_wn,
    stride_om,
    QTYPE: tl.constexpr,
    QK: tl.constexpr,
    TYPE_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_n = tl.program_id(0)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = (offs_n < N)[:, None]  # [BLOCK_N, 1]
    # int64: N * row_bytes exceeds 2**31 for large vocabularies (e.g. 152k x 896 F32 embeddings).
    row = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn  # [BLOCK_N, 1] pointers to each row's first block
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm  # [BLOCK_M, 1]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        blk = row + (k0 // QK) * TYPE_SIZE
        e = (k0 % QK + offs_k)[None, :]  # [1, BLOCK_K] element indices inside the block
        w = dequant_tile(blk, e, mask_n, QTYPE)  # [BLOCK_N, BLOCK_K] float32
        xk = tl.load(x_rows + k0 + offs_k[None, :], mask=mask_m[:, None], other=0.0).to(tl.float32)
        acc += tl.sum(xk[:, None, :] * w[None, :, :], axis=2)
    out = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & (offs_n < N)[None, :])


def _block_n(block_m: int) -> int:
    # Keep the [BLOCK_M, BLOCK_N, 32] product near 2k-4k values per program.
    return max(16, 128 // block_m)


def quant_matmul(
    x: torch.Tensor,
    raw: torch.Tensor,
    qtype: GGMLQuantizationType,
    shape: tuple[int, int],
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``x @ dequantize(raw, qtype, shape).T`` with the weights dequantized inside a Triton kernel.

    Args:
        x: activations (M, K), M <= :data:`MAX_M`, float32/float16/bfloat16, on the kernel device
            (the GPU, or the CPU under ``TRITON_INTERPRET=1``).
        raw: the weight's GGUF bytes on the same device: uint8, (N, bytes_per_row) or flat and
            contiguous (only the bytes matter).
        qtype: the weight's ggml type, one of :data:`TRITON_QUANT_TYPES`.
        shape: the weight's logical shape ``(N, K)``.
        out_dtype: dtype of the result; ``x.dtype`` when None. Accumulation is float32 regardless.

    Returns:
        (M, N) tensor of ``out_dtype``.

    Raises:
        UnsupportedModelError: ``qtype`` has no kernel.
        ValueError: shapes, dtypes or devices do not fit.
    """
    qtype = GGMLQuantizationType(qtype)
    if qtype not in TRITON_QUANT_TYPES:
        raise UnsupportedModelError(f"quant_matmul: no Triton kernel for {qtype.name}")
    n, k = (int(s) for s in shape)
    if x.dim() != 2 or x.shape[1] != k:
        raise ValueError(f"quant_matmul: x of shape {tuple(x.shape)} does not match weight shape {(n, k)}")
    m = x.shape[0]
    if not 1 <= m <= MAX_M:
        raise ValueError(f"quant_matmul: M = {m} outside 1..{MAX_M} (small-M decode kernel)")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"quant_matmul: x must be float32, float16 or bfloat16, not {x.dtype}")
    if raw.dtype != torch.uint8 or raw.device != x.device:
        raise ValueError(f"quant_matmul: raw must be uint8 on {x.device}, got {raw.dtype} on {raw.device}")

    if qtype in _FLOAT_ELEMENT_BYTES:
        qk, type_size = _K_STEP, _K_STEP * _FLOAT_ELEMENT_BYTES[qtype]
    else:
        qk, type_size = GGML_QUANT_SIZES[qtype]
    if k % qk != 0:
        raise ValueError(f"quant_matmul: K = {k} is not a multiple of {qtype.name}'s block of {qk}")
    row_bytes = k // qk * type_size
    if raw.numel() != n * row_bytes:
        raise ValueError(f"quant_matmul: {qtype.name} weight {(n, k)} needs {n * row_bytes} bytes, got {raw.numel()}")

    raw = raw.contiguous()
    x = x.contiguous()
    out = torch.empty((m, n), dtype=out_dtype or x.dtype, device=x.device)
    block_m = max(1, triton.next_power_of_2(m))
    block_n = _block_n(block_m)
    grid = (triton.cdiv(n, block_n),)
    _quant_matmul_kernel[grid](
        x,
        raw,
        out,
        m,
        n,
        k,
        x.stride(0),
        row_bytes,
        out.stride(0),
        QTYPE=int(qtype.value),
        QK=qk,
        TYPE_SIZE=type_size,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=_K_STEP,
    )
    return out
