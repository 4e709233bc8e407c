"""Lab: the Q4_K GEMV with its planes read through tensor descriptors (TMA on sm_90), pipelined by tl.range."""
import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from rocmforge.kernels.triton.packed_matmul import _auto_split, exact_float, finish_split, split_outputs
from rocmforge.kernels.triton.packed_gemv import _nibble_plus_16


@triton.jit(do_not_specialize=["SPLIT_K"])
def q4k_tma_kernel(x_ptr, out_ptr, part_ptr, counter_ptr, qs_desc, sc_desc, mn_desc, d_desc, dmin_desc,
                   N, K, SPLIT_K, STAGES: tl.constexpr, SPLIT_BLOCK: tl.constexpr, VOLX: tl.constexpr = False):
    t = tl.program_id(0)
    pid_k = tl.program_id(1)
    n_super = K // 256
    per_split = tl.cdiv(n_super, SPLIT_K)
    start = pid_k * per_split
    stop = tl.minimum(start + per_split, n_super)
    g = tl.arange(0, 8)[:, None, None]
    j = tl.arange(0, 4)[None, None, :]
    x_off = 32 * g + j  # [8, 1, 4]
    acc = tl.zeros((8, 64, 1), dtype=tl.float32)
    for sb in tl.range(start, stop, num_stages=STAGES):
        sub0 = t * (K // 32) + sb * 8
        words = qs_desc.load([sub0, 0, 0])  # [8, 64, 4]
        sc = exact_float(sc_desc.load([sub0, 0]).to(tl.int32))[:, :, None]  # [8, 64, 1]
        mn = exact_float(mn_desc.load([sub0, 0]).to(tl.int32))[:, :, None]
        d = d_desc.load([t * n_super + sb, 0]).to(tl.float32)[:, :, None]  # [1, 64, 1]
        dmin = dmin_desc.load([t * n_super + sb, 0]).to(tl.float32)[:, :, None]
        xe = tl.load(x_ptr + sb * 256 + x_off, volatile=VOLX).to(tl.float32)
        dot = _nibble_plus_16(words, 0) * xe
        x_sum = xe
        for e in tl.static_range(1, 8):
            xe = tl.load(x_ptr + sb * 256 + x_off + 4 * e, volatile=VOLX).to(tl.float32)
            dot += _nibble_plus_16(words, e) * xe
            x_sum += xe
        dot = tl.sum(dot, axis=2, keep_dims=True)
        x_sum = tl.sum(x_sum, axis=2, keep_dims=True)
        acc += (d * sc) * (dot - 16.0 * x_sum) - (dmin * mn) * x_sum
    total = tl.sum(acc, axis=0)  # [64, 1]
    rows = t * 64 + tl.arange(0, 64)[:, None]
    finish_split(out_ptr, part_ptr, counter_ptr + t, rows, rows < N, total, pid_k, SPLIT_K, N, SPLIT_BLOCK)


def descriptors(weight):
    qs, sc, mn, d, dmin = (p.contiguous() for p in weight.planes)
    T, S = qs.shape[0], qs.shape[1]
    return (
        TensorDescriptor(qs, [T * S, 64, 4], [256, 4, 1], [8, 64, 4]),
        TensorDescriptor(sc, [T * S, 64], [64, 1], [8, 64]),
        TensorDescriptor(mn, [T * S, 64], [64, 1], [8, 64]),
        TensorDescriptor(d, [T * S // 8, 64], [64, 1], [1, 64]),
        TensorDescriptor(dmin, [T * S // 8, 64], [64, 1], [1, 64]),
    )


def q4k_tma_gemv(x, weight, descs=None, programs_per_sm=8, num_warps=2, stages=3, out_dtype=None):
    n, k = weight.shape
    grid_n = triton.cdiv(n, 64)
    split = _auto_split(grid_n, k // 256, programs_per_sm, x.device, 1)
    out, partials = split_outputs(weight, 1, n, split, grid_n, out_dtype or x.dtype, x.device)
    descs = descs or descriptors(weight)
    q4k_tma_kernel[(grid_n, split)](x, out, partials, weight.split_counters, *descs, n, k, split,
                                    STAGES=stages, SPLIT_BLOCK=triton.next_power_of_2(split), num_warps=num_warps)
    return out
