import os, sys
os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, "build/lab"); sys.path.insert(0, "src"); sys.path.insert(0, ".")
import torch
from gguf.constants import GGMLQuantizationType as Q
from rocmforge.layers.packed_weight import pack
from tests.quant_blocks import F16_SCALE_OFFSETS
import q4k_t5 as T5
torch.manual_seed(0)
n, k = 128, 1024
blocks = torch.randint(0, 256, (n * k // 256, 144), dtype=torch.uint8)
for off in F16_SCALE_OFFSETS[Q.Q4_K]:
    blocks[:, off:off+2] = (torch.rand(blocks.shape[0]) * 0.1 - 0.05).to(torch.float16).view(torch.uint8).view(-1, 2)
w = pack(blocks.view(n, -1), Q.Q4_K, (n, k))
x = torch.randn(1, k)
ref = (w.dequantize(torch.float64) @ x.double().T).T
for tn, g, cpt, split in [(32, 8, 4, 1), (64, 16, 2, 2), (128, 8, 4, 4)]:
    tp, st = T5.planes_tile_major(w.planes, n, k, tn)
    out = T5.run_t5(x, tp, st, n, k, tn, g, cpt, 4, split, out_dtype=torch.float32)
    tpg, _ = T5.planes_global(w.planes, n, k)
    outg = T5.run_t5(x, tpg, T5.global_strides(n, tn), n, k, tn, g, cpt, 4, split, out_dtype=torch.float32)
    e = lambda o: ((o.double() - ref).abs().max() / ref.abs().max()).item()
    print(tn, g, cpt, split, f"{e(out):.1e} {e(outg):.1e}")
