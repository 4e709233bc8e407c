"""RMSNorm (alone and after the residual add) and the gated activation in one Triton launch each, for the GPU.

Same contracts as the CPU functions, which stay the reference: :func:`rocmforge.layers.norm.rms_norm` (float32
mean of squares, rsqrt, times a float32 weight, output in x's dtype), :func:`rocmforge.layers.norm.add_rms_norm`
and :func:`rocmforge.layers.activation.gated_activation` (``act(gate) * up`` with SiLU or tanh-GELU). RoPE runs
fused with the KV-cache write (:mod:`rocmforge.kernels.triton.rope_cache`).

Where they run is decided in :mod:`rocmforge.layers.gpu_kernels`: decode-sized steps on a GPU, which the engine
replays from CUDA graphs. Measured on an H100 (benchmarks/gpu_decode.py, synthetic 7B Q4_K_M, 2026-11-26),
routing eager (un-graphed) steps through the norm and RoPE kernels halved the launches (1040 -> 523) but gained
nothing, because an eager step was bound by host time, and made 512-token prefills slower (6782 vs 9963 tok/s).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["add_rms_norm_triton", "gated_activation_triton", "rms_norm_triton"]


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    w_ptr,
    out_ptr,
    heads,
    n_cols,
    weight_rows,
    eps,
    stride_xt,
    stride_xh,
    BLOCK: tl.constexpr,
):
    # One program per row (token t, head h) of the last dim; x[t, h, :] is contiguous.
    row = tl.program_id(0)
    t = row // heads
    h = row - t * heads
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + t.to(tl.int64) * stride_xt + h * stride_xh + cols, mask=mask, other=0.0).to(tl.float32)
    mean_sq = tl.sum(x * x, axis=0) / n_cols
    rstd = tl.rsqrt(mean_sq + eps)
    # A weight of several rows (the decoder's [heads, head_dim] q/k norms) repeats every weight_rows rows.
    w_row = row % weight_rows
    w = tl.load(w_ptr + w_row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    out = (x * rstd) * w
    tl.store(out_ptr + row.to(tl.int64) * n_cols + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def _as_rows(x: torch.Tensor) -> torch.Tensor:
    """x as [T, heads, N] (a view whenever the leading dims allow), with a contiguous last dim."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    if x.dim() == 1:
        return x.view(1, 1, -1)
    if x.dim() == 2:
        return x.unsqueeze(1)
    if x.dim() == 3:
        return x
    return x.reshape(-1, x.shape[-2], x.shape[-1])


def _num_warps(block: int) -> int:
    return 1 if block <= 256 else 4 if block <= 2048 else 8 if block <= 8192 else 16


