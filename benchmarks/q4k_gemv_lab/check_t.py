import os, sys
os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, "build/lab"); sys.path.insert(0, "src"); sys.path.insert(0, ".")
import torch
from gguf.constants import GGMLQuantizationType as Q
from rocmforge.layers.packed_weight import pack
import q4k_t as T
from tests.quant_blocks import F16_SCALE_OFFSETS
from gguf.constants import GGML_QUANT_SIZES
torch.manual_seed(0)
n, k = 64, 1024
block, ts = GGML_QUANT_SIZES[Q.Q4_K]
blocks = torch.randint(0, 256, (n * k // block, ts), dtype=torch.uint8)
for off in F16_SCALE_OFFSETS[Q.Q4_K]:
    blocks[:, off:off+2] = (torch.rand(blocks.shape[0]) * 0.1 - 0.05).to(torch.float16).view(torch.uint8).view(-1, 2)
w = pack(blocks.view(n, -1), Q.Q4_K, (n, k))
x = torch.randn(1, k)
ref = (w.dequantize(torch.float64) @ x.double().T).T
for tn, g, split in [(32, 8, 1), (16, 16, 2), (32, 32, 1), (64, 8, 4)]:
    tp = T.to_t(w.planes, n, k, tn)
    out = T.run_t(x, tp, n, k, tn, g, 4, split)
    err = ((out.double() - ref).abs().max() / ref.abs().max()).item()
    print(tn, g, split, f"{err:.2e}")
for tn, g, split in [(32, 8, 1), (16, 16, 2), (32, 32, 1), (64, 8, 4)]:
    tp = T.to_t2(w.planes, n, k, tn)
    out = T.run_t2(x, tp, n, k, tn, g, 4, split)
    err = ((out.double() - ref).abs().max() / ref.abs().max()).item()
    print("t2", tn, g, split, f"{err:.2e}")
for tn, g, cpt, split in [(32, 8, 4, 1), (64, 16, 2, 2), (128, 8, 4, 1), (64, 8, 4, 4)]:
    tp = T.to_t3(w.planes, n if n % tn == 0 else n, k, tn, cpt) if n % tn == 0 else None
    if tp is None: continue
    out = T.run_t3(x, tp, n, k, tn, g, cpt, 4, split)
    err = ((out.double() - ref).abs().max() / ref.abs().max()).item()
    print("t3", tn, g, cpt, split, f"{err:.2e}")
