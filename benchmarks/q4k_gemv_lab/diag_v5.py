import itertools, sys; sys.path.insert(0, "build/lab"); sys.path.insert(0, ".")
import torch, triton
from gguf.constants import GGMLQuantizationType as Q
from benchmarks.gpu_common import copy_bandwidth_gbs, random_raw, time_us
from benchmarks.gpu_linear import num_copies
from rocmforge.kernels.triton.packed_matmul import split_outputs, sum_splits, _num_sms
from rocmforge.layers.packed_weight import pack
from bench_q4k import to_b
import q4k_v5 as V
bw = copy_bandwidth_gbs()
print(torch.cuda.get_device_name(), f"copy {bw:.0f} GB/s")
gen = torch.Generator(device="cuda").manual_seed(0)
def run(x, planes, n, k, bn, w, per_sm, pf, lo, two=True):
    n_sb = k // 256; grid_n = n // bn; split = 1
    while grid_n * split * 2 <= per_sm * _num_sms(x.device) and n_sb // (split * 2) >= 1:
        split *= 2
    sb_split = triton.cdiv(n_sb, split); split = triton.cdiv(n_sb, sb_split)
    qs, sc, mn, d, dmin = planes
    out, target = split_outputs(1, n, split, x.dtype, x.device)
    V.q4k_v5[(grid_n, split)](x, target, qs, sc, mn, d, dmin, n, qs.stride(0), 0, d.stride(0), sb_split, n_sb, BLOCK_N=bn, PREFETCH=pf, LOAD_ONLY=lo, num_warps=w)
    if two:
        sum_splits(target, out, split)
    return out
tot = {}; tb = 0
for n, k in [(12288, 4096), (22016, 4096), (4096, 11008)]:
    raw = random_raw(Q.Q4_K, n, k, gen); tb += raw.numel()
    pl = [to_b(pack(raw.clone(), Q.Q4_K, (n, k))) for _ in range(num_copies(raw.numel()))]
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    from rocmforge.kernels.triton.packed_gemv import packed_gemv
    cp = [pack(raw.clone(), Q.Q4_K, (n, k)) for _ in range(num_copies(raw.numel()))]
    tot["committed"] = tot.get("committed", 0) + time_us(lambda i: packed_gemv(x, cp[i % len(cp)]), 20, 10)
    del cp
    for (bn, w, ps), pf, lo in itertools.product(((64, 4, 8), (64, 2, 8), (128, 4, 16), (32, 2, 16), (64, 4, 16)), (0, 1), (0, 1)):
        key = f"bn={bn} w={w} sm={ps} prefetch={pf} load_only={lo}"
        tot[key] = tot.get(key, 0) + time_us(lambda i: run(x, pl[i % len(pl)], n, k, bn, w, ps, pf, lo), 20, 10)
for kk, us in sorted(tot.items(), key=lambda t: t[1]):
    print(f"{kk:<50} {us:7.1f} us {tb/us/1e3/bw:6.1%}")