def rms_norm_triton(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x * weight / sqrt(mean(x^2) + eps)`` over the last dim, in float32, returned in x's dtype.

    ``weight`` has x's trailing shape (the last dim, or more dims that repeat over the leading ones: the
    decoder's q/k norm weight is ``[heads, head_dim]`` against x ``[T, heads, head_dim]``).
    """
    n_cols = x.shape[-1]
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    weight = weight.contiguous()
    if weight.numel() % n_cols or out.numel() % weight.numel():
        raise ValueError(f"weight of shape {tuple(weight.shape)} does not broadcast over x {tuple(x.shape)}")
    rows3 = _as_rows(x)
    num_t, heads = rows3.shape[0], rows3.shape[1]
    block = triton.next_power_of_2(n_cols)
    _rms_norm_kernel[(num_t * heads,)](
        rows3,
        weight,
        out,
        heads,
        n_cols,
        weight.numel() // n_cols,
        float(eps),
        rows3.stride(0),
        rows3.stride(1),
        BLOCK=block,
        num_warps=_num_warps(block),
    )
    return out


@triton.jit
def _add_rms_norm_kernel(
    delta_ptr,
    residual_ptr,
    w_ptr,
    out_ptr,
    sum_ptr,
    n_cols,
    eps,
    stride_delta,
    stride_residual,
    BLOCK: tl.constexpr,
):
    # One program per token: h = residual + delta, rounded to the activation dtype as torch's add would be,
    # then the RMSNorm of that rounded h: the same two steps as the CPU path, one pass over memory.
    t = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    delta = tl.load(delta_ptr + t * stride_delta + cols, mask=mask, other=0.0).to(tl.float32)
    residual = tl.load(residual_ptr + t * stride_residual + cols, mask=mask, other=0.0).to(tl.float32)
    h = (residual + delta).to(sum_ptr.dtype.element_ty)
    tl.store(sum_ptr + t * n_cols + cols, h, mask=mask)
    h32 = h.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(h32 * h32, axis=0) / n_cols + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + t * n_cols + cols, (h32 * rstd * w).to(out_ptr.dtype.element_ty), mask=mask)


def add_rms_norm_triton(
    delta: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``h = residual + delta`` (in residual's dtype) and ``rms_norm(h, weight, eps)``, for [T, N] tensors.

    Returns (normed, h). Same contract as :func:`rocmforge.layers.norm.add_rms_norm`.
    """
    if delta.dim() != 2 or delta.shape != residual.shape or weight.shape != (delta.shape[-1],):
        raise ValueError(
            f"delta and residual must be [T, N] of one shape and weight [N], got {tuple(delta.shape)}, "
            f"{tuple(residual.shape)}, {tuple(weight.shape)}"
        )
    delta = delta if delta.stride(-1) == 1 else delta.contiguous()
    residual = residual if residual.stride(-1) == 1 else residual.contiguous()
    num_t, n_cols = residual.shape
    total = torch.empty((num_t, n_cols), dtype=residual.dtype, device=residual.device)
    out = torch.empty_like(total)
    if num_t == 0:
        return out, total
    block = triton.next_power_of_2(n_cols)
    _add_rms_norm_kernel[(num_t,)](
        delta,
        residual,
        weight.contiguous(),
        out,
        total,
        n_cols,
        float(eps),
        delta.stride(0),
        residual.stride(0),
        BLOCK=block,
        num_warps=_num_warps(block),
    )
    return out, total


@triton.jit
def _gated_activation_kernel(
    gate_ptr,
    up_ptr,
    out_ptr,
    n_cols,
    stride_gate,
    stride_up,
    GELU: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # One program per (token, BLOCK columns); gate and up are rows of the fused gate_up output (strided views).
    t = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    gate = tl.load(gate_ptr + t * stride_gate + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(up_ptr + t * stride_up + cols, mask=mask, other=0.0).to(tl.float32)
    if GELU:
        # tanh approximation, as torch's gelu(approximate="tanh"): 0.5 g (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3)))
        inner = 0.7978845608028654 * (gate + 0.044715 * gate * gate * gate)
        act = 0.5 * gate * (1.0 + (2.0 * tl.sigmoid(2.0 * inner) - 1.0))
    else:
        act = gate * tl.sigmoid(gate)
    tl.store(out_ptr + t * n_cols + cols, (act * up).to(out_ptr.dtype.element_ty), mask=mask)


def gated_activation_triton(gate: torch.Tensor, up: torch.Tensor, activation: str) -> torch.Tensor:
    """``act(gate) * up`` for [T, I] tensors (rows may be strided views), act "silu" or "gelu_tanh".

    Computed in float32 and returned in gate's dtype. torch's bf16 ops round ``act(gate)`` to bf16 before the
    product; this kernel does not, so bf16 results may differ from torch's by one rounding.
    """
    if activation not in ("silu", "gelu_tanh"):
        raise ValueError(f"unknown activation {activation!r}")
    if gate.dim() != 2 or gate.shape != up.shape:
        raise ValueError(f"gate and up must be [T, I] of one shape, got {tuple(gate.shape)} and {tuple(up.shape)}")
    gate = gate if gate.stride(-1) == 1 else gate.contiguous()
    up = up if up.stride(-1) == 1 else up.contiguous()
    num_t, n_cols = gate.shape
    out = torch.empty((num_t, n_cols), dtype=gate.dtype, device=gate.device)
    if out.numel() == 0:
        return out
    block = min(1024, triton.next_power_of_2(n_cols))
    _gated_activation_kernel[(num_t, triton.cdiv(n_cols, block))](
        gate,
        up,
        out,
        n_cols,
        gate.stride(0),
        up.stride(0),
        GELU=activation == "gelu_tanh",
        BLOCK=block,
        num_warps=4,
    )
    return out
