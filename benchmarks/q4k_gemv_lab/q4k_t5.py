"""T3/T4 with strides: tile-major or transposed-global planes, one kernel body (float or dp4a)."""
import torch
import triton
import triton.language as tl
from q4k_t import _nib, _u8f, _dp4a, gdc_wait, gdc_launch_dependents, sum_splits_pdl, to_t


@triton.jit(do_not_specialize=["CS"])
def q4k_t5(x_ptr, xd_ptr, xs_ptr, out_ptr, qs_ptr, sc_ptr, mn_ptr, d_ptr, dmin_ptr, N, N_SB, STEPS_PER_SPLIT,
           TSW, SW, TSS, SS, TSD, SD, CS,
           TN: tl.constexpr, G: tl.constexpr, CPT: tl.constexpr, INT8: tl.constexpr, PDL: tl.constexpr = 0):
    """Words at t*TSW + g*SW + c*4 + j; sc/mn at t*TSS + g*SS + c; d/dmin at t*TSD + sb*SD + c (c, g local to the
    tile / global sub-block). INT8: x_ptr holds xw (int32 words of int8 x), xd/xs per 32; else x float."""
    SBI: tl.constexpr = G // 8
    TQ: tl.constexpr = TN // CPT
    t = tl.program_id(0)
    pid_k = tl.program_id(1)
    cc = tl.arange(0, CPT)[:, None, None, None]
    g4 = tl.arange(0, G)[None, :, None, None]
    cq = tl.arange(0, TQ)[None, None, :, None]
    j4 = tl.arange(0, 4)[None, None, None, :]
    c4 = cc * TQ + cq
    n_steps = N_SB // SBI
    start = pid_k * STEPS_PER_SPLIT
    stop = tl.minimum(start + STEPS_PER_SPLIT, n_steps)
    tile = t.to(tl.int64)
    wo = g4 * SW + c4 * 4 + j4
    so = g4 * SS + c4 * CS + 0 * j4
    do = (g4 // 8) * SD + c4 * CS + 0 * j4
    wb = tile * TSW + (start * G).to(tl.int64) * SW
    sbase = tile * TSS + (start * G).to(tl.int64) * SS
    dbase = tile * TSD + (start * SBI).to(tl.int64) * SD
    res = tl.zeros((CPT, G, TQ, 1), dtype=tl.float32)
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
    for i in range(start, stop):
        words = tl.load(qs_ptr + wb + wo)
        sc = _u8f(tl.load(sc_ptr + sbase + so))
        mn = _u8f(tl.load(mn_ptr + sbase + so))
        d = tl.load(d_ptr + dbase + do).to(tl.float32)
        dmin = tl.load(dmin_ptr + dbase + do).to(tl.float32)
        if INT8:
            gb = i * G
            x0 = tl.load(x_ptr + gb * 8 + 8 * g4 + j4)
            x1 = tl.load(x_ptr + gb * 8 + 8 * g4 + 4 + j4)
            xd = tl.load(xd_ptr + gb + g4 + 0 * j4)
            xsum = tl.load(xs_ptr + gb + g4 + 0 * j4)
            dot = _dp4a(words & 0x0F0F0F0F, x0, tl.zeros_like(words))
            dot = _dp4a((words >> 4) & 0x0F0F0F0F, x1, dot)
            isum = tl.sum(dot, axis=3, keep_dims=True).to(tl.float32)
            dsc = tl.max(d * sc * xd, axis=3, keep_dims=True)
            dmn = tl.max(dmin * mn * xd * xsum, axis=3, keep_dims=True)
            res += dsc * isum - dmn
        else:
            xo = i * (SBI * 256) + 32 * g4 + j4
            xe = tl.load(x_ptr + xo).to(tl.float32)
            acc = _nib(words, 0) * xe
            xs = xe
            for e in tl.static_range(1, 8):
                xe = tl.load(x_ptr + xo + 4 * e).to(tl.float32)
                acc += _nib(words, e) * xe
                xs += xe
            a = tl.sum(acc, axis=3, keep_dims=True)
            xsum = tl.sum(xs, axis=3, keep_dims=True)
            dsc = tl.max(d * sc, axis=3, keep_dims=True)
            dmn = tl.max(dmin * mn, axis=3, keep_dims=True)
            res += dsc * (a - 16.0 * xsum) - dmn * xsum
        wb += G * SW
        sbase += G * SS
        dbase += SBI * SD
    total = tl.sum(tl.sum(res, axis=3), axis=1)  # [CPT, TQ]
    offs = t * TN + tl.arange(0, CPT)[:, None] * TQ + tl.arange(0, TQ)[None, :]
    tl.store(out_ptr + pid_k * N + offs, total.to(out_ptr.dtype.element_ty))


def planes_tile_major(planes, n, k, tn):
    """(words [N/TN, K/32, TN, 4], sc, mn [N/TN, K/32, TN], d, dmin [N/TN, K/256, TN]) and their strides."""
    w, sc, mn, d, dmin = to_t(planes, n, k, tn)
    g = n // tn
    w3 = w.view(g, k // 32, 4, tn).transpose(2, 3).contiguous()
    strides = dict(TSW=(k // 32) * tn * 4, SW=tn * 4, TSS=(k // 32) * tn, SS=tn, TSD=(k // 256) * tn, SD=tn)
    return (w3, sc, mn, d, dmin), strides


def planes_global(planes, n, k):
    """Transposed planes: words [K/32, N, 4], sc/mn [K/32, N], d/dmin [K/256, N]."""
    w, sc, mn, d, dmin = to_t(planes, n, k, n)  # one tile of all N columns: [1, K/8 (4s + j), N]
    wg = w.view(k // 32, 4, n).transpose(1, 2).contiguous()
    tp = (wg, sc.view(k // 32, n), mn.view(k // 32, n), d.view(k // 256, n), dmin.view(k // 256, n))
    return tp, None


def global_strides(n, tn):
    return dict(TSW=tn * 4, SW=n * 4, TSS=tn, SS=n, TSD=tn, SD=n)


def run_t5(x, tp, strides, n, k, tn, g, cpt, warps, split, int8=0, out_dtype=torch.bfloat16, pdl=0):
    from rocmforge.kernels.triton.packed_matmul import split_outputs, sum_splits
    n_sb = k // 256
    n_steps = n_sb // (g // 8)
    per = triton.cdiv(n_steps, split)
    split = triton.cdiv(n_steps, per)
    out, target = split_outputs(1, n, split, out_dtype, tp[0].device)
    if int8:
        xw, xd, xs = x
    else:
        xw, xd, xs = x, x, x
    kw = dict(launch_pdl=True) if pdl else {}
    q4k_t5[(n // tn, split)](xw, xd, xs, target, *tp, n, n_sb, per, *strides.values(), 1, TN=tn, G=g, CPT=cpt,
                             INT8=int8, PDL=pdl, num_warps=warps, **kw)
    (sum_splits_pdl if pdl else sum_splits)(target, out, split)
    return out
