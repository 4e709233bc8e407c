import sys; sys.path.insert(0, "build/lab"); sys.path.insert(0, ".")
import torch, triton
from gguf.constants import GGMLQuantizationType as Q
from rocmforge.layers.packed_weight import pack
from rocmforge.kernels.triton.packed_matmul import split_outputs, sum_splits
from bench_q4k import to_b
import q4k_v5 as V
n, k = 64, 1024
g = torch.Generator().manual_seed(0)
blocks = torch.randint(0, 256, (n * k // 256, 144), dtype=torch.uint8, generator=g)
for off in (0, 2):
    blocks[:, off:off + 2] = (torch.rand(blocks.shape[0], generator=g) * 0.1 - 0.05).to(torch.float16).view(torch.uint8).view(-1, 2)
w = pack(blocks.view(n, -1), Q.Q4_K, (n, k))
x = torch.randn(1, k).to(torch.bfloat16)
ref = (w.dequantize() @ x.float().T).T
qs, sc, mn, d, dmin = to_b(w)
for bn, w_, split in ((32, 2, 1), (64, 2, 2), (16, 1, 4)):
    sb_split = triton.cdiv(k // 256, split)
    out, target = split_outputs(1, n, split, torch.float32, x.device)
    V.q4k_v5[(n // bn, split)](x, target, qs, sc, mn, d, dmin, n, qs.stride(0), 0, d.stride(0), sb_split, k // 256, BLOCK_N=bn, PREFETCH=1, num_warps=w_)
    sum_splits(target, out, split)
    print(bn, w_, split, ((out - ref).norm() / ref.norm()).item())
planes = (qs, sc, mn, d, dmin)
for bn, w_, split in ((32, 2, 1), (64, 2, 2), (16, 1, 4)):
    buf = V.to_tile(planes, n, k, bn)
    sb_split = triton.cdiv(k // 256, split)
    out, target = split_outputs(1, n, split, torch.float32, x.device)
    V.q4k_v5t[(n // bn, split)](x, target, buf, n, k // 256, sb_split, BLOCK_N=bn, num_warps=w_)
    sum_splits(target, out, split)
    print("t", bn, w_, split, ((out - ref).norm() / ref.norm()).item())
