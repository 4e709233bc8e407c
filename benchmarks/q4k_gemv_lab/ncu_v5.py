import sys; sys.path.insert(0, "build/lab"); sys.path.insert(0, ".")
import torch, triton
from gguf.constants import GGMLQuantizationType as Q
from benchmarks.gpu_common import random_raw
from rocmforge.layers.packed_weight import pack
from bench_q4k import to_b
import bench_v5 as B, q4k_v5 as V
gen = torch.Generator(device="cuda").manual_seed(0)
n, k = 12288, 4096
w = pack(random_raw(Q.Q4_K, n, k, gen), Q.Q4_K, (n, k))
x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
pl = to_b(w)
buf = V.to_tile(pl, n, k, 64)
for _ in range(4):
    B.run(x, pl, n, k, 64, 4, 8)
    B.run_t(x, buf, n, k, 64, 4, 8)
torch.cuda.synchronize()
