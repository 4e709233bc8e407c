"""Timing only: tile-major Q4_K GEMV / load-only vs the row-major v3 and load-only (random bytes)."""
import itertools, os, sys
sys.path.insert(0, "build/lab"); sys.path.insert(0, ".")
import torch, triton
from benchmarks.gpu_common import copy_bandwidth_gbs, time_us
from benchmarks.gpu_linear import num_copies
from rocmforge.kernels.triton.packed_matmul import split_outputs, sum_splits, _num_sms
import q4k_lab as L

SHAPES = [(4096, 4096), (12288, 4096), (22016, 4096), (4096, 11008)]


def split_for(grid_n, n_sb, per_sm, dev):
    split = 1
    while grid_n * split * 2 <= per_sm * _num_sms(dev) and n_sb // (split * 2) >= 1:
        split *= 2
    sb_split = triton.cdiv(n_sb, split)
    return triton.cdiv(n_sb, sb_split), sb_split


def main():
    bw = copy_bandwidth_gbs()
    print(f"card: {torch.cuda.get_device_name()}, copy bandwidth {bw:.0f} GB/s", flush=True)
    totals, total_bytes = {}, 0
    for n, k in SHAPES:
        n_sb = k // 256
        nbytes = n * n_sb * 144
        total_bytes += nbytes
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        times = {}
        for bn, w, ps in itertools.product((32, 64, 128), (2, 4, 8), (2, 4, 8)):
            G = triton.cdiv(n, bn)
            bufs = [torch.randint(-2**30, 2**30, (G * n_sb * bn * 37,), dtype=torch.int32, device="cuda") for _ in range(num_copies(nbytes))]
            for bi in bufs:  # plausible f16 scales: small positive numbers in the d/dmin slots
                v = bi.view(G * n_sb, bn * 37)
                v[:, bn * 36:] = torch.full((bn,), 0x2C002C00, dtype=torch.int32, device="cuda")
            split, sb_split = split_for(G, n_sb, ps, x.device)
            for vn, kern, lo in (("v3t", L.q4k_gemv_v3t, 0), ("loadT", L.q4k_gemv_v3t, 1), ("v3tp", L.q4k_gemv_v3tp, 0)):
                def call(i, lo=lo, bn=bn, w=w, kern=kern):
                    out, target = split_outputs(1, n, split, x.dtype, x.device)
                    kern[(G, split)](x, target, bufs[i % len(bufs)], n, n_sb, sb_split, BLOCK_N=bn, LOAD_ONLY=lo, num_warps=w)
                    sum_splits(target, out, split)
                    return out
                times[f"{vn} bn={bn} w={w} sm={ps}"] = time_us(call, 20, 10)
        import bench_q4k as BQ
        from gguf.constants import GGMLQuantizationType as Q
        from benchmarks.gpu_common import random_raw
        from rocmforge.layers.packed_weight import pack
        gen = torch.Generator(device="cuda").manual_seed(0)
        raw = random_raw(Q.Q4_K, n, k, gen)
        pl = [BQ.to_b(pack(raw.clone(), Q.Q4_K, (n, k))) for _ in range(num_copies(nbytes))]
        for bn, w, ps in itertools.product((32, 64, 128), (2, 4, 8), (2, 4, 8)):
            if (bn, w, ps) in ((64, 2, 8), (128, 4, 4), (64, 4, 8)):
                times[f"v3row bn={bn} w={w} sm={ps}"] = time_us(lambda i: BQ.run(L.q4k_gemv_v3, x, pl[i % len(pl)], n, k, bn, w, ps), 20, 10)
            times[f"v3p bn={bn} w={w} sm={ps}"] = time_us(lambda i: BQ.run(L.q4k_gemv_v3p, x, pl[i % len(pl)], n, k, bn, w, ps), 20, 10)
        for name, us in times.items():
            totals[name] = totals.get(name, 0.0) + us
        best = sorted(times.items(), key=lambda t: t[1])
        for pre in ("v3t", "loadT", "v3tp", "v3row", "v3p"):
            nm, us = [b for b in best if b[0].startswith(pre + " ")][0]
            print(f"{n}x{k}: best {nm} {us:.1f} us ({nbytes/us/1e3/bw:.0%})", flush=True)
    ranked = sorted(totals.items(), key=lambda t: t[1])
    for pre in ("v3t", "loadT", "v3tp", "v3row", "v3p"):
        for nm, us in [b for b in ranked if b[0].startswith(pre + " ")][:2]:
            print(f"  {nm:<28} {us:8.1f} us {total_bytes/us/1e3:6.0f} GB/s {total_bytes/us/1e3/bw:6.1%}")


if __name__ == "__main__":
    main()
