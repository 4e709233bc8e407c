"""Lab: a 7B-like chain of dependent Q4_K GEMVs (qkv -> o -> gate_up -> down, per layer), in one CUDA graph,
with and without programmatic dependent launch."""
import sys

import torch
from gguf.constants import GGMLQuantizationType as Q

sys.path.insert(0, "build/lab")
from benchmarks.gpu_common import copy_bandwidth_gbs, random_raw
from pdl_q4k import q4k_pdl_gemv
from rocmforge.kernels.triton.packed_gemv import packed_gemv
from rocmforge.layers.packed_weight import pack

LAYERS = 12
SHAPES = [(12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008)]
IN = {0: 4096, 1: 4096, 2: 4096, 3: 11008}
copy = copy_bandwidth_gbs()
print(torch.cuda.get_device_name(), f"copy {copy:.0f} GB/s")
gen = torch.Generator(device="cuda").manual_seed(0)
weights = [[pack(random_raw(Q.Q4_K, n, k, gen), Q.Q4_K, (n, k)) for n, k in SHAPES] for _ in range(LAYERS)]
nbytes = sum(p.nbytes for layer in weights for p in layer)
x0 = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16) * 0.05


def chain(gemv):
    x = x0
    for layer in weights:
        for i, w in enumerate(layer):
            y = gemv(x[:, : w.shape[1]].contiguous() if x.shape[1] != w.shape[1] else x, w)
            # keep values bounded: the next input is the output scaled
            x = y
    return x


variants = {
    "committed": lambda x, w: packed_gemv(x, w),
    "lab no pdl": lambda x, w: q4k_pdl_gemv(x, w),
    "lab prefetch, no pdl": lambda x, w: q4k_pdl_gemv(x, w, prefetch=True),
    "pdl": lambda x, w: q4k_pdl_gemv(x, w, pdl=True),
    "pdl + prefetch": lambda x, w: q4k_pdl_gemv(x, w, pdl=True, prefetch=True),
    "pdl + prefetch sm=4": lambda x, w: q4k_pdl_gemv(x, w, pdl=True, prefetch=True, programs_per_sm=4),
    "pdl + prefetch sm=16": lambda x, w: q4k_pdl_gemv(x, w, pdl=True, prefetch=True, programs_per_sm=16),
    "pdl + prefetch w=4": lambda x, w: q4k_pdl_gemv(x, w, pdl=True, prefetch=True, num_warps=4),
}
ref = None
rows = []
for name, gemv in variants.items():
    for _ in range(2):
        out = chain(gemv)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = chain(gemv)
    graph.replay()
    torch.cuda.synchronize()
    if ref is None:
        ref = out.clone()
    same = torch.equal(out.view(torch.int16), ref.view(torch.int16))
    times = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        graph.replay()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) * 1e3)
    t = sorted(times)[len(times) // 2]
    per_layer = t / LAYERS
    rows.append((name, t, same))
    print(f"{name:24s} {per_layer:7.1f} us/layer  {nbytes / t / 1e3:6.0f} GB/s  {100 * nbytes / t / 1e3 / copy:5.1f}% of copy  same={same}")
