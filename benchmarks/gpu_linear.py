"""GPU timing of QuantLinear's packed-weight matmul against cuBLAS bf16 and the previous GGUF-block paths.

For 7B-model shapes (N x K) and M in {1, 4, 16, 64, 512}, per weight type (Q4_K, Q6_K, Q8_0, F16):

* ``packed us``: ``packed_matmul`` (rocmforge.kernels.triton.packed_matmul) on the weight repacked at load, bf16
  activations; for F16 QuantLinear's cuBLAS call on the weight's own bytes (x cast to float16);
  ``GB/s`` = packed weight bytes / time and ``% copy`` = that over the measured device copy bandwidth;
* ``fp32 x us`` (M <= 16): the same kernel on float32 activations (M = 1: the float32 GEMV; M > 1: tl.dot in
  tf32x3, which QuantLinear avoids by casting x to bf16);
* ``deq+cuBLAS us``: the packed weight dequantized to bf16 by the Triton kernel in 64 MiB chunks, then
  ``F.linear`` (the large-M alternative, chosen per M by ``PACKED_GEMM_MAX_M``);
* ``cuBLAS us``: ``F.linear(x, W)`` with W already bf16 on the GPU (what a model dequantized at load would run);
* ``old us``: the previous QuantLinear on the GGUF bytes: ``quant_matmul`` up to its old ``FUSED_MAX_M`` (Q4_K 2,
  Q6_K 3, Q8_0 2, F16 14), above it the GGUF row kernel's bf16 dequantization + cuBLAS;
* ``QuantLinear us (path)``: the path QuantLinear's dispatch takes on bf16 activations (``PACKED_GEMM_MAX_M``),
  ``vs cuBLAS`` / ``vs old`` = those times over it (> 1: QuantLinear is faster).

Every time is the median per call of ``--reps`` replays of a CUDA graph of ``--inner`` back-to-back calls, cycling
through enough copies of the weight (>= 3x a 50 MiB L2) that each call reads its weight from HBM, as in a model
step. ``--sweep`` first times the candidate kernel configurations per type and M bucket (the source of
``packed_matmul.CONFIGS``) and runs the table with the winners; ``--warm N`` compiles the kernels in N parallel
processes first (Triton caches them on disk).

Run: ``PYTHONPATH=src:<gguf>:. python3 benchmarks/gpu_linear.py [--warm 13 --sweep] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from gguf.constants import GGMLQuantizationType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.quant_blocks

from benchmarks.gpu_common import copy_bandwidth_gbs, random_raw, time_us

from rocmforge.kernels.triton import packed_matmul as pm
from rocmforge.kernels.triton.dequant_rows import dequantize_rows
from rocmforge.kernels.triton.quant_matmul import quant_matmul
from rocmforge.layers.quant_linear import DEQUANT_CHUNK_BYTES, PACKED_GEMM_MAX_M, QuantLinear, fused_max_m

Q = GGMLQuantizationType
SHAPES: list[tuple[int, int]] = [(4096, 4096), (11008, 4096), (4096, 11008), (32000, 4096)]
SWEEP_SHAPES = SHAPES[:3]
TYPES: list[GGMLQuantizationType] = [Q.Q4_K, Q.Q6_K, Q.Q8_0, Q.F16]
PACKED: list[GGMLQuantizationType] = [Q.Q4_K, Q.Q6_K, Q.Q8_0]
MS = (1, 4, 16, 64, 512)
OLD_FUSED_MAX_M = {Q.Q4_K: 2, Q.Q6_K: 3, Q.Q8_0: 2, Q.F16: 14}
L2_FLUSH_BYTES = 3 * 50 * 2**20
KC = pm.KernelConfig


def candidates(bucket: int) -> list[pm.KernelConfig]:
    """Kernel configurations the sweep times for an M bucket: 1, 4 (GEMVs), 16 (tl.dot), 64, 512 (larger M)."""
    if bucket == 1:
        # (BLOCK_N, warps, kb, reduce each step): few warps and wide tiles reuse each x value over more rows.
        shapes = [(16, 4, 8, False), (16, 4, 4, False), (16, 2, 8, False), (16, 1, 4, False), (16, 1, 8, True)]
        shapes += [(32, 1, 2, False)]
        shapes += [(32, 1, 4, True), (32, 2, 4, False), (32, 2, 8, True), (64, 2, 2, True), (64, 1, 4, True)]
        shapes += [(32, 4, 8, True)]
        return [
            KC(bn, 1, w, s, kb=kb, programs_per_sm=p, reduce_each_step=r)
            for bn, w, kb, r in shapes
            for s in (2, 3)
            for p in (4, 8, 16, 32)
        ]
    if bucket == 4:
        shapes = [(16, 4, 8, True), (16, 2, 4, True), (32, 2, 4, True), (32, 4, 4, True), (16, 1, 4, True)]
        return [
            KC(bn, 4, w, 2, kb=kb, programs_per_sm=p, reduce_each_step=r) for bn, w, kb, r in shapes for p in (4, 8, 16)
        ]
    if bucket == 16:
        shapes = [(16, 2, 8), (32, 4, 8), (32, 4, 4), (16, 1, 8), (32, 2, 8), (64, 4, 4)]
        return [KC(bn, 16, w, s, kb=kb, programs_per_sm=p) for bn, w, kb in shapes for s in (2, 3) for p in (4, 8, 16)]
    if bucket == 64:
        shapes = [(32, 64, 4), (64, 64, 4)]
        return [KC(bn, bm, w, 3, programs_per_sm=p, kb=4) for bm, bn, w in shapes for p in (2, 4)]
    return [KC(128, 128, 8, 3, split_k=1, kb=4), KC(64, 128, 4, 3, split_k=1, kb=2)]


# (M timed, candidate buckets) of the sweep; the chosen configs of table bucket b minimize the summed time of the
# sweep rows that name b.
SWEEP_MS: list[tuple[int, tuple[int, ...]]] = [(1, (1,)), (4, (4, 16)), (16, (16,)), (64, (64,)), (512, (512,))]
TABLE_BUCKETS = {1: (1,), 4: (4,), 16: (16,), 64: (64,), 1 << 30: (512,)}


def num_copies(nbytes: int) -> int:
    """How many copies of a weight make cycling through them stream from HBM, not L2."""
    return max(1, -(-L2_FLUSH_BYTES // nbytes))


@dataclass
class Row:
    type: str
    n: int
    k: int
    m: int
    mb: float  # weight bytes on the GPU (packed planes; F16 its raw bytes)
    packed_us: float
    fp32_us: float | None
    deq_us: float | None
    cublas_us: float
    old_us: float


def old_path(raw: torch.Tensor, qtype: GGMLQuantizationType, n: int, k: int, x: torch.Tensor) -> torch.Tensor:
    """The previous QuantLinear on GGUF bytes (fused decode kernel, else row dequantization + cuBLAS)."""
    if x.shape[0] <= OLD_FUSED_MAX_M[qtype]:
        return quant_matmul(x, raw, qtype, (n, k), out_dtype=x.dtype)
    rows = max(1, DEQUANT_CHUNK_BYTES // (k * 2))
    out = torch.empty((x.shape[0], n), dtype=torch.bfloat16, device=x.device)
    for start in range(0, n, rows):
        out[:, start : start + rows] = F.linear(x, dequantize_rows(raw[start : start + rows], qtype, k, torch.bfloat16))
    return out


def deq_cublas(layer: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    """Packed weight dequantized to bf16 in chunks by the Triton kernel, then cuBLAS."""
    n, k = layer.shape
    rows = max(1, DEQUANT_CHUNK_BYTES // (k * 2))
    out = torch.empty((x.shape[0], n), dtype=torch.bfloat16, device=x.device)
    for start in range(0, n, rows):
        out[:, start : start + rows] = F.linear(x, layer.dequantize_weight(start, start + rows, torch.bfloat16))
    return out


def bench_shape(
    qtype: GGMLQuantizationType, n: int, k: int, args: argparse.Namespace, gen: torch.Generator
) -> list[Row]:
    raw = random_raw(qtype, n, k, gen)
    raws = [raw] + [raw.clone() for _ in range(num_copies(raw.numel()) - 1)]
    layers = [QuantLinear(r.clone(), qtype, (n, k)) for r in raws]
    weights = [layers[0].dequantize_weight(dtype=torch.bfloat16)]
    weights += [weights[0].clone() for _ in range(num_copies(weights[0].numel() * 2) - 1)]
    rows: list[Row] = []
    for m in MS:
        x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
        x32 = x.float()

        def layer(i: int) -> QuantLinear:
            return layers[i % len(layers)]

        if qtype in PACKED:
            packed = time_us(lambda i, x=x: pm.packed_matmul(x, layer(i).packed), args.inner, args.reps)
            fp32 = (
                time_us(lambda i, x32=x32: pm.packed_matmul(x32, layer(i).packed), args.inner, args.reps)
                if m <= 16
                else None
            )
            deq = time_us(lambda i, x=x: deq_cublas(layer(i), x), args.inner, args.reps) if m >= 16 else None
        else:
            packed = time_us(lambda i, x=x: layer(i).float_matmul(x), args.inner, args.reps)
            fp32, deq = None, None
        cublas = time_us(lambda i, x=x: F.linear(x, weights[i % len(weights)]), args.inner, args.reps)
        old = time_us(lambda i, x=x: old_path(raws[i % len(raws)], qtype, n, k, x), args.inner, args.reps)
        rows.append(Row(qtype.name, n, k, m, layers[0].nbytes / 1e6, packed, fp32, deq, cublas, old))
        print(json.dumps(dataclasses.asdict(rows[-1])), flush=True)
    return rows


def dispatch(r: Row) -> tuple[str, float]:
    """QuantLinear's path for this row's M on bf16 activations (PACKED_GEMM_MAX_M), and its measured time."""
    if r.deq_us is not None and r.m > PACKED_GEMM_MAX_M.get(Q[r.type], 1 << 30):
        return "deq+cuBLAS", r.deq_us
    if r.type == "F16":
        return ("fused", r.old_us) if r.m <= fused_max_m(Q.F16) else ("cuBLAS f16", r.packed_us)
    return "packed", r.packed_us


def report(rows: list[Row], copy_gbs: float) -> None:
    print(f"\ncopy bandwidth {copy_gbs:.0f} GB/s")
    head = "type | N x K | M | MB | packed us | GB/s | % copy | fp32 x us | deq+cuBLAS us | QuantLinear us (path)"
    print(f"| {head} | cuBLAS bf16 us | vs cuBLAS | old us | vs old |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        gbs = r.mb * 1e3 / r.packed_us
        fp32 = f"{r.fp32_us:.1f}" if r.fp32_us is not None else "-"
        deq = f"{r.deq_us:.1f}" if r.deq_us is not None else "-"
        path, us = dispatch(r)
        print(
            f"| {r.type} | {r.n}x{r.k} | {r.m} | {r.mb:.1f} | {r.packed_us:.1f} | {gbs:.0f} | "
            f"{100 * gbs / copy_gbs:.0f}% | {fp32} | {deq} | {us:.1f} ({path}) | {r.cublas_us:.1f} | "
            f"{r.cublas_us / us:.2f} | {r.old_us:.1f} | {r.old_us / us:.2f} |"
        )


def sweep(args: argparse.Namespace, gen: torch.Generator) -> None:
    """Time the candidates on SWEEP_SHAPES; print the best per (type, M) and install them in ``pm.CONFIGS``."""
    for qtype in PACKED:
        totals: dict[tuple[int, pm.KernelConfig], float] = {}
        failed = 0
        for n, k in SWEEP_SHAPES:
            raw = random_raw(qtype, n, k, gen)
            packs = [QuantLinear(raw.clone(), qtype, (n, k)).packed for _ in range(num_copies(raw.numel()))]
            for m, buckets in SWEEP_MS:
                x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
                for c in [c for b in buckets for c in candidates(b)]:

                    def call(i: int, c: pm.KernelConfig = c, x: torch.Tensor = x, packs: list = packs) -> torch.Tensor:
                        return pm.packed_matmul(x, packs[i % len(packs)], config=c)

                    try:
                        us = time_us(call, args.inner, args.reps)
                    except Exception as exc:  # a candidate that does not compile or fit is only skipped
                        failed += 1
                        print(f"SWEEP {qtype.name} skip {c}: {type(exc).__name__}", flush=True)
                        us = float("inf")
                    totals[(m, c)] = totals.get((m, c), 0.0) + us
            del packs
        table = []
        for max_m, ms in TABLE_BUCKETS.items():
            summed: dict[pm.KernelConfig, float] = {}
            for (m, c), us in totals.items():
                if m in ms:
                    summed[c] = summed.get(c, 0.0) + us
            ranked = sorted(summed.items(), key=lambda t: t[1])
            print(f"SWEEP {qtype.name} M in {ms}: " + " ; ".join(f"{us:.1f} {c}" for c, us in ranked[:3]), flush=True)
            table.append((max_m, ranked[0][0]))
        pm.CONFIGS[qtype] = tuple(table)
        print(f"CHOSEN {qtype.name}: {table} ({failed} candidates failed)", flush=True)


def warm(part: int, parts: int, with_sweep: bool) -> None:
    """Compile this process's share of the packed kernels the run will launch."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    jobs: list[tuple[GGMLQuantizationType, int, pm.KernelConfig | None, torch.dtype]] = []
    for qtype in PACKED:
        for m in MS:
            jobs += [(qtype, m, None, torch.bfloat16)] + ([(qtype, m, None, torch.float32)] if m <= 16 else [])
        if with_sweep:
            jobs += [(qtype, m, c, torch.bfloat16) for m, buckets in SWEEP_MS for b in buckets for c in candidates(b)]
    # One job per compiled kernel: M and the split are runtime arguments, programs_per_sm only sets the split.
    unique = {(q, dataclasses.replace(c, programs_per_sm=4) if c else None, d): m for q, m, c, d in jobs}
    jobs = [(q, m, c, d) for (q, c, d), m in unique.items()]
    layers = {q: QuantLinear(random_raw(q, 4096, 4096, gen), q, (4096, 4096)) for q in PACKED}
    for qtype, m, c, dtype in jobs[part::parts]:
        x = torch.randn(m, 4096, device="cuda", dtype=dtype)
        try:
            pm.packed_matmul(x, layers[qtype].packed, config=c)
        except Exception as exc:  # reported again by the sweep
            print(f"warm: {c}: {type(exc).__name__}", flush=True)
    for layer in layers.values():
        layer.dequantize_weight(0, 1024, torch.bfloat16)
    torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the measurements here")
    parser.add_argument("--inner", type=int, default=20, help="calls per CUDA graph")
    parser.add_argument("--reps", type=int, default=10, help="graph replays (the median is reported)")
    parser.add_argument("--sweep", action="store_true", help="time the candidate kernel configurations first")
    parser.add_argument("--no-table", action="store_true", help="skip the main table")
    parser.add_argument("--warm", type=int, default=0, help="compile first in this many parallel processes")
    parser.add_argument("--warm-only", action="store_true", help="only compile (with --warm)")
    parser.add_argument("--warm-part", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warm_part:
        warm(args.warm_part[0], args.warm_part[1], args.sweep)
        return
    if args.warm:
        extra = ["--sweep"] if args.sweep else []
        procs = [
            subprocess.Popen([sys.executable, __file__, "--warm-part", str(i), str(args.warm), *extra])
            for i in range(args.warm)
        ]
        for proc in procs:
            proc.wait()
        if args.warm_only:
            return
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    if args.sweep:
        sweep(argparse.Namespace(inner=10, reps=5), gen)
    if args.no_table:
        return
    copy_gbs = copy_bandwidth_gbs()
    rows = [row for qtype in TYPES for n, k in SHAPES for row in bench_shape(qtype, n, k, args, gen)]
    report(rows, copy_gbs)
    if args.json:
        device = torch.cuda.get_device_name()
        payload = {"device": device, "copy_gbs": copy_gbs, "rows": [dataclasses.asdict(r) for r in rows]}
        args.json.write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
