"""T4 (T3 + int8 x, dp4a) vs T3 vs committed packed_gemv, Q4_K M=1, 7B shapes."""
import sys, time
sys.path.insert(0, "build/lab"); sys.path.insert(0, ".")
import torch
from gguf.constants import GGMLQuantizationType as Q
from benchmarks.gpu_common import copy_bandwidth_gbs, random_raw, time_us
from benchmarks.gpu_linear import num_copies
from rocmforge.kernels.triton.packed_gemv import packed_gemv
from rocmforge.layers.packed_weight import pack
import q4k_t as T
from bench_t3 import split_for  # noqa: E402  (bench_t3 runs main() on import: avoid)

SHAPES = [(4096, 4096), (12288, 4096), (22016, 4096), (4096, 11008)]
T4_CONFIGS = [(tn, g, cpt, w, ps) for tn, cpt in ((64, 2), (128, 4), (256, 8)) for g in (8, 16)
              for w in (2, 4, 8) for ps in (8, 16)]


def main():
    bw = copy_bandwidth_gbs()
    print(f"card: {torch.cuda.get_device_name()}, copy bandwidth {bw:.0f} GB/s", flush=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    totals, total_bytes, errors, qerrors = {}, 0, {}, {}
    cfg = {}
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
        xdq = (xq.float() * xd[:, None]).view(1, k)
        qref = (w32 @ xdq.T).T  # exact product with the quantized x
        inner = max(nc, 24)

        def record(name, fn, qx=False):
            out = fn(0)
            err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
            errors[name] = max(errors.get(name, 0.0), err)
            if qx:
                qe = ((out.float() - qref).abs().max() / qref.abs().max()).item()
                qerrors[name] = max(qerrors.get(name, 0.0), qe)
            totals.setdefault(name, []).append(time_us(fn, inner, 15))

        record("committed", lambda i: packed_gemv(x, copies[i % nc]))
        totals.setdefault("x quantization (torch ops, lab)", []).append(time_us(lambda i: T.quantize_x(x), inner, 15))
        for tn in sorted({c[0] for c in T4_CONFIGS}):
            tcopies = [T.to_t3(c.planes, n, k, tn, 4) for c in copies]
            if tn == 128:
                s = split_for(n, k, 128, 8, 16)
                record("t3 tn128 g8 cpt4 w4 ps16", lambda i: T.run_t3(x, tcopies[i % nc], n, k, 128, 8, 4, 4, s))
                record("t3 tn128 g8 cpt4 w4 ps16 loads-only", lambda i: T.run_t3(x, tcopies[i % nc], n, k, 128, 8, 4, 4, s, load_only=1).view(1, -1)[:, :n])
            for (ctn, g, cpt, w, ps) in T4_CONFIGS:
                if ctn != tn or (k // 256) % (g // 8):
                    continue
                split = split_for(n, k, tn, g, ps)
                name = f"t4 tn{tn} g{g} cpt{cpt} w{w} ps{ps}"
                cfg[name] = (tn, g, cpt, w, ps)
                record(name, lambda i, g=g, cpt=cpt, w=w, s=split: T.run_t4((xw, xd, xs), tcopies[i % nc], n, k, tn, g, cpt, w, s), qx=True)
            del tcopies
        print(f"shape {n}x{k} done at {time.time() - t0:.0f}s", flush=True)
    best = sorted((sum(v), name) for name, v in totals.items() if name.startswith("t4") and len(v) == 4)[:3]
    for n, k in SHAPES:
        raw = random_raw(Q.Q4_K, n, k, gen)
        nc = num_copies(raw.numel())
        copies = [pack(raw.clone(), Q.Q4_K, (n, k)) for _ in range(nc)]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        xw, xd, xs, _ = T.quantize_x(x)
        inner = max(nc, 24)
        totals.setdefault("committed (2nd pass)", []).append(time_us(lambda i: packed_gemv(x, copies[i % nc]), inner, 15))
        for _, name in best:
            tn, g, cpt, w, ps = cfg[name]
            tcopies = [T.to_t3(c.planes, n, k, tn, 4) for c in copies]
            split = split_for(n, k, tn, g, ps)
            for tag, kw in (("pdl", dict(pdl=1)), ("again", {})):
                fn = lambda i, kw=kw: T.run_t4((xw, xd, xs), tcopies[i % nc], n, k, tn, g, cpt, w, split, **kw)
                try:
                    totals.setdefault(f"{name} {tag}", []).append(time_us(fn, inner, 15))
                except Exception as exc:  # noqa: BLE001
                    print(tag, "failed:", repr(exc)[:300])
            del tcopies
    print(f"\n{'variant':44s} {'us (4 shapes)':>14s} {'GB/s':>7s} {'of copy':>8s} {'rel err':>8s} {'vs q-x':>8s}")
    rows = sorted(((sum(v), name) for name, v in totals.items() if len(v) == len(SHAPES)))
    for us, name in rows[:24] + [r for r in rows[24:] if "committed" in r[1] or "quant" in r[1]]:
        gbs = total_bytes / us / 1e3
        print(f"{name:44s} {us:14.1f} {gbs:7.0f} {gbs / bw:8.1%} {errors.get(name, float('nan')):8.1e} {qerrors.get(name, float('nan')):8.1e}")


main()
