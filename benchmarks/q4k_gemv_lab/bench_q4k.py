"""Lab bench: Q4_K M=1 GEMV variants vs packed_matmul on 7B shapes (H100/H200)."""
import itertools, sys, time
sys.path.insert(0, "build/lab"); sys.path.insert(0, ".")
import torch, triton
from gguf.constants import GGMLQuantizationType as Q
from benchmarks.gpu_common import copy_bandwidth_gbs, random_raw, time_us
from benchmarks.gpu_linear import num_copies
from rocmforge.kernels.triton.packed_matmul import packed_matmul, split_outputs, sum_splits, _num_sms
from rocmforge.layers.packed_weight import pack, _nibbles
import q4k_lab as L

import os
SHAPES = [tuple(map(int, t.split("x"))) for t in os.environ.get("SHAPES", "4096x4096,11008x4096,4096x11008,12288x4096").split(",")]


def to_b(weight):
    """Current planes -> (qs in layout B', sc64, mn64, d, dmin)."""
    n, k = weight.shape
    qs, sc, mn, d, dmin = weight.planes
    q = _nibbles(qs, n, k)  # [n, sb, 8 (s), 32 (w)] element 32s + w
    q = q.view(n, k // 256, 8, 8, 4)  # element 32s + 4e + j -> [s, e, j]
    shifts = (4 * torch.arange(8, device=qs.device, dtype=torch.int32)).view(1, 1, 1, 8, 1)
    words = (q << shifts).sum(dim=3, dtype=torch.int64).to(torch.int64)
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32).reshape(n, k // 8)
    return words.contiguous(), sc.contiguous().view(torch.int64), mn.contiguous().view(torch.int64), d.contiguous(), dmin.contiguous()


def to_a(weight):
    qs, sc, mn, d, dmin = weight.planes
    return qs.contiguous(), sc.contiguous().view(torch.int64), mn.contiguous().view(torch.int64), d.contiguous(), dmin.contiguous()


COUNTS = {}


def run(kernel, x, planes, n, k, bn, warps, per_sm, stages=1, fused=False):
    n_sb = k // 256
    grid_n = triton.cdiv(n, bn)
    split = 1
    while grid_n * split * 2 <= per_sm * _num_sms(x.device) and n_sb // (split * 2) >= 1:
        split *= 2
    sb_split = triton.cdiv(n_sb, split)
    split = triton.cdiv(n_sb, sb_split)
    qs, sc, mn, d, dmin = planes
    if fused:
        if x.device not in COUNTS:
            COUNTS[x.device] = torch.zeros(1 << 16, dtype=torch.int32, device=x.device)
        out = torch.empty((1, n), dtype=x.dtype, device=x.device)
        part = torch.empty((split, n), dtype=torch.float32, device=x.device)
        kernel[(grid_n, split)](x, out, part, COUNTS[x.device], split, qs, sc, mn, d, dmin, n, qs.stride(0), d.stride(0), sb_split, n_sb, BLOCK_N=bn, STAGES=stages, num_warps=warps)
        return out
    out, target = split_outputs(1, n, split, x.dtype, x.device)
    kernel[(grid_n, split)](x, target, qs, sc, mn, d, dmin, n, qs.stride(0), d.stride(0), sb_split, n_sb, BLOCK_N=bn, STAGES=stages, num_warps=warps)
    sum_splits(target, out, split)
    return out


def main():
    bw = copy_bandwidth_gbs()
    print(f"card: {torch.cuda.get_device_name()}, copy bandwidth {bw:.0f} GB/s", flush=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    variants = {"v3s1": (L.q4k_gemv_v3, to_b, 1, False), "v3s3": (L.q4k_gemv_v3, to_b, 3, False),
                "v3s4": (L.q4k_gemv_v3, to_b, 4, False), "v3f3": (L.q4k_gemv_v3f, to_b, 3, True),
                "v3f4": (L.q4k_gemv_v3f, to_b, 4, True),
                "load1": (L.q4k_load_only, to_b, 1, False), "load3": (L.q4k_load_only, to_b, 3, False)}
    configs = list(itertools.product((32, 64, 128), (2, 4, 8), (2, 4, 8)))
    totals, total_bytes = {}, 0
    for n, k in SHAPES:
        raw = random_raw(Q.Q4_K, n, k, gen)
        nbytes = raw.numel()
        total_bytes += nbytes
        copies = [pack(raw.clone(), Q.Q4_K, (n, k)) for _ in range(num_copies(nbytes))]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        ref = packed_matmul(x, copies[0]).float()
        times = {"packed_matmul": time_us(lambda i: packed_matmul(x, copies[i % len(copies)]), 20, 10)}
        for vname, (kern, conv, stages, fused) in variants.items():
            pl = [conv(c) for c in copies]
            for bn, w, ps in configs:
                name = f"{vname} bn={bn} w={w} sm={ps}"
                try:
                    got = run(kern, x, pl[0], n, k, bn, w, ps, stages, fused).float()
                except Exception as exc:  # noqa
                    print(name, "failed", type(exc).__name__, str(exc)[:200]); continue
                err = ((got - ref).norm() / ref.norm()).item()
                if err > 1e-2 and not vname.startswith("load"):
                    print(name, "WRONG", err); continue
                times[name] = time_us(lambda i: run(kern, x, pl[i % len(pl)], n, k, bn, w, ps, stages, fused), 20, 10)
        for name, us in times.items():
            totals[name] = totals.get(name, 0.0) + us
        best = sorted(times.items(), key=lambda t: t[1])[:3]
        print(f"{n}x{k} ({nbytes/1e6:.1f} MB): packed_matmul {times['packed_matmul']:.1f} us ({nbytes/times['packed_matmul']/1e3/bw:.0%}); best: "
              + ", ".join(f"{nm} {us:.1f} us ({nbytes/us/1e3/bw:.0%})" for nm, us in best), flush=True)
    print("summed over shapes:")
    ranked = sorted(totals.items(), key=lambda t: t[1])
    for prefix in [v for v in variants]:
        best = [(nm, us) for nm, us in ranked if nm.startswith(prefix + " ")][:1]
        for nm, us in best:
            print(f"  best {nm:<28} {us:8.1f} us {total_bytes/us/1e3:6.0f} GB/s {total_bytes/us/1e3/bw:6.1%}")
    for name, us in ranked[:8]:
        print(f"  {name:<28} {us:8.1f} us {total_bytes/us/1e3:6.0f} GB/s {total_bytes/us/1e3/bw:6.1%}")
    print(f"  {'packed_matmul':<28} {totals['packed_matmul']:8.1f} us {total_bytes/totals['packed_matmul']/1e3/bw:6.1%}")


if __name__ == "__main__":
    main()
