import os, sys
os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, "build/lab"); sys.path.insert(0, "src"); sys.path.insert(0, ".")
import torch
from gguf.constants import GGMLQuantizationType as Q
from rocmforge.layers.packed_weight import pack
from tests.kernels.test_packed_matmul import random_raw
import q6k_t as T
n, k = 128, 1024
raw = random_raw(Q.Q6_K, n, k, seed=5)
w = pack(raw, Q.Q6_K, (n, k))
x = torch.randn(1, k)
ref = (w.dequantize(torch.float64) @ x.double().T).T
for tq, warps in [(32, 4), (64, 2), (16, 4)]:
    out = T.run(x, T.to_tiles(w.planes, n, k), n, k, tq, warps, 8, torch.float32)
    print(tq, warps, ((out.double() - ref).abs().max() / ref.abs().max()).item())
