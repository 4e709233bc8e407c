"""T layout: columns (output features) across threads, K in registers, tile-major storage.

Planes (TN = tile width, a pack-time constant the kernel's tile width must equal):
  qs  int32 [N/TN, K/8, TN]   word 4s + j of a super-block holds element 32s + 4e + j in nibble e (B' order)
  sc  uint8 [N/TN, K/32, TN]
  mn  uint8 [N/TN, K/32, TN]
  d   f16   [N/TN, K/256, TN]
  dmin f16  [N/TN, K/256, TN]
A program owns tile t (TN columns) and a contiguous range of super-blocks; each step takes G sub-blocks
(G/8 super-blocks). Tile [G, 4, TN]: layout sizePerThread [.,.,4] along TN (16-byte loads), warps along G.
"""
import torch
import triton
import triton.language as tl
try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover
    gdc_launch_dependents = gdc_wait = None


@triton.jit
def _nib(words, E: tl.constexpr):
    """Nibble E as the float 16 + q (q moved to mantissa bits 19..22 of 16.0)."""
    if E <= 4:
        moved = words << (19 - 4 * E)
    else:
        moved = words >> (4 * E - 19)
    return ((moved & 0x00780000) | 0x41800000).to(tl.float32, bitcast=True)


@triton.jit
def _u8f(v):
    return (v.to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0


@triton.jit
def q4k_t(x_ptr, out_ptr, qs_ptr, sc_ptr, mn_ptr, d_ptr, dmin_ptr, N, N_SB, STEPS_PER_SPLIT,
          TN: tl.constexpr, G: tl.constexpr, LOAD_ONLY: tl.constexpr = 0):
    """N % TN == 0, (K/256) % (G/8) == 0. Writes out[pid_k, t*TN:(t+1)*TN] (float32 partial or final)."""
    SBI: tl.constexpr = G // 8  # super-blocks a step
    t = tl.program_id(0)
    pid_k = tl.program_id(1)
    g3 = tl.arange(0, G)[:, None, None]
    j3 = tl.arange(0, 4)[None, :, None]
    c3 = tl.arange(0, TN)[None, None, :]
    n_steps = N_SB // SBI
    start = pid_k * STEPS_PER_SPLIT
    stop = tl.minimum(start + STEPS_PER_SPLIT, n_steps)
    tile = t.to(tl.int64)
    # Offsets inside the tile's contiguous stream of each plane, at step `start`.
    wo = (tile * N_SB * 32 + start * (SBI * 32)) * TN + (4 * g3 + j3) * TN + c3      # [G, 4, TN]
    so = (tile * N_SB * 8 + start * G) * TN + g3 * TN + c3 + 0 * j3                  # [G, 4, TN]
    do = (tile * N_SB + start * SBI) * TN + (g3 // 8) * TN + c3 + 0 * j3             # [G, 4, TN]
    xo = start * (SBI * 256) + 32 * g3 + j3                                          # [G, 4, 1]
    res = tl.zeros((G, 1, TN), dtype=tl.float32)
    for _ in range(start, stop):
        words = tl.load(qs_ptr + wo)
        if LOAD_ONLY:
            res += tl.sum(words.to(tl.float32), axis=1, keep_dims=True) * 1e-30
        else:
            sc = _u8f(tl.load(sc_ptr + so))
            mn = _u8f(tl.load(mn_ptr + so))
            d = tl.load(d_ptr + do).to(tl.float32)
            dmin = tl.load(dmin_ptr + do).to(tl.float32)
            xe = tl.load(x_ptr + xo).to(tl.float32)
            acc = _nib(words, 0) * xe
            xs = xe
            for e in tl.static_range(1, 8):
                xe = tl.load(x_ptr + xo + 4 * e).to(tl.float32)
                acc += _nib(words, e) * xe
                xs += xe
            # sum (d sc q - dmin mn) x = d sc (sum (16 + q) x - 16 X) - dmin mn X, per sub-block.
            a = tl.sum(acc, axis=1, keep_dims=True)
            xsum = tl.sum(xs, axis=1, keep_dims=True)
            dsc = tl.max(d * sc, axis=1, keep_dims=True)
            dmn = tl.max(dmin * mn, axis=1, keep_dims=True)
            res += dsc * (a - 16.0 * xsum) - dmn * xsum
        wo += SBI * 32 * TN
        so += G * TN
        do += SBI * TN
        xo += SBI * 256
    total = tl.sum(tl.sum(res, axis=1), axis=0)
    offs = t * TN + tl.arange(0, TN)
    tl.store(out_ptr + pid_k * N + offs, total.to(out_ptr.dtype.element_ty))


def to_t(planes, n, k, tn):
    """Committed packed planes (qs, sc, mn, d, dmin) -> T planes."""
    qs, sc, mn, d, dmin = planes
    nsb = k // 256
    shifts = 4 * torch.arange(8, device=qs.device, dtype=torch.int32)
    # committed: word w of sb holds element 32s + w in nibble s -> q[n, sb, s, w] = element 32s + w
    q = ((qs.view(n, nsb, 32, 1) >> shifts) & 0xF).transpose(-1, -2)  # [n, sb, 8 (s), 32 (w)]
    # B': word 4s + j holds element 32s + 4e + j in nibble e -> q[n, sb, s, e, j]
    qb = q.reshape(n, nsb, 8, 8, 4)  # element 32s + 4e + j
    words = torch.zeros(n, nsb, 8, 4, dtype=torch.int32, device=qs.device)
    for e in range(8):
        words |= qb[:, :, :, e, :] << (4 * e)
    words = words.view(n, k // 8)
    g = n // tn

    def tm(p):
        cols = p.shape[1]
        return p.view(g, tn, cols).transpose(1, 2).contiguous()

    return tm(words), tm(sc), tm(mn), tm(d), tm(dmin)


def run_t(x, tplanes, n, k, tn, g, warps, split, partial=None):
    """out (1, n) in x.dtype; split = K splits (over steps of G/8 super-blocks)."""
    from rocmforge.kernels.triton.packed_matmul import split_outputs, sum_splits
    n_sb = k // 256
    n_steps = n_sb // (g // 8)
    per = triton.cdiv(n_steps, split)
    split = triton.cdiv(n_steps, per)
    out, target = split_outputs(1, n, split, x.dtype, x.device)
    q4k_t[(n // tn, split)](x, target, *tplanes, n, n_sb, per, TN=tn, G=g, num_warps=warps)
    sum_splits(target, out, split)
    return out


def run_t_loads(x, tplanes, n, k, tn, g, warps, split):
    n_sb = k // 256
    n_steps = n_sb // (g // 8)
    per = triton.cdiv(n_steps, split)
    split = triton.cdiv(n_steps, per)
    target = torch.empty((split, 1, n), dtype=torch.float32, device=x.device)
    q4k_t[(n // tn, split)](x, target, *tplanes, n, n_sb, per, TN=tn, G=g, LOAD_ONLY=1, num_warps=warps)
    return target


@triton.jit(do_not_specialize=["CS"])
def q4k_t2(x_ptr, out_ptr, qs_ptr, sc_ptr, mn_ptr, d_ptr, dmin_ptr, N, N_SB, STEPS_PER_SPLIT, CS,
           TN: tl.constexpr, G: tl.constexpr, LOAD_ONLY: tl.constexpr = 0):
    """Words plane [tile, sb, s, c, j] (16 bytes per sub-block and column); tile [G, TN, 4] with j in-thread.
    CS = 1 at run time: it hides the scale planes' contiguity along c from the compiler, so that every load
    gets the words' layout."""
    SBI: tl.constexpr = G // 8
    t = tl.program_id(0)
    pid_k = tl.program_id(1)
    g3 = tl.arange(0, G)[:, None, None]
    c3 = tl.arange(0, TN)[None, :, None]
    j3 = tl.arange(0, 4)[None, None, :]
    n_steps = N_SB // SBI
    start = pid_k * STEPS_PER_SPLIT
    stop = tl.minimum(start + STEPS_PER_SPLIT, n_steps)
    tile = t.to(tl.int64)
    wo = (tile * N_SB * 8 + start * G) * (TN * 4) + g3 * (TN * 4) + c3 * 4 + j3       # [G, TN, 4]
    so = (tile * N_SB * 8 + start * G) * TN + (g3 * TN + c3) * CS + 0 * j3           # [G, TN, 4]
    do = (tile * N_SB + start * SBI) * TN + ((g3 // 8) * TN + c3) * CS + 0 * j3      # [G, TN, 4]
    xo = start * (SBI * 256) + 32 * g3 + j3                                          # [G, 1, 4]
    res = tl.zeros((G, TN, 1), dtype=tl.float32)
    for _ in range(start, stop):
        words = tl.load(qs_ptr + wo)
        if LOAD_ONLY:
            res += tl.sum(words.to(tl.float32), axis=2, keep_dims=True) * 1e-30
        else:
            sc = _u8f(tl.load(sc_ptr + so))
            mn = _u8f(tl.load(mn_ptr + so))
            d = tl.load(d_ptr + do).to(tl.float32)
            dmin = tl.load(dmin_ptr + do).to(tl.float32)
            xe = tl.load(x_ptr + xo).to(tl.float32)
            acc = _nib(words, 0) * xe
            xs = xe
            for e in tl.static_range(1, 8):
                xe = tl.load(x_ptr + xo + 4 * e).to(tl.float32)
                acc += _nib(words, e) * xe
                xs += xe
            a = tl.sum(acc, axis=2, keep_dims=True)
            xsum = tl.sum(xs, axis=2, keep_dims=True)
            dsc = tl.max(d * sc, axis=2, keep_dims=True)
            dmn = tl.max(dmin * mn, axis=2, keep_dims=True)
            res += dsc * (a - 16.0 * xsum) - dmn * xsum
        wo += G * TN * 4
        so += G * TN
        do += SBI * TN
        xo += SBI * 256
    total = tl.sum(tl.sum(res, axis=2), axis=0)
    offs = t * TN + tl.arange(0, TN)
    tl.store(out_ptr + pid_k * N + offs, total.to(out_ptr.dtype.element_ty))


def to_t2(planes, n, k, tn):
    """T planes -> T2 (words [tile, sb, s, c, j]); scale planes as T."""
    w, sc, mn, d, dmin = to_t(planes, n, k, tn)
    g = n // tn
    w2 = w.view(g, k // 32, 4, tn).transpose(2, 3).contiguous()
    return w2, sc, mn, d, dmin


def run_t2(x, tplanes, n, k, tn, g, warps, split, load_only=0):
    from rocmforge.kernels.triton.packed_matmul import split_outputs, sum_splits
    n_sb = k // 256
    n_steps = n_sb // (g // 8)
    per = triton.cdiv(n_steps, split)
    split = triton.cdiv(n_steps, per)
    out, target = split_outputs(1, n, split, x.dtype, x.device)
    if load_only:
        target = torch.empty((split, 1, n), dtype=torch.float32, device=x.device)
    q4k_t2[(n // tn, split)](x, target, *tplanes, n, n_sb, per, 1, TN=tn, G=g, LOAD_ONLY=load_only, num_warps=warps)
    if load_only:
        return target
    sum_splits(target, out, split)
    return out


@triton.jit(do_not_specialize=["CS"])
def q4k_t3(x_ptr, out_ptr, qs_ptr, sc_ptr, mn_ptr, d_ptr, dmin_ptr, N, N_SB, STEPS_PER_SPLIT, CS,
           TN: tl.constexpr, G: tl.constexpr, CPT: tl.constexpr, LOAD_ONLY: tl.constexpr = 0, PDL: tl.constexpr = 0):
    """T2 with CPT columns a thread: tile [CPT, G, TN/CPT, 4]; column c = cc * (TN/CPT) + cq; words plane
    [tile, sb, s, cc, cq, j]; scale planes [tile, sb, s, c] (d, dmin [tile, sb, c])."""
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
    # Loop-invariant offsets inside a step (int32) and the step's scalar bases (int64).
    wo = (g4 * TN + cc * TQ + cq) * 4 + j4
    so = (g4 * TN + c4) * CS + 0 * j4
    do = ((g4 // 8) * TN + c4) * CS + 0 * j4
    xo = 32 * g4 + j4                                                                # [1, G, 1, 4]
    wb = (tile * N_SB * 8 + start * G) * (TN * 4)
    sbase = (tile * N_SB * 8 + start * G) * TN
    dbase = (tile * N_SB + start * SBI) * TN
    xb = start * (SBI * 256)
    res = tl.zeros((CPT, G, TQ, 1), dtype=tl.float32)
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
    for _ in range(start, stop):
        words = tl.load(qs_ptr + wb + wo)
        if LOAD_ONLY:
            res += tl.sum(words.to(tl.float32), axis=3, keep_dims=True) * 1e-30
        else:
            sc = _u8f(tl.load(sc_ptr + sbase + so))
            mn = _u8f(tl.load(mn_ptr + sbase + so))
            d = tl.load(d_ptr + dbase + do).to(tl.float32)
            dmin = tl.load(dmin_ptr + dbase + do).to(tl.float32)
            xe = tl.load(x_ptr + xb + xo).to(tl.float32)
            acc = _nib(words, 0) * xe
            xs = xe
            for e in tl.static_range(1, 8):
                xe = tl.load(x_ptr + xb + xo + 4 * e).to(tl.float32)
                acc += _nib(words, e) * xe
                xs += xe
            a = tl.sum(acc, axis=3, keep_dims=True)
            xsum = tl.sum(xs, axis=3, keep_dims=True)
            dsc = tl.max(d * sc, axis=3, keep_dims=True)
            dmn = tl.max(dmin * mn, axis=3, keep_dims=True)
            res += dsc * (a - 16.0 * xsum) - dmn * xsum
        wb += G * TN * 4
        sbase += G * TN
        dbase += SBI * TN
        xb += SBI * 256
    total = tl.sum(tl.sum(res, axis=3), axis=1)  # [CPT, TQ]
    offs = t * TN + tl.arange(0, CPT)[:, None] * TQ + tl.arange(0, TQ)[None, :]
    tl.store(out_ptr + pid_k * N + offs, total.to(out_ptr.dtype.element_ty))


def to_t3(planes, n, k, tn, cpt):
    w, sc, mn, d, dmin = to_t(planes, n, k, tn)
    g = n // tn
    # T words [g, K/8 (s*4 + j), tn] -> [g, K/32 (s), tn (c), 4 (j)]; c = cc * TQ + cq is already the order.
    w3 = w.view(g, k // 32, 4, tn).transpose(2, 3).contiguous()
    return w3, sc, mn, d, dmin


def run_t3(x, tplanes, n, k, tn, g, cpt, warps, split, load_only=0, pdl=0):
    from rocmforge.kernels.triton.packed_matmul import split_outputs, sum_splits
    n_sb = k // 256
    n_steps = n_sb // (g // 8)
    per = triton.cdiv(n_steps, split)
    split = triton.cdiv(n_steps, per)
    out, target = split_outputs(1, n, split, x.dtype if x.dtype != torch.float32 else torch.bfloat16, x.device)
    if load_only:
        target = torch.empty((split, 1, n), dtype=torch.float32, device=x.device)
    kw = dict(launch_pdl=True) if pdl else {}
    q4k_t3[(n // tn, split)](x, target, *tplanes, n, n_sb, per, 1, TN=tn, G=g, CPT=cpt, LOAD_ONLY=load_only,
                             PDL=pdl, num_warps=warps, **kw)
    if load_only:
        return target
    if pdl:
        sum_splits_pdl(target, out, split)
    else:
        sum_splits(target, out, split)
    return out


@triton.jit
def _sum_pdl(part_ptr, out_ptr, MN, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr):
    gdc_launch_dependents()
    gdc_wait()
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):
        acc += tl.load(part_ptr + s * MN + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def sum_splits_pdl(target, out, split):
    if split > 1:
        _sum_pdl[(triton.cdiv(out.numel(), 1024),)](target, out, out.numel(), SPLIT_K=split, BLOCK=1024, launch_pdl=True)


@triton.jit
def q4k_committed_pdl(
    x_ptr, out_ptr, qs_ptr, sc_ptr, mn_ptr, d_ptr, dmin_ptr, N, K, stride_qs, stride_sb, SPLIT_K, BLOCK_N: tl.constexpr,
    PDL: tl.constexpr
):
    """packed_gemv's _q4_k_gemv_kernel with grid dependency control: PDL 1 waits at the start, PDL 2 loads the
    first super-block's words before waiting (they do not depend on the previous kernel)."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = offs_n.to(tl.int64)
    w = tl.arange(0, 32)
    n_super = K // 256
    per_split = tl.cdiv(n_super, SPLIT_K)
    start = pid_k * per_split
    stop = tl.minimum(start + per_split, n_super)
    acc = tl.zeros((BLOCK_N, 32), dtype=tl.float32)
    if PDL >= 1:
        gdc_launch_dependents()
    if PDL == 2:
        first = tl.load(qs_ptr + rows[:, None] * stride_qs + start * 32 + w[None, :], mask=mask_n[:, None], other=0)
        acc += first.to(tl.float32) * 0.0
    if PDL >= 1:
        gdc_wait()
    for sb in range(start, stop):
        words = tl.load(qs_ptr + rows[:, None] * stride_qs + sb * 32 + w[None, :], mask=mask_n[:, None], other=0)
        scales = tl.load(sc_ptr + rows * stride_sb + sb, mask=mask_n, other=0)
        mins = tl.load(mn_ptr + rows * stride_sb + sb, mask=mask_n, other=0)
        d = tl.load(d_ptr + rows * stride_sb + sb, mask=mask_n, other=0.0).to(tl.float32)
        dmin = tl.load(dmin_ptr + rows * stride_sb + sb, mask=mask_n, other=0.0).to(tl.float32)
        for s in tl.static_range(8):
            xs = tl.load(x_ptr + sb * 256 + 32 * s + w).to(tl.float32)
            sc = _u8f(((scales >> (8 * s)) & 0xFF).to(tl.int32))
            mn = _u8f(((mins >> (8 * s)) & 0xFF).to(tl.int32))
            q = _u8f((words >> (4 * s)) & 0xF)
            acc += (q * (d * sc)[:, None] - (dmin * mn)[:, None]) * xs[None, :]
    total = tl.sum(acc, axis=1)
    tl.store(out_ptr + pid_k * N + offs_n, total.to(out_ptr.dtype.element_ty), mask=mask_n)


def run_committed_pdl(x, weight, pdl, block_n=64, per_sm=8, warps=2):
    from rocmforge.kernels.triton.packed_matmul import _auto_split, split_outputs, sum_splits
    n, k = weight.shape
    grid_n = triton.cdiv(n, block_n)
    split = _auto_split(grid_n, k // 256, per_sm, x.device)
    out, target = split_outputs(1, n, split, x.dtype, x.device)
    qs, sc, mn, d, dmin = weight.planes
    kw = dict(launch_pdl=True) if pdl else {}
    q4k_committed_pdl[(grid_n, split)](x, target, qs, sc.view(torch.int64), mn.view(torch.int64), d, dmin, n, k,
                                       qs.stride(0), d.stride(0), split, BLOCK_N=block_n, PDL=pdl, num_warps=warps, **kw)
    (sum_splits_pdl if pdl else sum_splits)(target, out, split)
    return out


@triton.jit
def _dp4a(a, b, c):
    """c + sum over the 4 bytes of a (unsigned) * b (signed)."""
    return tl.inline_asm_elementwise("dp4a.u32.s32 $0, $1, $2, $3;", "=r,r,r,r", [a, b, c], dtype=tl.int32,
                                     is_pure=True, pack=1)


@triton.jit(do_not_specialize=["CS"])
def q4k_t4(xw_ptr, xd_ptr, xs_ptr, out_ptr, qs_ptr, sc_ptr, mn_ptr, d_ptr, dmin_ptr, N, N_SB, STEPS_PER_SPLIT, CS,
           TN: tl.constexpr, G: tl.constexpr, CPT: tl.constexpr, PDL: tl.constexpr = 0):
    """T3 with integer dot products: x quantized to int8 per 32 values (xw int32 [K/32, 2 (p), 4 (j)]: byte b of
    word (g, p, j) = xq[32g + 4(2b + p) + j]; xd float32 [K/32] scales; xs float32 [K/32] = sum of xq)."""
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
    wo = (g4 * TN + cc * TQ + cq) * 4 + j4
    so = (g4 * TN + c4) * CS + 0 * j4
    do = ((g4 // 8) * TN + c4) * CS + 0 * j4
    xo = 8 * g4 + j4                                  # [1, G, 1, 4]
    go = g4 + 0 * j4                                  # [1, G, 1, 4]
    wb = (tile * N_SB * 8 + start * G) * (TN * 4)
    sbase = (tile * N_SB * 8 + start * G) * TN
    dbase = (tile * N_SB + start * SBI) * TN
    gb = start * G
    res = tl.zeros((CPT, G, TQ, 1), dtype=tl.float32)
    if PDL:
        gdc_launch_dependents()
        gdc_wait()
    for _ in range(start, stop):
        words = tl.load(qs_ptr + wb + wo)
        sc = _u8f(tl.load(sc_ptr + sbase + so))
        mn = _u8f(tl.load(mn_ptr + sbase + so))
        d = tl.load(d_ptr + dbase + do).to(tl.float32)
        dmin = tl.load(dmin_ptr + dbase + do).to(tl.float32)
        x0 = tl.load(xw_ptr + gb * 8 + xo)
        x1 = tl.load(xw_ptr + gb * 8 + xo + 4)
        xd = tl.load(xd_ptr + gb + go)
        xs = tl.load(xs_ptr + gb + go)
        dot = _dp4a(words & 0x0F0F0F0F, x0, tl.zeros_like(words))
        dot = _dp4a((words >> 4) & 0x0F0F0F0F, x1, dot)
        isum = tl.sum(dot, axis=3, keep_dims=True).to(tl.float32)
        dsc = tl.max(d * sc * xd, axis=3, keep_dims=True)
        dmn = tl.max(dmin * mn * xd * xs, axis=3, keep_dims=True)
        res += dsc * isum - dmn
        wb += G * TN * 4
        sbase += G * TN
        dbase += SBI * TN
        gb += G
    total = tl.sum(tl.sum(res, axis=3), axis=1)  # [CPT, TQ]
    offs = t * TN + tl.arange(0, CPT)[:, None] * TQ + tl.arange(0, TQ)[None, :]
    tl.store(out_ptr + pid_k * N + offs, total.to(out_ptr.dtype.element_ty))


def quantize_x(x):
    """x (1, K) -> (xw int32 [K/32*8], xd float32 [K/32], xs float32 [K/32]) for q4k_t4."""
    k = x.shape[1]
    xv = x.float().view(k // 32, 32)
    amax = xv.abs().amax(dim=1)
    xd = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    xq = torch.round(xv / xd[:, None]).clamp(-127, 127).to(torch.int8)  # [K/32, 32] element 4e + j
    xs = xq.float().sum(dim=1)
    # byte b of word (p, j) = element 4(2b + p) + j
    e = xq.view(k // 32, 4, 2, 4)  # [g, b, p, j] = element 4(2b+p)+j
    words = e.permute(0, 2, 3, 1).contiguous().view(torch.int32).view(-1)  # [g, p, j] words of 4 bytes (b)
    return words, xd, xs, xq


def run_t4(xq3, tplanes, n, k, tn, g, cpt, warps, split, out_dtype=torch.bfloat16, pdl=0):
    from rocmforge.kernels.triton.packed_matmul import split_outputs, sum_splits
    xw, xd, xs = xq3
    n_sb = k // 256
    n_steps = n_sb // (g // 8)
    per = triton.cdiv(n_steps, split)
    split = triton.cdiv(n_steps, per)
    out, target = split_outputs(1, n, split, out_dtype, xw.device)
    kw = dict(launch_pdl=True) if pdl else {}
    q4k_t4[(n // tn, split)](xw, xd, xs, target, *tplanes, n, n_sb, per, 1, TN=tn, G=g, CPT=cpt, PDL=pdl,
                             num_warps=warps, **kw)
    (sum_splits_pdl if pdl else sum_splits)(target, out, split)
    return out
