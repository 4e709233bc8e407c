"""Lab: tensor-core Q4_K GEMV variants against the committed packed_gemv (bf16 x), gpu_gemv-like 7B shapes."""
import itertools
import sys
import time

import torch
from gguf.constants import GGMLQuantizationType as Q

sys.path.insert(0, "build/lab")
from benchmarks.gpu_common import copy_bandwidth_gbs, random_raw, time_us
from benchmarks.gpu_linear import num_copies
from mma2_q4k import q4k_mma2_gemv
from mma3_q4k import q4k_mma3_gemv
from rocmforge.kernels.triton.packed_gemv import packed_gemv
from rocmforge.layers.packed_weight import pack

SHAPES = [(4096, 4096), (12288, 4096), (22016, 4096), (4096, 11008)]
copy = copy_bandwidth_gbs()
print(torch.cuda.get_device_name(), f"copy {copy:.0f} GB/s")
gen = torch.Generator(device="cuda").manual_seed(0)
totals: dict[str, float] = {}
per_shape: dict[str, list] = {}
nbytes = 0
t0 = time.time()
for n, k in SHAPES:
    raw = random_raw(Q.Q4_K, n, k, gen)
    packs = [pack(raw.clone(), Q.Q4_K, (n, k)) for _ in range(num_copies(raw.numel()))]
    nbytes += raw.numel()
    xb = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    ref = packed_gemv(xb.float(), packs[0]).float()
    variants = {"committed": lambda i: packed_gemv(xb, packs[i % len(packs)])}
    for (ver, fn), xd, w, st, sm in itertools.product(
        (("v2", q4k_mma2_gemv), ("v3", q4k_mma3_gemv)), (False, True), (4, 8), (1, 3), (4, 8, 16)
    ):
        if ver == "v2" and (not xd or w == 8):
            continue
        variants[f"{ver} xsumdot={int(xd)} w={w} st={st} sm={sm}"] = (
            lambda i, fn=fn, xd=xd, w=w, st=st, sm=sm: fn(xb, packs[i % len(packs)], sm, w, st, None, xd))
    for name, fn in variants.items():
        try:
            got = fn(0).float()
            err = ((got - ref).norm() / ref.norm()).item()
            assert err < 1e-2, f"error {err}"
            t = time_us(fn, 20, 10)
        except Exception as exc:  # a variant that does not compile or fit
            print("FAIL", name, repr(exc)[:200])
            t = float("inf")
        totals[name] = totals.get(name, 0.0) + t
        per_shape.setdefault(name, []).append(t)
    print(f"shape {n}x{k} done at {time.time() - t0:.0f}s", flush=True)
ranked = sorted(totals.items(), key=lambda kv: kv[1])
print(f"Q4_K: 4 shapes, {nbytes/1e6:.1f} MB")
for name, t in [("committed", totals["committed"])] + ranked[:14]:
    print(f"  {name:34s} {t:7.1f} us  {100 * nbytes / t / 1e3 / copy:5.1f}% of copy  " + " / ".join(f"{v:.1f}" for v in per_shape[name]))
