"""Decode GEMV (M = 1) over packed Q4_K/Q6_K weights: ``packed_gemv`` (swept launches) against packed_matmul.

For the 7B shapes, per-call microseconds of ``packed_gemv`` at each swept configuration (``--committed``: only the
type's committed configuration), ``packed_matmul`` at
M = 1 (the committed config) and ``F.linear`` on a bf16 weight of the same shape (what a bf16 model runs), with
the achieved bandwidth of the quantized bytes as a fraction of the copy bandwidth measured in the same run.
Timing as benchmarks/gpu_linear.py: CUDA-graph replays cycling through enough weight copies that every call
reads from HBM. bf16 activations.

Run: ``PYTHONPATH=src:<gguf>:. python3 benchmarks/gpu_gemv.py``
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from gguf.constants import GGMLQuantizationType

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.gpu_common import copy_bandwidth_gbs, random_raw, time_us
from benchmarks.gpu_linear import num_copies

from rocmforge.kernels.triton.packed_gemv import CONFIGS, GemvConfig, packed_gemv
from rocmforge.kernels.triton.packed_matmul import packed_matmul
from rocmforge.layers.packed_weight import TILE_ROWS, pack

SHAPES = [(4096, 4096), (11008, 4096), (4096, 11008), (32000, 4096)]
# Both types: the 64-row column tile with programs per SM, warps and rows a thread swept.
SWEEP = [GemvConfig(TILE_ROWS, *c) for c in itertools.product((4, 8, 16, 32), (1, 2, 4, 8), (1, 2, 4))]


def _name(config: GemvConfig) -> str:
    return f"gemv bn={config.block_n} sm={config.programs_per_sm} w={config.num_warps} r={config.rows_per_thread}"


def time_shape(
    qtype: GGMLQuantizationType, n: int, k: int, gen: torch.Generator, sweep: list[GemvConfig]
) -> tuple[dict[str, float], int]:
    """Per-call microseconds of every variant at one shape, and the quantized weight's bytes."""
    raw = random_raw(qtype, n, k, gen)
    packs = [pack(raw.clone(), qtype, (n, k)) for _ in range(num_copies(raw.numel()))]
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    expected = packed_matmul(x, packs[0]).float()
    times = {"packed_matmul": time_us(lambda i: packed_matmul(x, packs[i % len(packs)]), 20, 10)}
    for config in sweep:
        got = packed_gemv(x, packs[0], config=config).float()
        error = ((got - expected).norm() / expected.norm()).item()
        assert error < 1e-2, f"{_name(config)} disagrees with packed_matmul: relative error {error:.3g}"

        def call(i: int, c: GemvConfig = config) -> torch.Tensor:
            return packed_gemv(x, packs[i % len(packs)], config=c)

        times[_name(config)] = time_us(call, 20, 10)
    dense = [torch.empty(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(num_copies(2 * n * k))]
    times["cublas bf16"] = time_us(lambda i: F.linear(x, dense[i % len(dense)]), 20, 10)
    return times, raw.numel()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--types", nargs="+", default=["Q4_K", "Q6_K"])
    parser.add_argument("--committed", action="store_true", help="time only each type's committed configuration")
    args = parser.parse_args()
    bandwidth = copy_bandwidth_gbs()
    print(f"card: {torch.cuda.get_device_name()}, copy bandwidth {bandwidth:.0f} GB/s", flush=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    for type_name in args.types:
        qtype = GGMLQuantizationType[type_name]
        totals: dict[str, float] = {}
        total_bytes = 0
        for n, k in SHAPES:
            times, nbytes = time_shape(qtype, n, k, gen, [CONFIGS[qtype]] if args.committed else SWEEP)
            total_bytes += nbytes
            for name, us in times.items():
                totals[name] = totals.get(name, 0.0) + us
            best_us, best = min((t, name) for name, t in times.items() if name.startswith("gemv"))
            print(
                f"{type_name} {n}x{k}: packed_matmul {times['packed_matmul']:.1f} us, best {best} {best_us:.1f} us "
                f"({nbytes / best_us / 1e3 / bandwidth:.0%} of copy), cuBLAS bf16 {times['cublas bf16']:.1f} us",
                flush=True,
            )
        print(f"{type_name} summed over the shapes (quantized bytes / time, fraction of the copy bandwidth):")
        for name, us in sorted(totals.items(), key=lambda item: item[1])[:8]:
            gbs = total_bytes / us / 1e3
            print(f"  {name:<32} {us:8.1f} us  {gbs:6.0f} GB/s  {gbs / bandwidth:5.1%}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
