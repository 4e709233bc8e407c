"""Q6_K in 64-row column tiles (lab): ql words [T, K/32, 64, 4] (word j nibble e = low 4 bits of element 4e + j
of the sub-block), qh int16 [T, K/32, 64, 4] (halfword j bits 2e..2e+1 = top 2 bits of element 4e + j), sc int8
[T, K/32, 64, 2] (the two 16-value halves: e < 4 and e >= 4), d f16 [T, K/256, 64]."""
import torch
import triton
import triton.language as tl


@triton.jit
def _q6(ql, qh, E: tl.constexpr):
    """64 + q of element 4E + j as a float: the 4 low bits to mantissa bits 17..20, the 2 top bits to 21..22."""
    low = ql << (17 - 4 * E) if 4 * E <= 17 else ql >> (4 * E - 17)
    top = qh << (21 - 2 * E)
    return ((low & 0x001E0000) | (top & 0x00600000) | 0x42800000).to(tl.float32, bitcast=True)


@triton.jit(do_not_specialize=["SPLIT_K", "ONE"])
def q6k_tile_gemv(x_ptr, out_ptr, ql_ptr, qh_ptr, sc_ptr, d_ptr, N, K, SPLIT_K, ONE, TQ: tl.constexpr):
    CPT: tl.constexpr = 64 // TQ
    t = tl.program_id(0).to(tl.int64)
    pid_k = tl.program_id(1)
    cc = tl.arange(0, CPT)[:, None, None, None]
    g = tl.arange(0, 8)[None, :, None, None]
    cq = tl.arange(0, TQ)[None, None, :, None]
    j = tl.arange(0, 4)[None, None, None, :]
    c = cc * TQ + cq
    n_super = K // 256
    per_split = tl.cdiv(n_super, SPLIT_K)
    start = pid_k * per_split
    stop = tl.minimum(start + per_split, n_super)
    word_off = (g * 64 + c) * 4 + j
    sc_off = (g * 64 + c) * 2 * ONE + 0 * j
    row_off = c * ONE + 0 * (g + j)
    x_off = 32 * g + j
    acc = tl.zeros((CPT, 8, TQ, 1), dtype=tl.float32)
    for sb in range(start, stop):
        sub_base = (t * (K // 32) + sb * 8) * 64
        ql = tl.load(ql_ptr + sub_base * 4 + word_off)
        qh = tl.load(qh_ptr + sub_base * 4 + word_off).to(tl.int32)
        sc0 = tl.load(sc_ptr + sub_base * 2 + sc_off).to(tl.float32)
        sc1 = tl.load(sc_ptr + sub_base * 2 + sc_off + 1).to(tl.float32)
        d = tl.load(d_ptr + (t * n_super + sb) * 64 + row_off).to(tl.float32)
        xe = tl.load(x_ptr + sb * 256 + x_off).to(tl.float32)
        dot0 = _q6(ql, qh, 0) * xe
        xs0 = xe
        for e in tl.static_range(1, 4):
            xe = tl.load(x_ptr + sb * 256 + x_off + 4 * e).to(tl.float32)
            dot0 += _q6(ql, qh, e) * xe
            xs0 += xe
        xe = tl.load(x_ptr + sb * 256 + x_off + 16).to(tl.float32)
        dot1 = _q6(ql, qh, 4) * xe
        xs1 = xe
        for e in tl.static_range(5, 8):
            xe = tl.load(x_ptr + sb * 256 + x_off + 4 * e).to(tl.float32)
            dot1 += _q6(ql, qh, e) * xe
            xs1 += xe
        # sum d sc (q - 32) x = d sc (sum (64 + q) x - 96 X) per 16-value half.
        h0 = tl.sum(dot0 - 96.0 * xs0, axis=3, keep_dims=True)
        h1 = tl.sum(dot1 - 96.0 * xs1, axis=3, keep_dims=True)
        dsc0 = tl.max(d * sc0, axis=3, keep_dims=True)
        dsc1 = tl.max(d * sc1, axis=3, keep_dims=True)
        acc += dsc0 * h0 + dsc1 * h1
    total = tl.sum(tl.sum(acc, axis=3), axis=1)
    rows = t * 64 + tl.arange(0, CPT)[:, None] * TQ + tl.arange(0, TQ)[None, :]
    tl.store(out_ptr + pid_k * N + rows, total.to(out_ptr.dtype.element_ty), mask=rows < N)


def to_tiles(planes, n, k):
    """Current row-major Q6_K planes -> the lab's column tiles (N a multiple of 64)."""
    ql, qh, sc, d = planes
    nsb = k // 256
    sh4 = 4 * torch.arange(8, device=ql.device, dtype=torch.int32)
    low = ((ql.view(n, nsb, 32, 1) >> sh4) & 0xF).transpose(-1, -2)  # [n, sb, s, w]: element 32s + w
    sh2 = 2 * torch.arange(8, device=ql.device, dtype=torch.int32)
    top = ((qh.view(n, nsb, 32, 1).to(torch.int32) >> sh2) & 3).transpose(-1, -2)
    low = low.reshape(n, k // 32, 8, 4)  # [n, g, e, j]
    top = top.reshape(n, k // 32, 8, 4)
    words = torch.zeros(n, k // 32, 4, dtype=torch.int32, device=ql.device)
    halves = torch.zeros(n, k // 32, 4, dtype=torch.int32, device=ql.device)
    for e in range(8):
        words |= low[:, :, e, :] << (4 * e)
        halves |= top[:, :, e, :] << (2 * e)
    halves = halves.to(torch.int16)  # bit 15 may be set: int32 -> int16 keeps the low 16 bits
    t = n // 64

    def tile(p):
        return p.view(t, 64, *p.shape[1:]).transpose(1, 2).contiguous()

    return tile(words), tile(halves), tile(sc.view(n, k // 32, 2)), tile(d)


def run(x, tp, n, k, tq, warps, per_sm, out_dtype=None):
    from rocmforge.kernels.triton.packed_matmul import _auto_split, split_outputs, sum_splits
    grid_n = triton.cdiv(n, 64)
    split = _auto_split(grid_n, k // 256, per_sm, x.device, 1)
    out, target = split_outputs(1, n, split, out_dtype or x.dtype, x.device)
    q6k_tile_gemv[(grid_n, split)](x, target, *tp, n, k, split, 1, TQ=tq, num_warps=warps)
    sum_splits(target, out, split)
    return out
