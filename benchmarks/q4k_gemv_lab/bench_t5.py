"""Tile-major vs transposed-global planes, float vs int8 x (dp4a), split-K vs none. Q4_K M=1, 7B shapes."""
import sys, time
sys.path.insert(0, "build/lab"); sys.path.insert(0, ".")
import torch
from gguf.constants import GGMLQuantizationType as Q
from benchmarks.gpu_common import copy_bandwidth_gbs, random_raw, time_us
from benchmarks.gpu_linear import num_copies
from rocmforge.kernels.triton.packed_gemv import packed_gemv
from rocmforge.layers.packed_weight import pack
import q4k_t as T
import q4k_t5 as T5
from bench_t3 import split_for

SHAPES = [(4096, 4096), (12288, 4096), (22016, 4096), (4096, 11008)]
FLOAT = [(128, 8, 4, 4, 16), (64, 8, 2, 4, 16), (128, 8, 4, 4, 8)]
INT8 = [(64, 8, 2, 4, 8), (64, 8, 2, 8, 8), (64, 8, 2, 8, 16), (64, 8, 2, 4, 4), (128, 8, 4, 2, 8),
        (32, 8, 1, 4, 0), (32, 16, 1, 8, 0), (64, 16, 2, 8, 0), (32, 32, 1, 8, 0), (32, 8, 1, 4, 8)]


def main():
    bw = copy_bandwidth_gbs()
    print(f"card: {torch.cuda.get_device_name()}, copy bandwidth {bw:.0f} GB/s", flush=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    totals, total_bytes, errors = {}, 0, {}
    t0 = time.time()
    for n, k in SHAPES:
        raw = random_raw(Q.Q4_K, n, k, gen)
        total_bytes += raw.numel()
        nc = num_copies(raw.numel())
        copies = [pack(raw.clone(), Q.Q4_K, (n, k)) for _ in range(nc)]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        w32 = copies[0].dequantize(torch.float32)
        ref = (w32 @ x.float().T).T
        xw, xd, xs, xq = T.quantize_x(x)
        inner = max(nc, 24)

        def record(name, fn):
            out = fn(0)
            err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
            errors[name] = max(errors.get(name, 0.0), err)
            totals.setdefault(name, []).append(time_us(fn, inner, 15))

        record("committed", lambda i: packed_gemv(x, copies[i % nc]))
        layouts = {}
        for tn in (32, 64, 128):
            layouts[("tile", tn)] = [T5.planes_tile_major(c.planes, n, k, tn) for c in copies]
        glob = [T5.planes_global(c.planes, n, k)[0] for c in copies]
        for kind, cfgs, int8 in (("float", FLOAT, 0), ("int8", INT8, 1)):
            xin = (xw, xd, xs) if int8 else x
            for tn, g, cpt, w, ps in cfgs:
                if (k // 256) % (g // 8):
                    continue
                split = split_for(n, k, tn, g, ps) if ps else 1
                for lay in ("tile", "global"):
                    if lay == "tile":
                        planes = [p for p, _ in layouts[("tile", tn)]]
                        st = layouts[("tile", tn)][0][1]
                    else:
                        planes, st = glob, T5.global_strides(n, tn)
                    name = f"{kind} {lay:6s} tn{tn} g{g} cpt{cpt} w{w} ps{ps}"
                    record(name, lambda i, planes=planes, st=st, g=g, cpt=cpt, w=w, s=split, xin=xin, int8=int8, tn=tn:
                           T5.run_t5(xin, planes[i % nc], st, n, k, tn, g, cpt, w, s, int8=int8))
                    if kind == "int8" and (tn, g, cpt, w, ps) == (64, 8, 2, 4, 8):
                        try:
                            record(name + " pdl", lambda i, planes=planes, st=st, s=split:
                                   T5.run_t5(xin, planes[i % nc], st, n, k, 64, 8, 2, 4, s, int8=1, pdl=1))
                        except Exception as exc:  # noqa: BLE001
                            print("pdl failed", repr(exc)[:200])
        del layouts, glob
        print(f"shape {n}x{k} done at {time.time() - t0:.0f}s", flush=True)
    print(f"\n{'variant':44s} {'us (4 shapes)':>14s} {'GB/s':>7s} {'of copy':>8s} {'rel err':>8s}")
    rows = sorted(((sum(v), name) for name, v in totals.items() if len(v) == len(SHAPES)))
    for us, name in rows:
        gbs = total_bytes / us / 1e3
        print(f"{name:44s} {us:14.1f} {gbs:7.0f} {gbs / bw:8.1%} {errors.get(name, float('nan')):8.1e}")
    print("per shape (us):")
    for us, name in rows[:8] + [r for r in rows if r[1] == "committed"]:
        print(f"{name:44s} " + " ".join(f"{v:7.1f}" for v in totals[name]))


main()
