"""Helpers the GPU benchmarks share: CUDA-graph timing, the copy-bandwidth roofline, random GGUF blocks."""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from tests.quant_blocks import F16_SCALE_OFFSETS


def time_us(fn: Callable[[int], object], inner: int, reps: int) -> float:
    """Median per-call GPU microseconds of ``fn(i)`` over ``reps`` replays of a CUDA graph of ``inner`` calls.

    A graph, because launching from Python (argument checks, Triton's launcher, torch dispatch) takes
    20-30 us a call, longer than most of these kernels run: eager timing would measure the CPU.
    """
    for i in range(inner):  # warm-up: compiles, autotunes, picks cuBLAS kernels, allocates outside the capture
        fn(i)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(inner):
            fn(i)
    graph.replay()
    torch.cuda.synchronize()
    samples: list[float] = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1000.0 / inner)
    del graph
    return statistics.median(samples)


def copy_bandwidth_gbs() -> float:
    """Device-to-device copy of 1 GiB: (read + written bytes) / time, in GB/s (the memory roofline).

    Eager, not in a graph: 1 GiB takes ~0.5 ms so launches do not matter, and a captured copy (a graph memcpy
    node) measured only ~2.8 TB/s on an H200 against ~4.2 TB/s eager.
    """
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    torch.cuda.synchronize()
    samples: list[float] = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) * 1000.0)
    return 2 * 2**30 / statistics.median(samples) / 1e3


def random_raw(qtype: GGMLQuantizationType, n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """Random GGUF bytes (n, row_bytes) on the GPU: random quant bytes, f16 scales uniform in +-0.05."""
    if qtype == GGMLQuantizationType.F16:
        return (torch.randn(n, k, device="cuda", generator=gen) * 0.05).to(torch.float16).view(torch.uint8)
    block, type_size = GGML_QUANT_SIZES[qtype]
    blocks = torch.randint(0, 256, (n * k // block, type_size), device="cuda", dtype=torch.uint8, generator=gen)
    for offset in F16_SCALE_OFFSETS.get(qtype, ()):
        scales = (torch.rand(blocks.shape[0], device="cuda", generator=gen) * 0.1 - 0.05).to(torch.float16)
        blocks[:, offset : offset + 2] = scales.view(torch.uint8).view(-1, 2)
    return blocks.view(n, -1)
