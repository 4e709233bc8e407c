"""Decode GEMV (M = 1) over packed Q4_K weights: the per-sub-block-scale kernel against packed_matmul and cuBLAS.

For the 7B shapes, per-call microseconds of ``q4_k_gemv`` (each swept launch configuration), ``packed_matmul`` at
M = 1 (the committed config) and ``F.linear`` on the same weight dequantized to bf16 (what a bf16 model runs),
with the achieved bandwidth of the Q4_K bytes as a fraction of the copy bandwidth measured in the same run.
Timing as benchmarks/gpu_linear.py: CUDA-graph replays cycling through enough weight copies that every call
reads from HBM. bf16 activations.

Run: ``PYTHONPATH=src:<gguf>:. python3 benchmarks/gpu_gemv.py``
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from gguf.constants import GGMLQuantizationType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_common import copy_bandwidth_gbs, random_raw, time_us
from benchmarks.gpu_linear import num_copies

from rocmforge.kernels.triton.packed_gemv import q4_k_gemv
from rocmforge.kernels.triton.packed_matmul import packed_matmul
from rocmforge.layers.packed_weight import pack

Q4_K = GGMLQuantizationType.Q4_K
SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (32000, 4096)]
SWEEP = list(itertools.product((8, 16, 32), (4, 8, 16), (2, 4, 8)))  # block_n, programs_per_sm, num_warps


def time_shape(n: int, k: int, gen: torch.Generator) -> tuple[dict[str, float], int]:
    """Per-call microseconds of every variant at one shape, and the Q4_K weight's bytes."""
    raw = random_raw(Q4_K, n, k, gen)
    packs = [pack(raw.clone(), Q4_K, (n, k)) for _ in range(num_copies(raw.numel()))]
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    expected = packed_matmul(x, packs[0]).float()
    times = {"packed_matmul": time_us(lambda i: packed_matmul(x, packs[i % len(packs)]), 20, 10)}
    for block_n, per_sm, warps in SWEEP:
        got = q4_k_gemv(x, packs[0], block_n=block_n, programs_per_sm=per_sm, num_warps=warps).float()
        error = ((got - expected).norm() / expected.norm()).item()
        assert error < 1e-2, f"q4_k_gemv {block_n}/{per_sm}/{warps} disagrees: relative error {error:.3g}"

        def call(i: int, b: int = block_n, p: int = per_sm, w: int = warps) -> torch.Tensor:
            return q4_k_gemv(x, packs[i % len(packs)], block_n=b, programs_per_sm=p, num_warps=w)

        times[f"gemv bn={block_n} sm={per_sm} w={warps}"] = time_us(call, 20, 10)
    dense = [torch.empty(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(num_copies(2 * n * k))]
    times["cublas bf16"] = time_us(lambda i: F.linear(x, dense[i % len(dense)]), 20, 10)
    return times, raw.numel()


def main() -> int:
    bandwidth = copy_bandwidth_gbs()
    print(f"card: {torch.cuda.get_device_name()}, copy bandwidth {bandwidth:.0f} GB/s", flush=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    totals: dict[str, float] = {}
    total_bytes = 0
    for n, k in SHAPES:
        times, nbytes = time_shape(n, k, gen)
        total_bytes += nbytes
        for name, us in times.items():
            totals[name] = totals.get(name, 0.0) + us
        best_us, best = min((t, name) for name, t in times.items() if name.startswith("gemv"))
        print(
            f"{n}x{k}: packed_matmul {times['packed_matmul']:.1f} us, best gemv {best_us:.1f} us ({best}), "
            f"cuBLAS bf16 {times['cublas bf16']:.1f} us; gemv {nbytes / best_us / 1e3:.0f} GB/s = "
            f"{nbytes / best_us / 1e3 / bandwidth:.0%} of copy",
            flush=True,
        )
    print("\nsummed over the shapes (Q4_K bytes / time as a fraction of the copy bandwidth):")
    for name, us in sorted(totals.items(), key=lambda item: item[1])[:12]:
        gbs = total_bytes / us / 1e3
        print(f"  {name:<32} {us:8.1f} us  {gbs:6.0f} GB/s  {gbs / bandwidth:5.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
