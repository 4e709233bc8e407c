"""CPU batched throughput: rocmforge's continuous batching against one request alone, and against llama.cpp.

The issue's bar: on the CPU with smollm2-135m, 64 requests of 128 prompt / 128 output tokens submitted at once
reach an output tok/s at least 5x the single-request decode tok/s of the same run. In one run:

(a) rocmforge, one 128/128 request alone: decode tok/s = 1 / TPOT, i.e. (output tokens - 1) over the time from
    its first to its last token (prefill excluded, which flatters the single request);
(b) rocmforge, all requests submitted at once through AsyncLLM (max_num_seqs = their number): output tok/s and
    total (prompt + output) tok/s over the whole span, prefill included;
(c) llama-cpp-python on the same GGUF file and the same prompt token ids. Its Python API has no continuous
    batching (one sequence per context), so the requests run one after another: prefill with n_batch 512, then
    single-token decode steps.

Every engine decodes greedily and ignores end-of-generation, so each request produces exactly --output-len tokens.
Prompts are seeded random token ids without special tokens (rocmforge.bench.workload), identical for both engines.
Both engines warm up first on other prompts. Both use the same thread count (torch's default: all cores).

    .venv/bin/python benchmarks/cpu_throughput.py [--dtypes bf16 [f32]] [--num-prompts 64] [--input-len 128]
                                                  [--output-len 128] [--no-llama] [--json results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rocmforge.bench import workload
from rocmforge.bench.report import machine_info
from rocmforge.bench.stats import summarize
from rocmforge.bench.throughput import ThroughputResult, measure_throughput, started_engine
from rocmforge.engine.config import EngineConfig
from rocmforge.hub import resolve_model
from rocmforge.sampling_params import SamplingParams

BAR = 5.0  # batched output tok/s over single-request decode tok/s
WARMUP_REQUESTS = 4
WARMUP_OUTPUT = 8


@dataclass(frozen=True)
class OursResult:
    dtype: str
    single: ThroughputResult
    batched: ThroughputResult

    @property
    def single_decode_tps(self) -> float:
        tpot = self.single.tpot_ms.mean
        assert tpot is not None
        return 1e3 / tpot

    @property
    def ratio(self) -> float:
        return self.batched.output_tokens_per_s / self.single_decode_tps


@dataclass(frozen=True)
class LlamaResult:
    elapsed_s: float
    prompt_tokens: int
    output_tokens: int
    ttft_s: list[float]
    tpot_s: list[float]

    @property
    def output_tps(self) -> float:
        return self.output_tokens / self.elapsed_s

    @property
    def total_tps(self) -> float:
        return (self.prompt_tokens + self.output_tokens) / self.elapsed_s

    @property
    def decode_tps(self) -> float:
        """Single-sequence decode speed: every request here runs alone."""
        return 1.0 / (sum(self.tpot_s) / len(self.tpot_s))


async def bench_ours(
    model: str, dtype: str, warmup: list[list[int]], single: list[int], batch: list[list[int]], output_len: int
) -> OursResult:
    config = EngineConfig(dtype=dtype, max_num_seqs=max(len(batch), 1))
    greedy = SamplingParams(max_tokens=output_len, temperature=0, ignore_eos=True)
    async with started_engine(model, config) as (llm, core):
        workload.check_fits([single, *batch], output_len, core.max_model_len)
        # Warm-up: a small batch through prefill and decode, so first-call costs (allocator, oneDNN primitives
        # for new shapes) fall outside the timed runs.
        await measure_throughput(
            llm, warmup, SamplingParams(max_tokens=WARMUP_OUTPUT, temperature=0, ignore_eos=True), request_prefix="w"
        )
        alone = await measure_throughput(llm, [single], greedy, request_prefix="single")
        print(f"  {dtype}: single request done ({1e3 / (alone.tpot_ms.mean or 1):.1f} tok/s decode)", file=sys.stderr)
        batched = await measure_throughput(llm, batch, greedy, request_prefix="batch", progress=sys.stderr.isatty())
        print(f"  {dtype}: batch done ({batched.output_tokens_per_s:.1f} output tok/s)", file=sys.stderr)
    return OursResult(dtype, alone, batched)


def bench_llama(
    path: Path, warmup: list[list[int]], batch: list[list[int]], output_len: int, threads: int
) -> LlamaResult:
    from llama_cpp import Llama  # test-only dependency: imported here so --no-llama runs without it

    n_ctx = max(len(p) for p in [*warmup, *batch]) + output_len + 8
    llm = Llama(
        model_path=str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False
    )

    def run(prompt: list[int], n_out: int) -> tuple[float, float, float]:
        llm.reset()  # drops the KV cache contents: each prompt is evaluated afresh, as a new request would be
        start = time.perf_counter()
        llm.eval(prompt)
        token = llm.sample(temp=0.0)  # greedy; the low-level loop never stops at end-of-generation
        first = time.perf_counter()
        for _ in range(n_out - 1):
            llm.eval([token])
            token = llm.sample(temp=0.0)
        return start, first, time.perf_counter()

    for prompt in warmup:
        run(prompt, WARMUP_OUTPUT)
    ttft, tpot = [], []
    start = time.perf_counter()
    for prompt in batch:
        submitted, first, finished = run(prompt, output_len)
        ttft.append(first - submitted)
        tpot.append((finished - first) / max(output_len - 1, 1))
    elapsed = time.perf_counter() - start
    llm.close()  # frees the model and context now, not at some later garbage collection
    return LlamaResult(elapsed, sum(len(p) for p in batch), len(batch) * output_len, ttft, tpot)


def format_table(ours: list[OursResult], llama: LlamaResult | None, n: int, input_len: int, output_len: int) -> str:
    lines = [
        f"workload: {n} requests x {input_len} prompt / {output_len} output tokens (greedy, ignore_eos)",
        "",
        "| engine | mode | output tok/s | total tok/s | single decode tok/s | batched / single | mean TTFT ms "
        "| mean TPOT ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in ours:
        b = r.batched
        lines.append(
            f"| rocmforge ({r.dtype}) | 1 request alone | {r.single.output_tokens_per_s:.1f} "
            f"| {r.single.total_tokens_per_s:.1f} | {r.single_decode_tps:.1f} | | {r.single.ttft_ms.mean:.0f} "
            f"| {r.single.tpot_ms.mean:.1f} |"
        )
        lines.append(
            f"| rocmforge ({r.dtype}) | {n} at once, continuous batching | {b.output_tokens_per_s:.1f} "
            f"| {b.total_tokens_per_s:.1f} | | **{r.ratio:.2f}x** | {b.ttft_ms.mean:.0f} | {b.tpot_ms.mean:.1f} |"
        )
    if llama is not None:
        lines.append(
            f"| llama.cpp (llama-cpp-python) | {n} one after another | {llama.output_tps:.1f} | {llama.total_tps:.1f} "
            f"| {llama.decode_tps:.1f} | | {1e3 * sum(llama.ttft_s) / n:.0f} | {1e3 * sum(llama.tpot_s) / n:.1f} |"
        )
        lines.append("")
        for r in ours:
            lines.append(
                f"rocmforge ({r.dtype}) batched / llama.cpp: output tok/s "
                f"{r.batched.output_tokens_per_s / llama.output_tps:.2f}x, "
                f"total tok/s {r.batched.total_tokens_per_s / llama.total_tps:.2f}x; "
                f"single decode {r.single_decode_tps / llama.decode_tps:.2f}x"
            )
    lines.append("")
    for r in ours:
        verdict = "met" if r.ratio >= BAR else "NOT met"
        lines.append(f"rocmforge ({r.dtype}): batched / single = {r.ratio:.2f}x; the {BAR:g}x bar is {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtypes", nargs="+", choices=["bf16", "f16", "f32"], default=["bf16"])
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-llama", action="store_true", help="skip llama-cpp-python")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    threads = torch.get_num_threads()
    machine = machine_info("cpu")
    print(f"threads={threads} torch={torch.__version__} load={os.getloadavg()[0]:.2f}", file=sys.stderr)
    path = resolve_model(args.model)

    # Prompts need the tokenizer (to skip special ids); load it without the weights.
    from rocmforge.gguf.reader import GGUFFile
    from rocmforge.gguf.tokenizer import Tokenizer

    with GGUFFile(path) as gguf_file:
        tokenizer = Tokenizer.from_metadata(dict(gguf_file.metadata), source=str(path))
    pool = workload.sampleable_token_ids(tokenizer)
    count = WARMUP_REQUESTS + 1 + args.num_prompts
    prompts = workload.random_prompts(pool, count, args.input_len, args.seed)
    warmup, single, batch = prompts[:WARMUP_REQUESTS], prompts[WARMUP_REQUESTS], prompts[WARMUP_REQUESTS + 1 :]

    ours = []
    for dtype in args.dtypes:
        ours.append(asyncio.run(bench_ours(args.model, dtype, warmup, single, batch, args.output_len)))
    llama = None
    if not args.no_llama:
        llama = bench_llama(path, warmup, batch, args.output_len, threads)
        print(f"  llama.cpp: done ({llama.output_tps:.1f} output tok/s)", file=sys.stderr)
    print(format_table(ours, llama, args.num_prompts, args.input_len, args.output_len))
    load_after = os.getloadavg()
    print(f"load average after: {load_after[0]:.2f}", file=sys.stderr)
    if args.json:
        payload: dict[str, Any] = {
            "config": vars(args) | {"json": str(args.json), "threads": threads},
            "machine": machine | {"load_average_after": list(load_after)},
            "rocmforge": [
                {
                    "dtype": r.dtype,
                    "single_decode_tokens_per_s": r.single_decode_tps,
                    "batched_over_single": r.ratio,
                    "bar_met": r.ratio >= BAR,
                    "single": r.single.to_dict(),
                    "batched": r.batched.to_dict(),
                }
                for r in ours
            ],
        }
        if llama is not None:
            payload["llama_cpp"] = {
                "mode": "sequential, one request at a time (n_batch 512 prefill, single-token decode)",
                "elapsed_s": llama.elapsed_s,
                "output_tokens_per_s": llama.output_tps,
                "total_tokens_per_s": llama.total_tps,
                "decode_tokens_per_s": llama.decode_tps,
                "ttft_ms": summarize([t * 1e3 for t in llama.ttft_s]).to_dict(),
                "tpot_ms": summarize([t * 1e3 for t in llama.tpot_s]).to_dict(),
            }
        args.json.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
