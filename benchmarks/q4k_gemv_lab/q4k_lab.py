"""Lab: Q4_K M=1 GEMV variants over the packed planes (current layout)."""
import triton
import triton.language as tl


@triton.jit
def q4k_gemv_v2(x_ptr, out_ptr, qs_ptr, sc_ptr, mn_ptr, d_ptr, dmin_ptr, N, stride_qs, stride_sb, SB_SPLIT, N_SB,
                BLOCK_N: tl.constexpr):
    """sc_ptr/mn_ptr: int64 views (8 sub-block bytes per super-block); d/dmin f16 [N, K/256]."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = offs_n.to(tl.int64)
    w = tl.arange(0, 32)
    start = pid_k * SB_SPLIT
    stop = tl.minimum(start + SB_SPLIT, N_SB)
    acc = tl.zeros((BLOCK_N, 32), dtype=tl.float32)
    for sb in range(start, stop):
        words = tl.load(qs_ptr + rows[:, None] * stride_qs + sb * 32 + w[None, :], mask=mask_n[:, None], other=0)
        sc8 = tl.load(sc_ptr + rows * stride_sb + sb, mask=mask_n, other=0)
        mn8 = tl.load(mn_ptr + rows * stride_sb + sb, mask=mask_n, other=0)
        d = tl.load(d_ptr + rows * stride_sb + sb, mask=mask_n, other=0.0).to(tl.float32)
        dmin = tl.load(dmin_ptr + rows * stride_sb + sb, mask=mask_n, other=0.0).to(tl.float32)
        for s in tl.static_range(8):
            xs = tl.load(x_ptr + sb * 256 + 32 * s + w).to(tl.float32)
            sc = (((sc8 >> (8 * s)) & 0xFF).to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
            mn = (((mn8 >> (8 * s)) & 0xFF).to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
            ds = d * sc
            dm = dmin * mn
            q = (((words >> (4 * s)) & 0xF) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
            acc += (q * ds[:, None] - dm[:, None]) * xs[None, :]
    total = tl.sum(acc, axis=1)
    tl.store(out_ptr + pid_k * N + offs_n, total.to(out_ptr.dtype.element_ty), mask=mask_n)


@triton.jit
def _nib19(words, E: tl.constexpr):
    """Nibble E of each word as the float 1 + q/16 (q in mantissa bits 19..22)."""
    if E <= 4:
        moved = words << (19 - 4 * E)
    else:
        moved = words >> (4 * E - 19)
    return ((moved & 0x00780000) | 0x3F800000).to(tl.float32, bitcast=True)


@triton.jit
def q4k_gemv_v3(x_ptr, out_ptr, qs_ptr, sc_ptr, mn_ptr, d_ptr, dmin_ptr, N, stride_qs, stride_sb, SB_SPLIT, N_SB,
                BLOCK_N: tl.constexpr, STAGES: tl.constexpr = 1):
    """Layout B': word 4s + j of a super-block holds element 32s + 4e + j in nibble e."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = offs_n.to(tl.int64)
    s3 = tl.arange(0, 8)[None, :, None]
    j3 = tl.arange(0, 4)[None, None, :]
    r3 = rows[:, None, None]
    m3 = mask_n[:, None, None]
    start = pid_k * SB_SPLIT
    stop = tl.minimum(start + SB_SPLIT, N_SB)
    res = tl.zeros((BLOCK_N, 8, 1), dtype=tl.float32)
    for sb in tl.range(start, stop, num_stages=STAGES):
        words = tl.load(qs_ptr + r3 * stride_qs + sb * 32 + 4 * s3 + j3, mask=m3, other=0)  # [BN, 8, 4]
        sc8 = tl.load(sc_ptr + rows * stride_sb + sb, mask=mask_n, other=0)[:, None, None]
        mn8 = tl.load(mn_ptr + rows * stride_sb + sb, mask=mask_n, other=0)[:, None, None]
        d = tl.load(d_ptr + rows * stride_sb + sb, mask=mask_n, other=0.0).to(tl.float32)[:, None, None]
        dmin = tl.load(dmin_ptr + rows * stride_sb + sb, mask=mask_n, other=0.0).to(tl.float32)[:, None, None]
        sc = (((sc8 >> (8 * s3)) & 0xFF).to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
        mn = (((mn8 >> (8 * s3)) & 0xFF).to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
        t = tl.zeros((BLOCK_N, 8, 4), dtype=tl.float32)
        xj = tl.zeros((1, 8, 1), dtype=tl.float32)
        for e in tl.static_range(8):
            xe = tl.load(x_ptr + sb * 256 + 32 * s3 + 4 * e + j3).to(tl.float32)  # [1, 8, 4]
            t += _nib19(words, e) * xe
            xj += tl.sum(xe, axis=2, keep_dims=True)
        # sum_j (d*sc*q - dmin*mn) x = 16 d sc (t - X) - dmin mn X, with t = sum (1 + q/16) x.
        tj = tl.sum(t, axis=2, keep_dims=True)
        res += (16.0 * d * sc) * (tj - xj) - (dmin * mn) * xj
    total = tl.sum(tl.sum(res, axis=2), axis=1)
    tl.store(out_ptr + pid_k * N + offs_n, total.to(out_ptr.dtype.element_ty), mask=mask_n)


@triton.jit
def q4k_gemv_v3f(x_ptr, out_ptr, part_ptr, count_ptr, SPLIT, qs_ptr, sc_ptr, mn_ptr, d_ptr, dmin_ptr, N, stride_qs, stride_sb, SB_SPLIT, N_SB,
                BLOCK_N: tl.constexpr, STAGES: tl.constexpr = 1):
    """Layout B': word 4s + j of a super-block holds element 32s + 4e + j in nibble e."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = offs_n.to(tl.int64)
    s3 = tl.arange(0, 8)[None, :, None]
    j3 = tl.arange(0, 4)[None, None, :]
    r3 = rows[:, None, None]
    m3 = mask_n[:, None, None]
    start = pid_k * SB_SPLIT
    stop = tl.minimum(start + SB_SPLIT, N_SB)
    res = tl.zeros((BLOCK_N, 8, 1), dtype=tl.float32)
    for sb in tl.range(start, stop, num_stages=STAGES):
        words = tl.load(qs_ptr + r3 * stride_qs + sb * 32 + 4 * s3 + j3, mask=m3, other=0)  # [BN, 8, 4]
        sc8 = tl.load(sc_ptr + rows * stride_sb + sb, mask=mask_n, other=0)[:, None, None]
        mn8 = tl.load(mn_ptr + rows * stride_sb + sb, mask=mask_n, other=0)[:, None, None]
        d = tl.load(d_ptr + rows * stride_sb + sb, mask=mask_n, other=0.0).to(tl.float32)[:, None, None]
        dmin = tl.load(dmin_ptr + rows * stride_sb + sb, mask=mask_n, other=0.0).to(tl.float32)[:, None, None]
        sc = (((sc8 >> (8 * s3)) & 0xFF).to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
        mn = (((mn8 >> (8 * s3)) & 0xFF).to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
        t = tl.zeros((BLOCK_N, 8, 4), dtype=tl.float32)
        xj = tl.zeros((1, 8, 1), dtype=tl.float32)
        for e in tl.static_range(8):
            xe = tl.load(x_ptr + sb * 256 + 32 * s3 + 4 * e + j3).to(tl.float32)  # [1, 8, 4]
            t += _nib19(words, e) * xe
            xj += tl.sum(xe, axis=2, keep_dims=True)
        # sum_j (d*sc*q - dmin*mn) x = 16 d sc (t - X) - dmin mn X, with t = sum (1 + q/16) x.
        tj = tl.sum(t, axis=2, keep_dims=True)
        res += (16.0 * d * sc) * (tj - xj) - (dmin * mn) * xj
    total = tl.sum(tl.sum(res, axis=2), axis=1)
    # Deterministic split-K in one kernel: every split stores its partials, the last to arrive adds them in
    # split order and resets the row block's counter for the next call.
    tl.store(part_ptr + pid_k * N + offs_n, total, mask=mask_n)
    tl.debug_barrier()
    arrived = tl.atomic_add(count_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
    if arrived == SPLIT - 1:
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for k in range(0, SPLIT):
            acc += tl.load(part_ptr + k * N + offs_n, mask=mask_n, other=0.0, cache_modifier=".cg")
        tl.store(out_ptr + offs_n, acc.to(out_ptr.dtype.element_ty), mask=mask_n)
        tl.atomic_xchg(count_ptr + pid_n, 0, sem="relaxed", scope="gpu")


@triton.jit
def q4k_load_only(x_ptr, out_ptr, qs_ptr, sc_ptr, mn_ptr, d_ptr, dmin_ptr, N, stride_qs, stride_sb, SB_SPLIT, N_SB,
                  BLOCK_N: tl.constexpr, STAGES: tl.constexpr = 1):
    """The loads of v3 (words, scales) with a trivial reduction: the access pattern's bandwidth ceiling."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = offs_n.to(tl.int64)
    s3 = tl.arange(0, 8)[None, :, None]
    j3 = tl.arange(0, 4)[None, None, :]
    r3 = rows[:, None, None]
    m3 = mask_n[:, None, None]
    start = pid_k * SB_SPLIT
    stop = tl.minimum(start + SB_SPLIT, N_SB)
    acc = tl.zeros((BLOCK_N, 8, 4), dtype=tl.int32)
    acc2 = tl.zeros((BLOCK_N,), dtype=tl.int64)
    for sb in tl.range(start, stop, num_stages=STAGES):
        words = tl.load(qs_ptr + r3 * stride_qs + sb * 32 + 4 * s3 + j3, mask=m3, other=0)
        sc8 = tl.load(sc_ptr + rows * stride_sb + sb, mask=mask_n, other=0)
        mn8 = tl.load(mn_ptr + rows * stride_sb + sb, mask=mask_n, other=0)
        acc ^= words
        acc2 ^= sc8 ^ mn8
    total = tl.xor_sum(tl.xor_sum(tl.xor_sum(acc, axis=2), axis=1), axis=0) + tl.xor_sum(acc2, axis=0)
    tl.store(out_ptr + pid_k * N + offs_n, (total + offs_n * 0).to(out_ptr.dtype.element_ty), mask=mask_n & (total == 12345))

CONST_q4k_gemv_v3 = {'STAGES': 3}
CONST_q4k_load_only = {'STAGES': 3}
CONST_q4k_gemv_v3f = {'STAGES': 3}


@triton.jit
def q4k_gemv_v3t(x_ptr, out_ptr, buf_ptr, N, N_SB, SB_SPLIT, BLOCK_N: tl.constexpr, LOAD_ONLY: tl.constexpr):
    """Tile-major: per (row group, super-block) one chunk of BLOCK_N * 37 int32: qs [BN, 32], sc [BN] i64,
    mn [BN] i64, d [BN] f16, dmin [BN] f16."""
    CH: tl.constexpr = BLOCK_N * 37
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rl = tl.arange(0, BLOCK_N)
    s3 = tl.arange(0, 8)[None, :, None]
    j3 = tl.arange(0, 4)[None, None, :]
    r3 = rl[:, None, None]
    start = pid_k * SB_SPLIT
    stop = tl.minimum(start + SB_SPLIT, N_SB)
    res = tl.zeros((BLOCK_N, 8, 1), dtype=tl.float32)
    acc = tl.zeros((BLOCK_N, 8, 4), dtype=tl.int32)
    for sb in range(start, stop):
        chunk = buf_ptr + (pid_n.to(tl.int64) * N_SB + sb) * CH
        words = tl.load(chunk + r3 * 32 + 4 * s3 + j3)  # [BN, 8, 4]
        sc8 = tl.load((chunk + BLOCK_N * 32).to(tl.pointer_type(tl.int64)) + rl)[:, None, None]
        mn8 = tl.load((chunk + BLOCK_N * 34).to(tl.pointer_type(tl.int64)) + rl)[:, None, None]
        if LOAD_ONLY:
            acc ^= words ^ (sc8 ^ mn8).to(tl.int32)
        else:
            d = tl.load((chunk + BLOCK_N * 36).to(tl.pointer_type(tl.float16)) + rl).to(tl.float32)[:, None, None]
            dmin = tl.load((chunk + BLOCK_N * 36).to(tl.pointer_type(tl.float16)) + BLOCK_N + rl).to(tl.float32)[:, None, None]
            sc = (((sc8 >> (8 * s3)) & 0xFF).to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
            mn = (((mn8 >> (8 * s3)) & 0xFF).to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
            t = tl.zeros((BLOCK_N, 8, 4), dtype=tl.float32)
            xj = tl.zeros((1, 8, 1), dtype=tl.float32)
            for e in tl.static_range(8):
                xe = tl.load(x_ptr + sb * 256 + 32 * s3 + 4 * e + j3).to(tl.float32)  # [1, 8, 4]
                t += _nib19(words, e) * xe
                xj += tl.sum(xe, axis=2, keep_dims=True)
            tj = tl.sum(t, axis=2, keep_dims=True)
            res += (16.0 * d * sc) * (tj - xj) - (dmin * mn) * xj
    if LOAD_ONLY:
        total = tl.sum(tl.sum(acc, axis=2), axis=1).to(tl.float32)
        tl.store(out_ptr + pid_k * N + offs_n, total, mask=mask_n & (total == 12345.0))
    else:
        total = tl.sum(tl.sum(res, axis=2), axis=1)
        tl.store(out_ptr + pid_k * N + offs_n, total.to(out_ptr.dtype.element_ty), mask=mask_n)


@triton.jit
def _v3_sb(words, sc8, mn8, d, dmin, x_ptr, sb, s3, j3):
    """One super-block's contribution [BN, 8, 1] (layout B')."""
    sc = (((sc8 >> (8 * s3)) & 0xFF).to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
    mn = (((mn8 >> (8 * s3)) & 0xFF).to(tl.int32) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
    t = tl.zeros(words.shape, dtype=tl.float32)
    xj = tl.zeros((1, 8, 1), dtype=tl.float32)
    for e in tl.static_range(8):
        xe = tl.load(x_ptr + sb * 256 + 32 * s3 + 4 * e + j3).to(tl.float32)  # [1, 8, 4]
        t += _nib19(words, e) * xe
        xj += tl.sum(xe, axis=2, keep_dims=True)
    tj = tl.sum(t, axis=2, keep_dims=True)
    return (16.0 * d * sc) * (tj - xj) - (dmin * mn) * xj


@triton.jit
def q4k_gemv_v3tp(x_ptr, out_ptr, buf_ptr, N, N_SB, SB_SPLIT, BLOCK_N: tl.constexpr, LOAD_ONLY: tl.constexpr):
    """v3t with the next super-block's chunk loaded into registers before this one is multiplied."""
    CH: tl.constexpr = BLOCK_N * 37
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rl = tl.arange(0, BLOCK_N)
    s3 = tl.arange(0, 8)[None, :, None]
    j3 = tl.arange(0, 4)[None, None, :]
    r3 = rl[:, None, None]
    start = pid_k * SB_SPLIT
    stop = tl.minimum(start + SB_SPLIT, N_SB)
    res = tl.zeros((BLOCK_N, 8, 1), dtype=tl.float32)
    chunk = buf_ptr + (pid_n.to(tl.int64) * N_SB + start) * CH
    words = tl.load(chunk + r3 * 32 + 4 * s3 + j3)
    sc8 = tl.load((chunk + BLOCK_N * 32).to(tl.pointer_type(tl.int64)) + rl)[:, None, None]
    mn8 = tl.load((chunk + BLOCK_N * 34).to(tl.pointer_type(tl.int64)) + rl)[:, None, None]
    dd = (chunk + BLOCK_N * 36).to(tl.pointer_type(tl.float16))
    d = tl.load(dd + rl).to(tl.float32)[:, None, None]
    dmin = tl.load(dd + BLOCK_N + rl).to(tl.float32)[:, None, None]
    for sb in range(start, stop):
        lim = tl.where(sb + 1 < stop, BLOCK_N, 0)
        more = rl < lim
        nxt = chunk + CH
        words_n = tl.load(nxt + r3 * 32 + 4 * s3 + j3, mask=(r3 < lim) & (s3 < 8) & (j3 < 4), other=0)
        sc8_n = tl.load((nxt + BLOCK_N * 32).to(tl.pointer_type(tl.int64)) + rl, mask=more, other=0)[:, None, None]
        mn8_n = tl.load((nxt + BLOCK_N * 34).to(tl.pointer_type(tl.int64)) + rl, mask=more, other=0)[:, None, None]
        ddn = (nxt + BLOCK_N * 36).to(tl.pointer_type(tl.float16))
        d_n = tl.load(ddn + rl, mask=more, other=0.0).to(tl.float32)[:, None, None]
        dmin_n = tl.load(ddn + BLOCK_N + rl, mask=more, other=0.0).to(tl.float32)[:, None, None]
        res += _v3_sb(words, sc8, mn8, d, dmin, x_ptr, sb, s3, j3)
        words, sc8, mn8, d, dmin, chunk = words_n, sc8_n, mn8_n, d_n, dmin_n, nxt
    total = tl.sum(tl.sum(res, axis=2), axis=1)
    tl.store(out_ptr + pid_k * N + offs_n, total.to(out_ptr.dtype.element_ty), mask=mask_n)


@triton.jit
def q4k_gemv_v3p(x_ptr, out_ptr, qs_ptr, sc_ptr, mn_ptr, d_ptr, dmin_ptr, N, stride_qs, stride_sb, SB_SPLIT, N_SB,
                 BLOCK_N: tl.constexpr, STAGES: tl.constexpr = 1):
    """Row-major layout B' with register prefetch of the next super-block."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = offs_n.to(tl.int64)
    s3 = tl.arange(0, 8)[None, :, None]
    j3 = tl.arange(0, 4)[None, None, :]
    r3 = rows[:, None, None]
    m3 = mask_n[:, None, None]
    start = pid_k * SB_SPLIT
    stop = tl.minimum(start + SB_SPLIT, N_SB)
    res = tl.zeros((BLOCK_N, 8, 1), dtype=tl.float32)
    qrow = qs_ptr + r3 * stride_qs + 4 * s3 + j3
    words = tl.load(qrow + start * 32, mask=m3, other=0)
    sc8 = tl.load(sc_ptr + rows * stride_sb + start, mask=mask_n, other=0)[:, None, None]
    mn8 = tl.load(mn_ptr + rows * stride_sb + start, mask=mask_n, other=0)[:, None, None]
    d = tl.load(d_ptr + rows * stride_sb + start, mask=mask_n, other=0.0).to(tl.float32)[:, None, None]
    dmin = tl.load(dmin_ptr + rows * stride_sb + start, mask=mask_n, other=0.0).to(tl.float32)[:, None, None]
    for sb in range(start, stop):
        mn_ = offs_n < tl.where(sb + 1 < stop, N, 0)
        words_n = tl.load(qrow + (sb + 1) * 32, mask=(r3 < tl.where(sb + 1 < stop, N, 0)) & (s3 < 8) & (j3 < 4), other=0)
        sc8_n = tl.load(sc_ptr + rows * stride_sb + sb + 1, mask=mn_, other=0)[:, None, None]
        mn8_n = tl.load(mn_ptr + rows * stride_sb + sb + 1, mask=mn_, other=0)[:, None, None]
        d_n = tl.load(d_ptr + rows * stride_sb + sb + 1, mask=mn_, other=0.0).to(tl.float32)[:, None, None]
        dmin_n = tl.load(dmin_ptr + rows * stride_sb + sb + 1, mask=mn_, other=0.0).to(tl.float32)[:, None, None]
        res += _v3_sb(words, sc8, mn8, d, dmin, x_ptr, sb, s3, j3)
        words, sc8, mn8, d, dmin = words_n, sc8_n, mn8_n, d_n, dmin_n
    total = tl.sum(tl.sum(res, axis=2), axis=1)
    tl.store(out_ptr + pid_k * N + offs_n, total.to(out_ptr.dtype.element_ty), mask=mask_n)
