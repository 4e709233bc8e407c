"""T3 (columns across threads, K in registers, tile-major) and PDL vs committed packed_gemv, Q4_K M=1, 7B shapes."""
import sys, time
sys.path.insert(0, "build/lab"); sys.path.insert(0, ".")
import torch, triton
from gguf.constants import GGMLQuantizationType as Q
from benchmarks.gpu_common import copy_bandwidth_gbs, random_raw, time_us
from benchmarks.gpu_linear import num_copies
from rocmforge.kernels.triton.packed_gemv import packed_gemv
from rocmforge.kernels.triton.packed_matmul import _num_sms
from rocmforge.layers.packed_weight import pack
import q4k_t as T

SHAPES = [(4096, 4096), (12288, 4096), (22016, 4096), (4096, 11008)]


def split_for(n, k, tn, g, per_sm):
    grid_n = n // tn
    n_steps = (k // 256) // (g // 8)
    split = 1
    while grid_n * split * 2 <= per_sm * _num_sms(torch.device("cuda")) and n_steps // (split * 2) >= 1:
        split *= 2
    return split


# (TN, G, CPT, warps, per_sm)
T3_CONFIGS = [(tn, g, cpt, w, ps) for tn, cpt in ((64, 2), (128, 4), (256, 4)) for g in (8, 16)
              for w in (4, 8) for ps in (8, 16)]
CFG = {}


def main():
    bw = copy_bandwidth_gbs()
    print(f"card: {torch.cuda.get_device_name()}, copy bandwidth {bw:.0f} GB/s", flush=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    totals, total_bytes, errors = {}, 0, {}
    t0 = time.time()
    for n, k in SHAPES:
        raw = random_raw(Q.Q4_K, n, k, gen)
        nbytes = raw.numel()
        total_bytes += nbytes
        nc = num_copies(nbytes)
        copies = [pack(raw.clone(), Q.Q4_K, (n, k)) for _ in range(nc)]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        xf = x.float()
        ref = (copies[0].dequantize(torch.float32) @ xf.T).T
        inner = max(nc, 24)

        def record(name, fn):
            out = fn(0)
            err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
            errors[name] = max(errors.get(name, 0.0), err)
            us = time_us(fn, inner, 15)
            totals.setdefault(name, []).append(us)

        record("committed", lambda i: packed_gemv(x, copies[i % nc]))
        for pdl in (0, 1, 2):
            try:
                record(f"committed-lab pdl{pdl}", lambda i, p=pdl: T.run_committed_pdl(x, copies[i % nc], p))
            except Exception as exc:  # noqa: BLE001
                print("pdl", pdl, "failed:", repr(exc)[:300])
        for tn in sorted({c[0] for c in T3_CONFIGS}):
            if n % tn:
                continue
            tcopies = [T.to_t3(c.planes, n, k, tn, 4) for c in copies]
            for (ctn, g, cpt, w, ps) in T3_CONFIGS:
                if ctn != tn or (k // 256) % (g // 8):
                    continue
                split = split_for(n, k, tn, g, ps)
                name = f"t3 tn{tn} g{g} cpt{cpt} w{w} ps{ps}"
                CFG[name] = (tn, g, cpt, w, ps)
                record(name, lambda i, g=g, cpt=cpt, w=w, s=split: T.run_t3(x, tcopies[i % nc], n, k, tn, g, cpt, w, s))
            del tcopies
        print(f"shape {n}x{k} done at {time.time() - t0:.0f}s", flush=True)
    # the best T3 configs again: loads only, and with PDL
    best = sorted((sum(v), name) for name, v in totals.items() if name.startswith("t3") and len(v) == 4 and "fp32x" not in name)[:4]
    for n, k in SHAPES:
        raw = random_raw(Q.Q4_K, n, k, gen)
        nc = num_copies(raw.numel())
        copies = [pack(raw.clone(), Q.Q4_K, (n, k)) for _ in range(nc)]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        ref = (copies[0].dequantize(torch.float32) @ x.float().T).T
        inner = max(nc, 24)
        totals.setdefault("committed (2nd pass)", []).append(time_us(lambda i: packed_gemv(x, copies[i % nc]), inner, 15))
        for _, name in best:
            tn, g, cpt, w, ps = CFG[name]
            xf = x.float()
            tcopies = [T.to_t3(c.planes, n, k, tn, 4) for c in copies]
            split = split_for(n, k, tn, g, ps)
            for tag, kw in (("loads-only", dict(load_only=1)), ("pdl", dict(pdl=1)), ("again", {}), ("fp32x", {})):
                xx = xf if tag == "fp32x" else x
                fn = lambda i, kw=kw, xx=xx: T.run_t3(xx, tcopies[i % nc], n, k, tn, g, cpt, w, split, **kw)
                try:
                    if tag in ("pdl", "fp32x"):
                        out = fn(0)
                        err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
                        errors[f"{name} {tag}"] = max(errors.get(f"{name} {tag}", 0.0), err)
                    totals.setdefault(f"{name} {tag}", []).append(time_us(fn, inner, 15))
                except Exception as exc:  # noqa: BLE001
                    print(tag, "failed:", repr(exc)[:300])
            del tcopies
    print(f"\n{'variant':48s} {'us (4 shapes)':>14s} {'GB/s':>7s} {'of copy':>8s} {'max rel err':>11s}")
    rows = sorted(((sum(v), name) for name, v in totals.items() if len(v) == len(SHAPES)))
    for us, name in rows[:30] + [r for r in rows[30:] if "committed" in r[1]]:
        gbs = total_bytes / us / 1e3
        print(f"{name:48s} {us:14.1f} {gbs:7.0f} {gbs / bw:8.1%} {errors.get(name, float('nan')):11.1e}")


if __name__ == "__main__":
    main()
