import sys; sys.path.insert(0, "build/lab"); sys.path.insert(0, ".")
import torch
from gguf.constants import GGMLQuantizationType as Q
from benchmarks.gpu_common import random_raw
from rocmforge.layers.packed_weight import pack
import bench_q4k as B, q4k_lab as L
gen = torch.Generator().manual_seed(0)
n, k = 128, 1024
from tests.quant_blocks import F16_SCALE_OFFSETS
blocks = torch.randint(0, 256, (n * k // 256, 144), dtype=torch.uint8, generator=gen)
for off in F16_SCALE_OFFSETS[Q.Q4_K]:
    blocks[:, off:off+2] = (torch.rand(blocks.shape[0], generator=gen) * 0.1 - 0.05).to(torch.float16).view(torch.uint8).view(-1, 2)
raw = blocks.view(n, -1)
w = pack(raw, Q.Q4_K, (n, k))
x = torch.randn(1, k)
ref = x @ w.dequantize().T
for name, kern, conv, st, fu in (("v3", L.q4k_gemv_v3, B.to_b, 1, False), ("v3s3", L.q4k_gemv_v3, B.to_b, 3, False), ("v3f", L.q4k_gemv_v3f, B.to_b, 3, True)):
  for _ in range(2):
    got = B.run(kern, x, conv(w), n, k, 64, 4, 2, st, fu)
    print(name, ((got - ref).norm() / ref.norm()).item())
# tile-major v3t on a repacked buffer: correctness in the interpreter
wb = B.to_b(w)
qs, sc64, mn64, d, dmin = wb
BN = 64
G = n // BN; nsb = k // 256
buf = torch.empty(G, nsb, BN * 37, dtype=torch.int32)
qv = qs.view(G, BN, nsb, 32).permute(0, 2, 1, 3)
buf[:, :, :BN*32] = qv.reshape(G, nsb, BN * 32)
buf[:, :, BN*32:BN*34] = sc64.view(G, BN, nsb).permute(0, 2, 1).contiguous().view(torch.int32).reshape(G, nsb, BN*2)
buf[:, :, BN*34:BN*36] = mn64.view(G, BN, nsb).permute(0, 2, 1).contiguous().view(torch.int32).reshape(G, nsb, BN*2)
dd = torch.stack([d.view(G, BN, nsb).permute(0, 2, 1), dmin.view(G, BN, nsb).permute(0, 2, 1)], dim=2).contiguous()  # [G, nsb, 2, BN]
buf[:, :, BN*36:] = dd.view(torch.int32).reshape(G, nsb, BN)
out = torch.empty(2, n)
L.q4k_gemv_v3t[(G, 2)](x, out, buf, n, nsb, 2, BLOCK_N=BN, LOAD_ONLY=0)
got = out.sum(0)
print("v3t", ((got - ref).norm() / ref.norm()).item())
out = torch.empty(2, n)
L.q4k_gemv_v3tp[(G, 2)](x, out, buf, n, nsb, 2, BLOCK_N=BN, LOAD_ONLY=0)
print("v3tp", ((out.sum(0) - ref).norm() / ref.norm()).item())
got = B.run(L.q4k_gemv_v3p, x, wb, n, k, 64, 4, 2, 1, False)
print("v3p", ((got - ref).norm() / ref.norm()).item())
