"""CPU prefill and decode throughput of rocmforge's reference path against llama.cpp (llama-cpp-python).

Both engines get the same token ids (from llama.cpp's tokenizer), the same thread count and the same work:
prefill = one forward pass over the prompt, decode = single-token steps, each followed by a greedy pick.
A warm-up run of each comes first; each figure is the median over --repeats runs, the engines interleaved so
that a change in machine load hits both alike.

    .venv/bin/python benchmarks/cpu_decode.py [--models smollm2-135m ...] [--dtype bf16|f32] [--repeats 3]
                                              [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from rocmforge.hub import resolve_model
from rocmforge.layers.sampler import make_generator, sample_token
from rocmforge.models.decoder import DecoderModel
from rocmforge.models.loader import load_model
from rocmforge.sampling_params import SamplingParams

MODELS = ("smollm2-135m", "qwen2.5-coder-0.5b", "gemma3-270m")
DTYPES = {"bf16": torch.bfloat16, "f32": torch.float32}
N_CTX = 1024

# Plain English prose, repeated as needed: every model's tokenizer yields ordinary, non-degenerate tokens for it.
PROMPT_TEXT = (
    "The old lighthouse keeper climbed the spiral stairs every evening, counting the steps as his father had "
    "taught him. From the lantern room he could see the whole bay: the fishing boats returning with the tide, "
    "the gulls wheeling above the harbour wall, and the long line of cliffs that ran north towards the village. "
    "He trimmed the wick, polished the great lens until it shone, and wrote the weather in his logbook in a "
    "small, careful hand. Storms came often in the autumn, and on those nights he did not sleep at all, but sat "
    "by the window with a mug of tea, watching the beam sweep across the black water and listening to the wind "
    "rattle the glass. Sailors in the town said that as long as the light turned, no ship would be lost on the "
    "rocks, and for forty years they had been right. "
)


@dataclass
class Timing:
    prefill_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)  # greedy output of the last run, for a sanity comparison


@dataclass
class Result:
    model: str
    dtype: str
    threads: int
    prompt_tokens: int
    decode_tokens: int
    ours_prefill_tps: float
    llama_prefill_tps: float
    ours_decode_tps: float
    llama_decode_tps: float
    same_greedy_tokens: int  # leading generated tokens on which both engines agree
    raw: dict[str, dict[str, list[float]]]


def prompt_ids(llm: object, n: int) -> list[int]:
    """The first n token ids of PROMPT_TEXT (repeated) under llama.cpp's tokenizer, BOS included if it adds one."""
    text = PROMPT_TEXT
    while True:
        ids: list[int] = llm.tokenize(text.encode(), add_bos=True, special=False)  # type: ignore[attr-defined]
        if len(ids) >= n:
            return ids[:n]
        text += PROMPT_TEXT


def run_ours(model: DecoderModel, ids: list[int], n_decode: int, timing: Timing) -> None:
    greedy = SamplingParams(temperature=0)
    generator = make_generator(0)  # unused by greedy picks; sample_token wants one
    cache = model.new_kv_cache(len(ids) + n_decode + 1)
    start = time.perf_counter()
    logits = model.forward(torch.tensor(ids, dtype=torch.long), 0, cache)
    token = sample_token(logits[-1], greedy, ids, generator)
    timing.prefill_s.append(time.perf_counter() - start)
    out = [token]
    start = time.perf_counter()
    for step in range(n_decode):
        logits = model.forward(torch.tensor([token], dtype=torch.long), len(ids) + step, cache)
        token = sample_token(logits[-1], greedy, ids, generator)
        out.append(token)
    timing.decode_s.append(time.perf_counter() - start)
    timing.tokens = out


