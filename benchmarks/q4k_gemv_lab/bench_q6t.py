"""Q6_K column tiles (lab) vs the committed packed_gemv Q6_K kernel, gpu_gemv's 4 shapes, bf16 x."""
import itertools, sys, time
sys.path.insert(0, "build/lab"); sys.path.insert(0, ".")
import torch
from gguf.constants import GGMLQuantizationType as Q
from benchmarks.gpu_common import copy_bandwidth_gbs, random_raw, time_us
from benchmarks.gpu_linear import num_copies
from rocmforge.kernels.triton.packed_gemv import packed_gemv
from rocmforge.layers.packed_weight import pack
import q6k_t as T

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (32000, 4096)]
CONFIGS = list(itertools.product((16, 32, 64), (1, 2, 4, 8), (4, 8, 16)))


def main():
    bw = copy_bandwidth_gbs()
    print(f"card: {torch.cuda.get_device_name()}, copy bandwidth {bw:.0f} GB/s", flush=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    totals, errors, total_bytes = {}, {}, 0
    t0 = time.time()
    for n, k in SHAPES:
        raw = random_raw(Q.Q6_K, n, k, gen)
        total_bytes += raw.numel()
        nc = num_copies(raw.numel())
        copies = [pack(raw.clone(), Q.Q6_K, (n, k)) for _ in range(nc)]
        tiles = [T.to_tiles(c.planes, n, k) for c in copies]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        ref = (copies[0].dequantize(torch.float32) @ x.float().T).T

        def record(name, fn):
            out = fn(0)
            errors[name] = max(errors.get(name, 0.0), ((out.float() - ref).abs().max() / ref.abs().max()).item())
            totals.setdefault(name, []).append(time_us(fn, max(nc, 20), 10))

        record("committed", lambda i: packed_gemv(x, copies[i % nc]))
        for tq, w, ps in CONFIGS:
            record(f"tiles tq{tq} w{w} ps{ps}", lambda i, tq=tq, w=w, ps=ps: T.run(x, tiles[i % nc], n, k, tq, w, ps))
        print(f"shape {n}x{k} done at {time.time() - t0:.0f}s", flush=True)
    print(f"\n{'variant':28s} {'us (4 shapes)':>14s} {'GB/s':>7s} {'of copy':>8s} {'max err':>8s}  per shape")
    rows = sorted((sum(v), name) for name, v in totals.items())
    for us, name in rows[:12] + [r for r in rows[12:] if r[1] == "committed"]:
        gbs = total_bytes / us / 1e3
        print(f"{name:28s} {us:14.1f} {gbs:7.0f} {gbs / bw:8.1%} {errors[name]:8.1e}  " + " ".join(f"{v:6.1f}" for v in totals[name]))


main()
