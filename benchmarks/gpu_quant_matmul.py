"""Decode-shape timing of the fused dequant+matmul Triton kernel against the card's copy bandwidth and cuBLAS.

For 7B-model decode shapes (N x K) and M = 1 and 8, per weight type:

* ``us``: our kernel's time (CUDA events around a CUDA graph of ``--inner`` back-to-back calls, median of
  ``--reps`` replays, after warm-up). The calls cycle through enough copies of the weight (>= 3x a 50 MiB L2) that
  every call streams its weight from HBM, as in a real decode step.
* ``GB/s``: raw weight bytes (the GGUF block bytes, scales included) / time.
* ``roof``: that bandwidth over the roofline, which is the device-to-device copy bandwidth measured in the
  same run: ``torch`` copy of a 1 GiB buffer, counted as (bytes read + bytes written) / time, i.e. what the
  memory system sustains for a streaming kernel. A matmul reads its weight and writes almost nothing, so
  this is the bandwidth a read-mostly kernel can hope for.
* ``cublas us``: ``x_bf16 @ W_bf16.T`` (torch, cuBLAS) on the dequantized weight, same shape, same copy
  cycling; ``vs cublas`` = cublas time / our time (> 1: we are faster, mostly because we read fewer bytes).

Run: ``PYTHONPATH=src python benchmarks/gpu_quant_matmul.py [--json out.json]``.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import sys
from pathlib import Path

import torch
from gguf.constants import GGMLQuantizationType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.quant_blocks

from benchmarks.gpu_common import copy_bandwidth_gbs, random_raw, time_us

from rocmforge.kernels.triton.quant_matmul import quant_matmul

Q = GGMLQuantizationType
SHAPES: list[tuple[int, int]] = [(4096, 4096), (11008, 4096), (4096, 11008), (32000, 4096)]
TYPES: list[GGMLQuantizationType] = [Q.Q4_K, Q.Q6_K, Q.Q8_0, Q.Q4_0, Q.F16]
L2_FLUSH_BYTES = 3 * 50 * 2**20


def dequantized_bf16(raw: torch.Tensor, qtype: GGMLQuantizationType, n: int, k: int) -> torch.Tensor:
    """The weight as bf16 (n, k) for the cuBLAS peer, dequantized by our kernel against the identity."""
    if qtype == Q.F16:
        return raw.view(torch.float16).view(n, k).to(torch.bfloat16)
    rows = []
    for k0 in range(0, k, 16):  # W.T = quant_matmul(I, W) in slices of 16 identity rows (the kernel's max M)
        eye = torch.zeros(16, k, device="cuda")
        eye[torch.arange(16), k0 + torch.arange(16)] = 1.0
        rows.append(quant_matmul(eye, raw, qtype, (n, k)))
    return torch.cat(rows).T.contiguous().to(torch.bfloat16)


def _ours(
    i: int, x: torch.Tensor, copies: list[torch.Tensor], qtype: GGMLQuantizationType, shape: tuple[int, int]
) -> torch.Tensor:
    return quant_matmul(x, copies[i % len(copies)], qtype, shape)


def _cublas(i: int, x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    return x @ weights[i % len(weights)].T


def bench(inner: int, reps: int, shapes: list[tuple[int, int]], peer: bool) -> tuple[float, list[dict[str, object]]]:
    roof = copy_bandwidth_gbs()
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows: list[dict[str, object]] = []
    for qtype in TYPES:
        for n, k in shapes:
            raw0 = random_raw(qtype, n, k, gen)
            nbytes = raw0.numel()
            copies = [raw0] + [torch.empty_like(raw0).copy_(raw0) for _ in range(-(-L2_FLUSH_BYTES // nbytes) - 1)]
            cublas_w: list[torch.Tensor] = []
            if peer:
                w = dequantized_bf16(raw0, qtype, n, k)
                cublas_w = [w] + [w.clone() for _ in range(-(-L2_FLUSH_BYTES // w.numel() // 2) - 1)]
            for m in (1, 8):
                x = torch.randn(m, k, device="cuda", generator=gen)
                xb = x.to(torch.bfloat16)
                ours = functools.partial(_ours, x=x, copies=copies, qtype=qtype, shape=(n, k))
                us = time_us(ours, inner, reps)
                gbs = nbytes / us / 1e3
                row: dict[str, object] = {
                    "type": qtype.name,
                    "n": n,
                    "k": k,
                    "m": m,
                    "mb": nbytes / 1e6,
                    "us": us,
                    "gbs": gbs,
                    "roof": gbs / roof,
                }
                if peer:
                    cu = time_us(functools.partial(_cublas, x=xb, weights=cublas_w), inner, reps)
                    row["cublas_us"] = cu
                    row["vs_cublas"] = cu / us
                rows.append(row)
            copies.clear()
            cublas_w.clear()
            torch.cuda.empty_cache()
    return roof, rows


def sweep(inner: int, reps: int) -> None:
    """Time candidate (BLOCK_N, K tile, num_warps) of the decode kernels at 4096x4096 and 11008x4096.

    Prints the best four per type and M, and leaves the best in ``DECODE_CONFIGS`` for the table that follows.
    """
    from rocmforge.kernels.triton import quant_matmul as qm

    gen = torch.Generator(device="cuda").manual_seed(0)
    for qtype in TYPES:
        base_small, base_large = qm.DECODE_CONFIGS[qtype]
        weights = {(n, k): random_raw(qtype, n, k, gen) for n, k in SHAPES[:2]}
        copies = {
            key: [w] + [w.clone() for _ in range(-(-L2_FLUSH_BYTES // w.numel()) - 1)] for key, w in weights.items()
        }
        for m, base in ((1, base_small), (8, base_large)):
            x = torch.randn(m, 4096, device="cuda", generator=gen)
            results: list[tuple[float, tuple[int, int, int]]] = []
            tiles = sorted({max(1, base[1] // 2), base[1], base[1] * 2})
            for cfg in itertools.product((8, 16, 32), tiles, (4, 8)):
                qm.DECODE_CONFIGS[qtype] = (cfg, cfg) if m == 1 else (base_small, cfg)
                try:
                    total = sum(
                        time_us(functools.partial(_ours, x=x, copies=c, qtype=qtype, shape=key), inner, reps)
                        for key, c in copies.items()
                    )
                except Exception as exc:  # out of registers/shared memory: skip the candidate
                    print(f"{qtype.name} m={m} {cfg}: {type(exc).__name__}")
                    continue
                results.append((total, cfg))
            results.sort()
            best = results[0][1] if results else base
            if m == 1:
                base_small = best
            else:
                base_large = best
            qm.DECODE_CONFIGS[qtype] = (base_small, base_large)
            line = ", ".join(f"{cfg}={us:.1f}" for us, cfg in results[:4])
            print(f"sweep {qtype.name} m={m} base={base} (us, 4096+11008 rows): {line}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inner", type=int, default=50)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--no-peer", action="store_true", help="skip the cuBLAS bf16 peer")
    parser.add_argument("--quick", action="store_true", help="only 4096x4096 and 11008x4096")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--sweep", action="store_true", help="tune the decode kernels' configs first")
    args = parser.parse_args()
    if args.sweep:
        sweep(20, 5)
    shapes = SHAPES[:2] if args.quick else SHAPES
    roof, rows = bench(args.inner, args.reps, shapes, not args.no_peer)
    print(f"card: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(f"roofline: D2D copy of 1 GiB, (read+write bytes)/time = {roof:.0f} GB/s")
    print("| type | N x K | M | weight MB | us | GB/s | roof | cublas bf16 us | vs cublas |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        cu = f"{r['cublas_us']:.1f} | {r['vs_cublas']:.2f}" if "cublas_us" in r else "- | -"
        print(
            f"| {r['type']} | {r['n']}x{r['k']} | {r['m']} | {r['mb']:.1f} | {r['us']:.1f} | {r['gbs']:.0f} "
            f"| {r['roof']:.0%} | {cu} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"card": torch.cuda.get_device_name(), "roof_gbs": roof, "rows": rows}))


if __name__ == "__main__":
    main()
