"""Lab: Q4_K / Q6_K GEMV with x in bf16 against x in float32 (no per-weight conversion), and the TMA form."""
import itertools
import sys

import torch
from gguf.constants import GGMLQuantizationType as Q

sys.path.insert(0, "build/lab")
from benchmarks.gpu_common import copy_bandwidth_gbs, random_raw, time_us
from benchmarks.gpu_linear import num_copies
from rocmforge.kernels.triton.packed_gemv import CONFIGS, GemvConfig, packed_gemv
from rocmforge.layers.packed_weight import TILE_ROWS, pack
from tma_q4k import descriptors, q4k_tma_gemv

SHAPES = [(4096, 4096), (12288, 4096), (22016, 4096), (4096, 11008)]
SWEEP = [GemvConfig(TILE_ROWS, *c) for c in itertools.product((4, 8, 16), (1, 2, 4), (1, 2))]
quick = "--quick" in sys.argv
copy = copy_bandwidth_gbs()
print(torch.cuda.get_device_name(), f"copy {copy:.0f} GB/s")
gen = torch.Generator(device="cuda").manual_seed(0)
for qtype in (Q.Q4_K, Q.Q6_K):
    totals: dict[str, float] = {}
    nbytes = 0
    for n, k in SHAPES:
        raw = random_raw(qtype, n, k, gen)
        packs = [pack(raw.clone(), qtype, (n, k)) for _ in range(num_copies(raw.numel()))]
        nbytes += raw.numel()
        xb = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        xf = xb.float()
        ref = packed_gemv(xf, packs[0]).float()
        variants = {}
        variants["committed bf16"] = lambda i: packed_gemv(xb, packs[i % len(packs)])
        variants["committed f32"] = lambda i: packed_gemv(xf, packs[i % len(packs)], out_dtype=torch.bfloat16)
        if not quick:
            for c in SWEEP:
                variants[f"f32 sm={c.programs_per_sm} w={c.num_warps} r={c.rows_per_thread}"] = (
                    lambda i, c=c: packed_gemv(xf, packs[i % len(packs)], out_dtype=torch.bfloat16, config=c))
        if qtype == Q.Q4_K:
            descs = [descriptors(p) for p in packs]
            for st, sm, w in itertools.product((2, 3, 4), (2, 4, 8), (2, 4)):
                for xn, x in (("bf16", xb), ("f32", xf)):
                    got = q4k_tma_gemv(x, packs[0], descs[0], sm, w, st, torch.bfloat16).float()
                    err = ((got - ref).norm() / ref.norm()).item()
                    assert err < 1e-2, (st, sm, w, err)
                    variants[f"tma {xn} st={st} sm={sm} w={w}"] = (
                        lambda i, x=x, st=st, sm=sm, w=w: q4k_tma_gemv(x, packs[i % len(packs)], descs[i % len(packs)], sm, w, st, torch.bfloat16))
        for name, fn in variants.items():
            got = fn(0).float()
            err = ((got - ref).norm() / ref.norm()).item()
            assert err < 1e-2, (name, err)
            t = time_us(fn, 20, 10)
            totals[name] = totals.get(name, 0.0) + t
            if name.startswith("committed"):
                print(f"  {qtype.name} {n}x{k} {name}: {t:.1f} us")
    ranked = sorted(totals.items(), key=lambda kv: kv[1])
    print(f"{qtype.name}: 4 shapes, {nbytes/1e6:.1f} MB")
    for name in ["committed bf16", "committed f32"] + [r[0] for r in ranked[:8]]:
        t = totals[name]
        print(f"  {name:34s} {t:7.1f} us  {nbytes / t / 1e3:6.0f} GB/s  {100 * nbytes / t / 1e3 / copy:5.1f}% of copy")
