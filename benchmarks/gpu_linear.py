"""GPU timing of QuantLinear against cuBLAS bf16 on a pre-dequantized weight, and the crossover of its two paths.

For 7B-model shapes (N x K) and M in {1, 4, 8, 16, 64, 512}, per weight type (Q4_K, Q6_K, Q8_0, F16):

* ``fused us``: QuantLinear's small-M path, the Triton kernel that dequantizes inside the matmul (M <= 16);
* ``dequant us``: its large-M path, the Triton row kernel dequantizing the weight to bf16 in 64 MiB chunks,
  each chunk multiplied by ``torch.nn.functional.linear`` (cuBLAS);
* ``cublas us``: ``F.linear(x, W)`` with W already bf16 on the GPU (what a model dequantized at load would run);
* ``QuantLinear us``: the path that QuantLinear's dispatch (``FUSED_MAX_M``) picks for that M, and
  ``vs cuBLAS`` = cublas time / that time (> 1: faster than the bf16 model, < 1: slower).

Activations are bf16 on every side (the fused kernel takes them as they are, the others need no cast), so each
column times only its matmul. Every time is the median per call of ``--reps`` replays of a CUDA graph of
``--inner`` back-to-back calls (eager launches from Python are slower than most of these kernels), cycling through
enough copies of the weight (>= 3x a 50 MiB L2) that each call reads its weight from HBM, as in a model step.

The crossover table compares the two paths at M <= 16 over all shapes together and prints, per type, the largest
M at which the fused kernel still wins (linear interpolation between the measured M), i.e. ``FUSED_MAX_M``.

Run: ``PYTHONPATH=src:<gguf> python3 benchmarks/gpu_linear.py [--json out.json]``. ``--warm TYPE`` only compiles
that type's kernels (several such processes in parallel fill Triton's cache before a timed run).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from gguf.constants import GGMLQuantizationType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.quant_blocks

from benchmarks.gpu_common import random_raw, time_us

from rocmforge.gguf.quants import SUPPORTED_QUANT_TYPES
from rocmforge.layers.quant_linear import QuantLinear, fused_max_m

Q = GGMLQuantizationType
SHAPES: list[tuple[int, int]] = [(4096, 4096), (11008, 4096), (4096, 11008), (32000, 4096)]
TYPES: list[GGMLQuantizationType] = [Q.Q4_K, Q.Q6_K, Q.Q8_0, Q.F16]
TABLE_MS = (1, 16, 64, 512)
CROSSOVER_MS = (1, 4, 8, 16)
KERNEL_MAX_M = 16
L2_FLUSH_BYTES = 3 * 50 * 2**20


@dataclass
class Row:
    type: str
    n: int
    k: int
    m: int
    mb: float  # the raw weight's bytes
    cublas_us: float
    dequant_us: float
    fused_us: float | None  # None above the kernel's M


def copies_of(tensor: torch.Tensor) -> list[torch.Tensor]:
    """``tensor`` and enough clones of it that cycling through them streams from HBM, not L2."""
    count = max(1, -(-L2_FLUSH_BYTES // (tensor.numel() * tensor.element_size())))
    return [tensor] + [tensor.clone() for _ in range(count - 1)]


def bench_shape(
    qtype: GGMLQuantizationType, n: int, k: int, ms: list[int], inner: int, reps: int, gen: torch.Generator
) -> list[Row]:
    raw = random_raw(qtype, n, k, gen)
    layers = [QuantLinear(r, qtype, (n, k)) for r in copies_of(raw)]
    weights = copies_of(layers[0].dequantize_weight())  # bf16, by the same row kernel
    rows: list[Row] = []
    for m in ms:
        x = torch.randn(m, k, device="cuda", generator=gen).to(torch.bfloat16)
        cublas = time_us(lambda i, x=x: F.linear(x, weights[i % len(weights)]), inner, reps)
        dequant = time_us(lambda i, x=x: layers[i % len(layers)].dequant_matmul(x), inner, reps)
        fused = None
        if m <= KERNEL_MAX_M:
            fused = time_us(lambda i, x=x: layers[i % len(layers)].fused_matmul(x), inner, reps)
        rows.append(Row(qtype.name, n, k, m, raw.numel() / 1e6, cublas, dequant, fused))
        print(json.dumps(dataclasses.asdict(rows[-1])), flush=True)
    return rows


def dispatch(row: Row) -> tuple[str, float]:
    """The path QuantLinear's dispatch takes for this row's M, and its measured time."""
    if row.fused_us is not None and row.m <= fused_max_m(Q[row.type]):
        return "fused", row.fused_us
    return "dequant", row.dequant_us


def crossover(rows: list[Row], qtype: GGMLQuantizationType) -> tuple[dict[int, tuple[float, float]], float]:
    """Per M: (fused, dequant) time summed over the shapes; and the M where the two lines cross."""
    totals: dict[int, tuple[float, float]] = {}
    for m in CROSSOVER_MS:
        mine = [r for r in rows if r.type == qtype.name and r.m == m and r.fused_us is not None]
        if mine:
            totals[m] = (sum(r.fused_us or 0.0 for r in mine), sum(r.dequant_us for r in mine))
    ms = sorted(totals)
    cross = float(KERNEL_MAX_M)
    for lo, hi in itertools.pairwise(ms):
        d_lo = totals[lo][0] - totals[lo][1]
        d_hi = totals[hi][0] - totals[hi][1]
        if d_lo > 0:  # the fused kernel loses already at the smallest M
            cross = 0.0
            break
        if d_hi > 0:  # it wins at lo and loses at hi: interpolate the crossing of the two (roughly linear) times
            cross = lo + (hi - lo) * (-d_lo) / (d_hi - d_lo)
            break
    return totals, cross


def report(rows: list[Row]) -> None:
    header = "type | N x K | M | weight MB | QuantLinear us (path) | cuBLAS bf16 us | vs cuBLAS | fused us | dequant us"
    print(f"\n| {header} |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if r.m not in TABLE_MS:
            continue
        path, us = dispatch(r)
        fused = f"{r.fused_us:.1f}" if r.fused_us is not None else "-"
        print(
            f"| {r.type} | {r.n}x{r.k} | {r.m} | {r.mb:.1f} | {us:.1f} ({path}) | {r.cublas_us:.1f} | "
            f"{r.cublas_us / us:.2f} | {fused} | {r.dequant_us:.1f} |"
        )
    print("\nCrossover (all shapes summed): fused us / dequant+cuBLAS us per M, and where they cross")
    print("| type | " + " | ".join(f"M={m}" for m in CROSSOVER_MS) + " | crossing M |")
    print("|---|" + "---:|" * (len(CROSSOVER_MS) + 1))
    for qtype in TYPES:
        totals, cross = crossover(rows, qtype)
        if totals:
            cells = " | ".join(f"{totals[m][0]:.0f} / {totals[m][1]:.0f}" if m in totals else "-" for m in CROSSOVER_MS)
            print(f"| {qtype.name} | {cells} | {cross:.1f} |")


def warm(qtype: GGMLQuantizationType) -> None:
    """Compile ``qtype``'s kernels for the M the timed run and the GPU tests use (Triton caches them on disk).

    Triton specializes integer arguments equal to 1 or divisible by 16, so a 4096 x 4096 weight compiles what
    every shape here needs.
    """
    gen = torch.Generator(device="cuda").manual_seed(0)
    n, k = 4096, 4096
    layer = QuantLinear(random_raw(qtype, n, k, gen), qtype, (n, k))
    layer.dequantize_weight(0, 1024, torch.float32)
    if qtype in TYPES:
        for m in sorted(set(CROSSOVER_MS) | {m for m in TABLE_MS if m <= KERNEL_MAX_M}):
            layer.fused_matmul(torch.randn(m, k, device="cuda", dtype=torch.bfloat16))
            layer.fused_matmul(torch.randn(m, k, device="cuda"))  # float32 activations, as the model passes them
        layer(torch.randn(64, k, device="cuda"))
    torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the measurements here")
    parser.add_argument("--inner", type=int, default=20, help="calls per CUDA graph")
    parser.add_argument("--reps", type=int, default=10, help="graph replays (the median is reported)")
    parser.add_argument(
        "--warm", nargs="+", choices=[t.name for t in SUPPORTED_QUANT_TYPES], help="only compile these types' kernels"
    )
    args = parser.parse_args()
    if args.warm:
        for name in args.warm:
            warm(Q[name])
        return
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    ms = sorted(set(TABLE_MS) | set(CROSSOVER_MS))
    rows = [
        row for qtype in TYPES for n, k in SHAPES for row in bench_shape(qtype, n, k, ms, args.inner, args.reps, gen)
    ]
    report(rows)
    if args.json:
        device = torch.cuda.get_device_name()
        args.json.write_text(json.dumps({"device": device, "rows": [dataclasses.asdict(r) for r in rows]}, indent=1))


if __name__ == "__main__":
    main()
