"""Lab: the Q4_K GEMV launched with programmatic dependent launch; optionally its first super-block's weights
loaded before griddepcontrol.wait (weights never depend on the previous kernel)."""
import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from rocmforge.kernels.triton.packed_gemv import _nibble_plus_16, _store_tile, _tile_program
from rocmforge.kernels.triton.packed_matmul import _auto_split, exact_float, split_outputs


@triton.jit
def _load_sb(qs_ptr, sc_ptr, mn_ptr, d_ptr, dmin_ptr, t, sb, K, word_off, sub_off, row_off, ok):
    sub_base = (t * (K // 32) + sb * 8) * 64
    row_base = (t * (K // 256) + sb) * 64
    words = tl.load(qs_ptr + sub_base * 4 + word_off, mask=(sb + 0 * word_off) < ok, other=0)
    sc = tl.load(sc_ptr + sub_base + sub_off, mask=(sb + 0 * sub_off) < ok, other=0)
    mn = tl.load(mn_ptr + sub_base + sub_off, mask=(sb + 0 * sub_off) < ok, other=0)
    d = tl.load(d_ptr + row_base + row_off, mask=(sb + 0 * row_off) < ok, other=0.0)
    dmin = tl.load(dmin_ptr + row_base + row_off, mask=(sb + 0 * row_off) < ok, other=0.0)
    return words, sc, mn, d, dmin


@triton.jit
def _sb_dot(words, sc, mn, d, dmin, x_ptr, sb, x_off):
    sc = exact_float(sc.to(tl.int32))
    mn = exact_float(mn.to(tl.int32))
    d = d.to(tl.float32)
    dmin = dmin.to(tl.float32)
    xe = tl.load(x_ptr + sb * 256 + x_off).to(tl.float32)
    dot = _nibble_plus_16(words, 0) * xe
    x_sum = xe
    for e in tl.static_range(1, 8):
        xe = tl.load(x_ptr + sb * 256 + x_off + 4 * e).to(tl.float32)
        dot += _nibble_plus_16(words, e) * xe
        x_sum += xe
    dot = tl.sum(dot, axis=3, keep_dims=True)
    x_sum = tl.sum(x_sum, axis=3, keep_dims=True)
    dsc = tl.max(d * sc, axis=3, keep_dims=True)
    dmn = tl.max(dmin * mn, axis=3, keep_dims=True)
    return dsc * (dot - 16.0 * x_sum) - dmn * x_sum


@triton.jit(do_not_specialize=["SPLIT_K", "ONE"])
def q4k_pdl_kernel(x_ptr, out_ptr, part_ptr, counter_ptr, qs_ptr, sc_ptr, mn_ptr, d_ptr, dmin_ptr, N, K, SPLIT_K,
                   ONE, TQ: tl.constexpr, SPLIT_BLOCK: tl.constexpr, PDL: tl.constexpr, PREFETCH: tl.constexpr):
    t, pid_k, c, g, j, start, stop = _tile_program(K, SPLIT_K, TQ)
    if PDL:
        gdc_launch_dependents()
    word_off = (g * 64 + c) * 4 + j
    sub_off = (g * 64 + c) * ONE + 0 * j
    row_off = c * ONE + 0 * (g + j)
    x_off = 32 * g + j
    acc = tl.zeros((64 // TQ, 8, TQ, 1), dtype=tl.float32)
    if PREFETCH:
        w0, s0, m0, d0, dm0 = _load_sb(qs_ptr, sc_ptr, mn_ptr, d_ptr, dmin_ptr, t, start, K, word_off, sub_off,
                                        row_off, stop)
        if PDL:
            gdc_wait()
        if start < stop:
            acc += _sb_dot(w0, s0, m0, d0, dm0, x_ptr, start, x_off)
        lo = start + 1
    else:
        if PDL:
            gdc_wait()
        lo = start
    for sb in range(lo, stop):
        w, s, m, d, dm = _load_sb(qs_ptr, sc_ptr, mn_ptr, d_ptr, dmin_ptr, t, sb, K, word_off, sub_off, row_off, stop)
        acc += _sb_dot(w, s, m, d, dm, x_ptr, sb, x_off)
    _store_tile(out_ptr, part_ptr, counter_ptr, acc, t, pid_k, N, SPLIT_K, TQ, SPLIT_BLOCK)


def q4k_pdl_gemv(x, weight, pdl=False, prefetch=False, programs_per_sm=8, num_warps=2, out=None):
    n, k = weight.shape
    grid_n = triton.cdiv(n, 64)
    split = _auto_split(grid_n, k // 256, programs_per_sm, x.device, 1)
    out_, partials = split_outputs(weight, 1, n, split, grid_n, x.dtype, x.device)
    out = out_ if out is None else out
    if split == 1:
        partials = out
    extra = {"launch_pdl": True} if pdl else {}
    q4k_pdl_kernel[(grid_n, split)](x, out, partials, weight.split_counters, *(p.contiguous() for p in weight.planes),
                                    n, k, split, 1, TQ=64, SPLIT_BLOCK=triton.next_power_of_2(split), PDL=pdl,
                                    PREFETCH=prefetch, num_warps=num_warps, **extra)
    return out
