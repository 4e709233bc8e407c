"""Run the committed Q4_K GEMV (and a streaming-read ceiling kernel) a few times for ncu."""
import sys
sys.path.insert(0, ".")
import torch, triton, triton.language as tl
from gguf.constants import GGMLQuantizationType as Q
from benchmarks.gpu_common import random_raw
from rocmforge.kernels.triton.packed_gemv import packed_gemv
from rocmforge.layers.packed_weight import pack


@triton.jit
def stream_read(buf_ptr, out_ptr, per_prog, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    base = buf_ptr + pid.to(tl.int64) * per_prog
    acc = tl.zeros((BLOCK,), dtype=tl.int32)
    for i in range(0, per_prog, BLOCK):
        acc ^= tl.load(base + i + tl.arange(0, BLOCK))
    t = tl.xor_sum(acc, axis=0)
    tl.store(out_ptr + pid, t, mask=t == 12345)


gen = torch.Generator(device="cuda").manual_seed(0)
n, k = 12288, 4096
w = pack(random_raw(Q.Q4_K, n, k, gen), Q.Q4_K, (n, k))
x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
for _ in range(4):
    packed_gemv(x, w)
buf = torch.zeros(n * k // 8 * 9 // 8, dtype=torch.int32, device="cuda")
out = torch.zeros(4096, dtype=torch.int32, device="cuda")
for progs in (132 * 4, 132 * 8):
    for _ in range(3):
        stream_read[(progs,)](buf, out, buf.numel() // progs // 1024 * 1024, BLOCK=1024, num_warps=4)
torch.cuda.synchronize()
print("ok")