def run_llama(llm: object, ids: list[int], n_decode: int, timing: Timing) -> None:
    llm.reset()  # type: ignore[attr-defined]  # drops the KV cache contents: the prompt is evaluated afresh
    start = time.perf_counter()
    llm.eval(ids)  # type: ignore[attr-defined]
    token = llm.sample(temp=0.0)  # type: ignore[attr-defined]  # greedy
    timing.prefill_s.append(time.perf_counter() - start)
    out = [token]
    start = time.perf_counter()
    for _ in range(n_decode):
        llm.eval([token])  # type: ignore[attr-defined]
        token = llm.sample(temp=0.0)  # type: ignore[attr-defined]
        out.append(token)
    timing.decode_s.append(time.perf_counter() - start)
    timing.tokens = out


def bench_model(name: str, dtype: str, threads: int, n_prompt: int, n_decode: int, repeats: int) -> Result:
    from llama_cpp import Llama  # test-only dependency: imported here so --help works without it

    path = resolve_model(name)
    llm = Llama(
        model_path=str(path), n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False
    )
    ids = prompt_ids(llm, n_prompt)
    model = load_model(path, dtype=DTYPES[dtype])
    ours, theirs = Timing(), Timing()
    runs: list[tuple[Callable[..., None], object, Timing]] = [(run_ours, model, ours), (run_llama, llm, theirs)]
    for run, engine, _ in runs:  # warm-up: allocator, thread pools, oneDNN primitive caches, page cache
        run(engine, ids, n_decode, Timing())
    for _ in range(repeats):
        for run, engine, timing in runs:
            run(engine, ids, n_decode, timing)
    same = 0
    for a, b in zip(ours.tokens, theirs.tokens, strict=False):
        if a != b:
            break
        same += 1
    del llm
    return Result(
        model=name,
        dtype=dtype,
        threads=threads,
        prompt_tokens=n_prompt,
        decode_tokens=n_decode,
        ours_prefill_tps=n_prompt / statistics.median(ours.prefill_s),
        llama_prefill_tps=n_prompt / statistics.median(theirs.prefill_s),
        ours_decode_tps=n_decode / statistics.median(ours.decode_s),
        llama_decode_tps=n_decode / statistics.median(theirs.decode_s),
        same_greedy_tokens=same,
        raw={
            "rocmforge": {"prefill_s": ours.prefill_s, "decode_s": ours.decode_s},
            "llama.cpp": {"prefill_s": theirs.prefill_s, "decode_s": theirs.decode_s},
        },
    )


def format_table(results: list[Result]) -> str:
    header = (
        "| model | ours prefill tok/s | llama.cpp prefill tok/s | ratio | ours decode tok/s | llama.cpp decode tok/s "
        "| ratio |"
    )
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(
            f"| {r.model} ({r.dtype}) | {r.ours_prefill_tps:.1f} | {r.llama_prefill_tps:.1f} "
            f"| {r.ours_prefill_tps / r.llama_prefill_tps:.2f}x | {r.ours_decode_tps:.1f} | {r.llama_decode_tps:.1f} "
            f"| {r.ours_decode_tps / r.llama_decode_tps:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="rocmforge weight dtype")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--decode-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="default: all cores")
    parser.add_argument("--json", type=Path, help="also write the results (and every raw timing) here")
    args = parser.parse_args(argv)
    if args.prompt_tokens + args.decode_tokens + 1 > N_CTX:
        parser.error(f"prompt + decode tokens must fit llama.cpp's n_ctx of {N_CTX}")

    torch.set_num_threads(args.threads)
    print(
        f"threads={args.threads} torch={torch.__version__} dtype={args.dtype} repeats={args.repeats} "
        f"load={os.getloadavg()[0]:.2f}",
        file=sys.stderr,
    )
    results = []
    for name in args.models:
        result = bench_model(name, args.dtype, args.threads, args.prompt_tokens, args.decode_tokens, args.repeats)
        print(f"{name}: done (greedy outputs agree on {result.same_greedy_tokens} tokens)", file=sys.stderr)
        results.append(result)
    print(format_table(results))
    print(f"load average after: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    if args.json:
        meta = {"machine": platform.processor() or platform.machine(), "load_average": os.getloadavg()}
        args.json.write_text(json.dumps({"meta": meta, "results": [asdict(r) for r in results]}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
