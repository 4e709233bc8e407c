"""v5 (layout B') vs committed packed_gemv, Q4_K M=1, 7B shapes."""
import itertools, os, sys
sys.path.insert(0, "build/lab"); sys.path.insert(0, ".")
import torch, triton
from gguf.constants import GGMLQuantizationType as Q
from benchmarks.gpu_common import copy_bandwidth_gbs, random_raw, time_us
from benchmarks.gpu_linear import num_copies
from rocmforge.kernels.triton.packed_gemv import packed_gemv
from rocmforge.kernels.triton.packed_matmul import split_outputs, sum_splits, _num_sms
from rocmforge.layers.packed_weight import pack
from bench_q4k import to_b
import q4k_v5 as V

SHAPES = [(4096, 4096), (12288, 4096), (22016, 4096), (4096, 11008)]


def run(x, planes, n, k, bn, w, per_sm):
    n_sb = k // 256
    grid_n = triton.cdiv(n, bn)
    split = 1
    while grid_n * split * 2 <= per_sm * _num_sms(x.device) and n_sb // (split * 2) >= 1:
        split *= 2
    sb_split = triton.cdiv(n_sb, split)
    split = triton.cdiv(n_sb, sb_split)
    qs, sc, mn, d, dmin = planes
    out, target = split_outputs(1, n, split, x.dtype, x.device)
    V.q4k_v5[(grid_n, split)](x, target, qs, sc, mn, d, dmin, n, qs.stride(0), 0, d.stride(0), sb_split, n_sb,
                              BLOCK_N=bn, PREFETCH=0, num_warps=w)
    sum_splits(target, out, split)
    return out


def run_t(x, buf, n, k, bn, w, per_sm):
    n_sb = k // 256
    grid_n = n // bn
    split = 1
    while grid_n * split * 2 <= per_sm * _num_sms(x.device) and n_sb // (split * 2) >= 1:
        split *= 2
    sb_split = triton.cdiv(n_sb, split)
    split = triton.cdiv(n_sb, sb_split)
    out, target = split_outputs(1, n, split, x.dtype, x.device)
    V.q4k_v5t[(grid_n, split)](x, target, buf, n, n_sb, sb_split, BLOCK_N=bn, num_warps=w)
    sum_splits(target, out, split)
    return out


def main():
    bw = copy_bandwidth_gbs()
    print(f"card: {torch.cuda.get_device_name()}, copy bandwidth {bw:.0f} GB/s", flush=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    configs = list(itertools.product((32, 64, 128), (2, 4), (4, 8, 16)))
    totals, total_bytes = {}, 0
    for n, k in SHAPES:
        raw = random_raw(Q.Q4_K, n, k, gen)
        nbytes = raw.numel()
        total_bytes += nbytes
        copies = [pack(raw.clone(), Q.Q4_K, (n, k)) for _ in range(num_copies(nbytes))]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        ref = copies[0].dequantize(torch.float32) @ x.float().T
        ref = ref.T
        times = {"committed": time_us(lambda i: packed_gemv(x, copies[i % len(copies)]), 20, 10)}
        pl = [to_b(c) for c in copies]
        for bn, w, ps in configs:
            if bn // (4 * w) < 1:
                continue
            name = f"v5 bn={bn} w={w} sm={ps}"
            got = run(x, pl[0], n, k, bn, w, ps).float()
            err = ((got - ref).norm() / ref.norm()).item()
            if err > 1e-2:
                print(name, "WRONG", err); continue
            times[name] = time_us(lambda i: run(x, pl[i % len(pl)], n, k, bn, w, ps), 20, 10)
        for bn, w, ps in configs:
            if bn // (4 * w) < 1:
                continue
            name = f"v5t bn={bn} w={w} sm={ps}"
            bufs = [V.to_tile(p, n, k, bn) for p in pl]
            got = run_t(x, bufs[0], n, k, bn, w, ps).float()
            err = ((got - ref).norm() / ref.norm()).item()
            if err > 1e-2:
                print(name, "WRONG", err); continue
            times[name] = time_us(lambda i: run_t(x, bufs[i % len(bufs)], n, k, bn, w, ps), 20, 10)
            del bufs
        for name, us in times.items():
            totals[name] = totals.get(name, 0.0) + us
        best = sorted(times.items(), key=lambda t: t[1])[:3]
        c = times["committed"]
        print(f"{n}x{k} ({nbytes/1e6:.1f} MB): committed {c:.1f} us ({nbytes/c/1e3/bw:.0%}); best: "
              + ", ".join(f"{nm} {us:.1f} us ({nbytes/us/1e3/bw:.0%})" for nm, us in best), flush=True)
    ranked = sorted(totals.items(), key=lambda t: t[1])
    for name, us in ranked[:4] + [r for r in ranked if r[0].startswith('v5t')][:3] + [("committed", totals["committed"])]:
        print(f"  {name:<28} {us:8.1f} us {total_bytes/us/1e3:6.0f} GB/s {total_bytes/us/1e3/bw:6.1%}")


if __name__ == "__main__":
    main()
