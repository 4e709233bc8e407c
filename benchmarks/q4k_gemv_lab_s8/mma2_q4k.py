"""Lab v2: tensor-core Q4_K GEMV with the quant tile built as B^T [64 n, 256 k] (k contiguous in a thread)."""
import torch
import triton
import triton.language as tl

from rocmforge.kernels.triton.packed_matmul import _auto_split, exact_float, finish_split, split_outputs


@triton.jit(do_not_specialize=["SPLIT_K"])
def q4k_mma2_kernel(x_ptr, out_ptr, part_ptr, counter_ptr, qs_ptr, sc_ptr, mn_ptr, d_ptr, dmin_ptr, N, K, SPLIT_K,
                    SPLIT_BLOCK: tl.constexpr, STAGES: tl.constexpr, INTERP: tl.constexpr = False,
                    XSUM_DOT: tl.constexpr = False):
    t = tl.program_id(0).to(tl.int64)
    pid_k = tl.program_id(1)
    n_super = K // 256
    per_split = tl.cdiv(n_super, SPLIT_K)
    start = pid_k * per_split
    stop = tl.minimum(start + per_split, n_super)
    g16 = tl.arange(0, 16)
    n = tl.arange(0, 64)
    # words as [64 n, 8 g, 1 e, 4 j]
    w_off = (tl.arange(0, 8)[None, :, None, None] * 64 + n[:, None, None, None]) * 4 + tl.arange(0, 4)[None, None, None, :]
    shift = 4 * tl.arange(0, 8)[None, None, :, None]  # [1, 1, 8, 1]
    kk = tl.arange(0, 256)
    g_ok = (g16 < 8)[:, None]
    a_mask = (kk[None, :] // 32) == g16[:, None]  # [16, 256] block diagonal
    acc = tl.zeros((16, 64), dtype=tl.float32)
    for sb in tl.range(start, stop, num_stages=STAGES):
        sub_base = (t * (K // 32) + sb * 8) * 64
        row_base = (t * n_super + sb) * 64
        words = tl.load(qs_ptr + sub_base * 4 + w_off)  # [64, 8, 1, 4]
        q = ((words >> shift) & 0xF) | 0x4300  # [64, 8, 8, 4]: k = 32 g + 4 e + j
        bt = tl.reshape(q.to(tl.int16).to(tl.bfloat16, bitcast=True), (64, 256))
        xk = tl.load(x_ptr + sb * 256 + kk)  # [256] bf16
        a = tl.where(a_mask, xk[None, :], 0.0).to(tl.bfloat16)  # [16, 256]
        if INTERP:
            c = tl.dot(a.to(tl.float32), tl.trans(bt.to(tl.float32)))
        else:
            c = tl.dot(a, tl.trans(bt))  # [16, 64]
        if XSUM_DOT:
            ones = tl.full((256, 64), 1.0, tl.bfloat16)
            x_sum = tl.dot(a, ones)  # [16, 64]: every column the sub-block's sum
        else:
            xs = tl.sum(tl.reshape(xk.to(tl.float32), (8, 32)), axis=1)  # [8]
            x_sum = tl.sum(tl.where((tl.arange(0, 8)[None, :] == g16[:, None]), xs[None, :], 0.0), axis=1, keep_dims=True)
        sc = exact_float(tl.load(sc_ptr + sub_base + g16[:, None] * 64 + n[None, :], mask=g_ok, other=0).to(tl.int32))
        mn = exact_float(tl.load(mn_ptr + sub_base + g16[:, None] * 64 + n[None, :], mask=g_ok, other=0).to(tl.int32))
        d = tl.load(d_ptr + row_base + n).to(tl.float32)[None, :]
        dmin = tl.load(dmin_ptr + row_base + n).to(tl.float32)[None, :]
        acc += (d * sc) * (c - 128.0 * x_sum) - (dmin * mn) * x_sum
    total = tl.sum(acc, axis=0)  # [64]
    rows = t * 64 + n
    finish_split(out_ptr, part_ptr, counter_ptr + t, rows, rows < N, total, pid_k, SPLIT_K, N, SPLIT_BLOCK)


def q4k_mma2_gemv(x, weight, programs_per_sm=8, num_warps=4, stages=1, out_dtype=None, xsum_dot=False):
    n, k = weight.shape
    grid_n = triton.cdiv(n, 64)
    split = _auto_split(grid_n, k // 256, programs_per_sm, x.device, 1)
    out, partials = split_outputs(weight, 1, n, split, grid_n, out_dtype or x.dtype, x.device)
    q4k_mma2_kernel[(grid_n, split)](x, out, partials, weight.split_counters, *(p.contiguous() for p in weight.planes),
                                     n, k, split, SPLIT_BLOCK=triton.next_power_of_2(split), STAGES=stages,
                                     INTERP=x.device.type == "cpu", XSUM_DOT=xsum_dot, num_warps=num_warps)
    return out
