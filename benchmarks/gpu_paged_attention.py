"""Decode-batch timing of the Triton paged attention against the card's copy bandwidth and torch SDPA.

For a batch of decode tokens (one new token per sequence, every sequence with the same context) over a paged
bf16 KV cache with block size 16 and shuffled block tables:

* ``us``: our kernel's time (CUDA events around a CUDA graph of ``--inner`` back-to-back calls, median of
  ``--reps`` replays, after warm-up). Calls cycle through enough copies of the cache (>= 3x a 50 MiB L2) that
  every call streams its keys and values from HBM, as in a real decode step where each layer has its own cache.
* ``GB/s``: K/V bytes the step must read (each sequence's visible keys and values, once) / time.
* ``roof``: that bandwidth over the device-to-device copy bandwidth of 1 GiB measured in the same run,
  counted as (bytes read + bytes written) / time, i.e. what the memory system sustains for a streaming kernel.
* ``sdpa us``: ``torch.nn.functional.scaled_dot_product_attention`` on K/V already gathered into contiguous
  ``[batch, kv_heads, context, head_dim]`` tensors (the gather itself is not timed), the query heads of each
  KV head as its query rows (no K/V repeat), same copy cycling; ``vs sdpa`` = sdpa time / our time.

* ``splits``: how many programs share each sequence's keys (flash-decoding; 1 = the single kernel alone).

``--prefill`` adds causal prefills from scratch (4 x 2048 tokens) against SDPA ``is_causal`` on contiguous
K/V expanded to every query head, in TFLOP/s. ``--sweep`` first times candidate (keys per step, warps, stages)
of the decode and prefill configurations per head dim and the split thresholds, keeps the best and prints them.

Run: ``PYTHONPATH=src python benchmarks/gpu_paged_attention.py [--sweep] [--prefill] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for benchmarks.gpu_common

from benchmarks.gpu_common import copy_bandwidth_gbs, time_us

from rocmforge.kernels.triton import paged_attention as kernels
from rocmforge.kernels.triton.paged_attention import paged_attention_triton
from rocmforge.layers.paged_attention import PagedAttentionMetadata, SequenceSlice

L2_FLUSH_BYTES = 3 * 50 * 2**20
BLOCK_SIZE = 16
DTYPE = torch.bfloat16


@dataclass(frozen=True)
class Shape:
    name: str
    num_heads: int
    num_kv_heads: int
    head_dim: int
    window: int | None = None


QWEN_05B = Shape("qwen2.5-0.5b", 14, 2, 64)
LLAMA_8B = Shape("llama-8b", 32, 8, 128)
GEMMA3_270M = Shape("gemma3-270m", 4, 1, 256, 512)
# (shape, batch, context)
DECODE_CASES: list[tuple[Shape, int, int]] = [
    (QWEN_05B, 64, 1024),
    (QWEN_05B, 64, 4096),
    (LLAMA_8B, 64, 1024),
    (LLAMA_8B, 64, 4096),
    (LLAMA_8B, 8, 4096),
    (GEMMA3_270M, 64, 4096),
]


@dataclass
class DecodeCase:
    q: torch.Tensor  # [batch, num_heads, head_dim]
    caches: list[tuple[torch.Tensor, torch.Tensor]]  # copies of (key_cache, value_cache)
    contiguous: list[tuple[torch.Tensor, torch.Tensor]]  # copies of gathered [batch, kv_heads, ctx, head_dim]
    metadata: PagedAttentionMetadata
    kv_bytes: int  # bytes the step must read


def make_decode_case(shape: Shape, batch: int, context: int, seed: int = 0) -> DecodeCase:
    gen = torch.Generator(device="cuda").manual_seed(seed)
    blocks_per_seq = context // BLOCK_SIZE
    num_blocks = batch * blocks_per_seq
    order = list(range(num_blocks))
    random.Random(seed).shuffle(order)
    tables = [tuple(order[b * blocks_per_seq : (b + 1) * blocks_per_seq]) for b in range(batch)]
    sequences = [SequenceSlice(b, 1, context, tables[b]) for b in range(batch)]
    metadata = PagedAttentionMetadata.build(sequences, BLOCK_SIZE, [shape.window], torch.device("cuda"))
    cache_shape = (num_blocks, BLOCK_SIZE, shape.num_kv_heads, shape.head_dim)
    key = torch.randn(cache_shape, device="cuda", dtype=DTYPE, generator=gen)
    value = torch.randn(cache_shape, device="cuda", dtype=DTYPE, generator=gen)
    n_copies = max(1, -(-L2_FLUSH_BYTES // (2 * key.numel() * key.element_size())))
    caches = [(key, value)] + [(key.clone(), value.clone()) for _ in range(n_copies - 1)]
    # Pre-gathered contiguous K/V for SDPA: [batch, kv_heads, context, head_dim].
    index = metadata.block_tables.long()  # [batch, blocks_per_seq]
    contiguous = []
    for k, v in caches:
        gathered = [
            c[index].reshape(batch, context, shape.num_kv_heads, shape.head_dim).transpose(1, 2) for c in (k, v)
        ]
        contiguous.append((gathered[0].contiguous(), gathered[1].contiguous()))
    q = torch.randn(batch, shape.num_heads, shape.head_dim, device="cuda", dtype=DTYPE, generator=gen)
    visible = min(context, shape.window) if shape.window is not None else context
    kv_bytes = 2 * batch * visible * shape.num_kv_heads * shape.head_dim * key.element_size()
    return DecodeCase(q, caches, contiguous, metadata, kv_bytes)


def _ours(i: int, case: DecodeCase, window: int | None, scale: float) -> torch.Tensor:
    k, v = case.caches[i % len(case.caches)]
    return paged_attention_triton(case.q, k, v, case.metadata, window, scale)


def _sdpa_decode(
    i: int, case: DecodeCase, q_rows: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    k, v = case.contiguous[i % len(case.contiguous)]
    return F.scaled_dot_product_attention(q_rows, k, v, attn_mask=mask, scale=scale)


def bench_decode(shape: Shape, batch: int, context: int, inner: int, reps: int, roof: float) -> dict[str, object]:
    case = make_decode_case(shape, batch, context)
    scale = 1.0 / math.sqrt(shape.head_dim)
    us = time_us(functools.partial(_ours, case=case, window=shape.window, scale=scale), inner, reps)
    group = shape.num_heads // shape.num_kv_heads
    q_rows = case.q.view(batch, shape.num_kv_heads, group, shape.head_dim)
    mask = None
    if shape.window is not None and shape.window < context:
        # The decode token sits at context - 1 and sees the last `window` keys.
        mask = torch.zeros(context, dtype=torch.bool, device="cuda")
        mask[context - shape.window :] = True
        mask = mask.view(1, 1, 1, context)
    sdpa = functools.partial(_sdpa_decode, case=case, q_rows=q_rows, mask=mask, scale=scale)
    sdpa_us = time_us(sdpa, inner, reps)
    gbs = case.kv_bytes / us / 1e3
    splits = kernels._num_splits(case.metadata, 1, shape.num_kv_heads, shape.window, case.q.device)
    return {
        "shape": shape.name,
        "heads": f"{shape.num_heads}/{shape.num_kv_heads}x{shape.head_dim}",
        "window": shape.window,
        "batch": batch,
        "context": context,
        "kv_mb": case.kv_bytes / 1e6,
        "us": us,
        "gbs": gbs,
        "roof": gbs / roof,
        "sdpa_us": sdpa_us,
        "sdpa_gbs": case.kv_bytes / sdpa_us / 1e3,
        "vs_sdpa": sdpa_us / us,
        "splits": splits,
    }


def _prefill_inputs(
    shape: Shape, batch: int, length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, PagedAttentionMetadata]:
    """q, key cache, value cache and metadata of ``batch`` causal prefills of ``length`` tokens from scratch."""
    gen = torch.Generator(device="cuda").manual_seed(1)
    blocks_per_seq = length // BLOCK_SIZE
    order = list(range(batch * blocks_per_seq))
    random.Random(1).shuffle(order)
    sequences = [
        SequenceSlice(b * length, length, length, tuple(order[b * blocks_per_seq : (b + 1) * blocks_per_seq]))
        for b in range(batch)
    ]
    metadata = PagedAttentionMetadata.build(sequences, BLOCK_SIZE, [None], torch.device("cuda"))
    cache_shape = (batch * blocks_per_seq, BLOCK_SIZE, shape.num_kv_heads, shape.head_dim)
    key = torch.randn(cache_shape, device="cuda", dtype=DTYPE, generator=gen)
    value = torch.randn(cache_shape, device="cuda", dtype=DTYPE, generator=gen)
    q = torch.randn(batch * length, shape.num_heads, shape.head_dim, device="cuda", dtype=DTYPE, generator=gen)
    return q, key, value, metadata


def _prefill_fn(shape: Shape, batch: int, length: int) -> Callable[[int], object]:
    q, key, value, metadata = _prefill_inputs(shape, batch, length)
    scale = 1.0 / math.sqrt(shape.head_dim)
    return lambda _: paged_attention_triton(q, key, value, metadata, None, scale)


def bench_prefill(shape: Shape, batch: int, length: int, inner: int, reps: int) -> dict[str, object]:
    q, key, value, metadata = _prefill_inputs(shape, batch, length)
    scale = 1.0 / math.sqrt(shape.head_dim)
    us = time_us(lambda _: paged_attention_triton(q, key, value, metadata, None, scale), inner, reps)
    group = shape.num_heads // shape.num_kv_heads
    index = metadata.block_tables.long()
    k, v = (
        c[index].reshape(batch, length, shape.num_kv_heads, shape.head_dim).repeat_interleave(group, 2).transpose(1, 2)
        for c in (key, value)
    )
    k, v = k.contiguous(), v.contiguous()
    q4 = q.view(batch, length, shape.num_heads, shape.head_dim).transpose(1, 2).contiguous()
    sdpa_us = time_us(lambda _: F.scaled_dot_product_attention(q4, k, v, is_causal=True, scale=scale), inner, reps)
    # Causal: half of the QK^T and PV products, 2 flops per multiply-add each.
    flops = 4 * batch * shape.num_heads * length * length / 2 * shape.head_dim
    return {
        "shape": shape.name,
        "batch": batch,
        "length": length,
        "us": us,
        "tflops": flops / us / 1e6,
        "sdpa_us": sdpa_us,
        "sdpa_tflops": flops / sdpa_us / 1e6,
        "vs_sdpa": sdpa_us / us,
    }


def _timed_configs(
    key: tuple[bool, int],
    candidates: list[tuple[int, int, int, int]],
    fn: Callable[[int], object],
    inner: int,
    reps: int,
) -> list[tuple[float, tuple[int, int, int, int]]]:
    """(us, config) of each candidate for ``TILE_CONFIGS[key]``, fastest first; the fastest is left in place."""
    base = kernels.TILE_CONFIGS[key]
    results: list[tuple[float, tuple[int, int, int, int]]] = []
    for cfg in candidates:
        kernels.TILE_CONFIGS[key] = cfg
        try:
            results.append((time_us(fn, inner, reps), cfg))
        except Exception as exc:  # out of shared memory or registers: skip the candidate
            print(f"sweep {key} {cfg}: {type(exc).__name__}")
    results.sort()
    kernels.TILE_CONFIGS[key] = results[0][1] if results else base
    return results


def _dim_key(decode: bool, head_dim: int) -> tuple[bool, int]:
    return (decode, max(16, 1 << (head_dim - 1).bit_length()))


def sweep(inner: int, reps: int) -> None:
    """Tune decode tiles, then the split thresholds, then prefill tiles; print what was kept."""
    for shape, batch, context in [(QWEN_05B, 64, 4096), (LLAMA_8B, 64, 4096), (GEMMA3_270M, 64, 4096)]:
        key = _dim_key(True, shape.head_dim)
        base = kernels.TILE_CONFIGS[key]
        case = make_decode_case(shape, batch, context)
        scale = 1.0 / math.sqrt(shape.head_dim)
        fn = functools.partial(_ours, case=case, window=shape.window, scale=scale)
        candidates = [(base[0], *c) for c in itertools.product((64, 128), (4, 8), (2, 3, 4))]
        results = _timed_configs(key, candidates, fn, inner, reps)
        line = ", ".join(f"{cfg[1:]}={us:.1f}" for us, cfg in results[:6])
        print(f"sweep decode {shape.name} b{batch} ctx{context} base={base[1:]} (tile_n, warps, stages)=us: {line}")
        del case, fn
        torch.cuda.empty_cache()
    sweep_splits(inner, reps)
    for shape in (QWEN_05B, LLAMA_8B):
        key = _dim_key(False, shape.head_dim)
        base = kernels.TILE_CONFIGS[key]
        fn = _prefill_fn(shape, 4, 2048)
        candidates = list(itertools.product((64, 128), (32, 64), (4, 8), (2, 3)))
        results = _timed_configs(key, candidates, fn, 3, reps)
        line = ", ".join(f"{cfg}={us:.1f}" for us, cfg in results[:6])
        print(f"sweep prefill {shape.name} 4x2048 base={base} (rows, tile_n, warps, stages)=us: {line}")
    print(f"kept TILE_CONFIGS = {kernels.TILE_CONFIGS}", flush=True)


def sweep_splits(inner: int, reps: int) -> None:
    """Time split thresholds (programs per multiprocessor below which keys are split, keys per split)."""
    cases = [(QWEN_05B, 64, 1024), (QWEN_05B, 64, 4096), (LLAMA_8B, 64, 1024), (LLAMA_8B, 8, 4096)]
    cases.append((GEMMA3_270M, 64, 4096))
    built = [(shape, make_decode_case(shape, batch, context)) for shape, batch, context in cases]
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    candidates = [(0, 128), *itertools.product((2, 3, 4, 8), (64, 128, 256))]
    timed: list[tuple[tuple[int, int], list[float]]] = []
    for per_sm, min_keys in candidates:
        kernels.SPLIT_BELOW_PROGRAMS, kernels.SPLIT_MIN_KEYS = per_sm * sms, min_keys
        times = []
        for shape, case in built:
            scale = 1.0 / math.sqrt(shape.head_dim)
            times.append(time_us(functools.partial(_ours, case=case, window=shape.window, scale=scale), inner, reps))
        timed.append(((per_sm, min_keys), times))
    best = [min(times[i] for _, times in timed) for i in range(len(cases))]
    # Score: the sum over cases of time / the best time of that case.
    ranked = sorted((sum(t / b for t, b in zip(times, best, strict=True)), cfg, times) for cfg, times in timed)
    for score, cfg, times in ranked:
        print(
            f"sweep splits per_sm={cfg[0]} min_keys={cfg[1]}: score {score:.2f} us "
            + " ".join(f"{t:.1f}" for t in times)
        )
    per_sm, min_keys = ranked[0][1]
    kernels.SPLIT_BELOW_PROGRAMS, kernels.SPLIT_MIN_KEYS = per_sm * sms, min_keys
    print(f"kept split below {per_sm} programs per SM, min keys {min_keys}", flush=True)
    built.clear()
    torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inner", type=int, default=20)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--sweep", action="store_true", help="tune the tile configs and split thresholds first")
    parser.add_argument("--prefill", action="store_true", help="also time causal prefills against SDPA")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.sweep:
        sweep(10, 5)
    roof = copy_bandwidth_gbs()
    rows = []
    for shape, batch, context in DECODE_CASES:
        rows.append(bench_decode(shape, batch, context, args.inner, args.reps, roof))
        torch.cuda.empty_cache()
    prefill = [bench_prefill(s, 4, 2048, 5, args.reps) for s in (QWEN_05B, LLAMA_8B)] if args.prefill else []
    print(f"card: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(f"roofline: D2D copy of 1 GiB, (read+write bytes)/time = {roof:.0f} GB/s")
    columns = ["shape", "heads/kv x dim", "window", "batch x ctx", "KV MB", "splits", "us", "GB/s", "roof"]
    columns += ["sdpa us", "sdpa GB/s", "vs sdpa"]
    print("| " + " | ".join(columns) + " |")
    print("|---|---|---:|---|" + "---:|" * (len(columns) - 4))
    for r in rows:
        print(
            f"| {r['shape']} | {r['heads']} | {r['window'] or '-'} | {r['batch']}x{r['context']} | {r['kv_mb']:.1f} "
            f"| {r['splits']} | {r['us']:.1f} | {r['gbs']:.0f} | {r['roof']:.0%} | {r['sdpa_us']:.1f} "
            f"| {r['sdpa_gbs']:.0f} | {r['vs_sdpa']:.2f} |"
        )
    if prefill:
        print("| prefill shape | batch x len | us | TFLOP/s | sdpa us | sdpa TFLOP/s | vs sdpa |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for r in prefill:
            print(
                f"| {r['shape']} | {r['batch']}x{r['length']} | {r['us']:.1f} | {r['tflops']:.0f} "
                f"| {r['sdpa_us']:.1f} | {r['sdpa_tflops']:.0f} | {r['vs_sdpa']:.2f} |"
            )
    if args.json:
        payload = {"card": torch.cuda.get_device_name(), "roof_gbs": roof, "decode": rows, "prefill": prefill}
        args.json.write_text(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
