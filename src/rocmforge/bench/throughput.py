"""Throughput benchmark: submit every prompt at once and time each request's stream.

Everything goes through AsyncLLM so that each request's first token and finish can be timed as its caller
sees them (vLLM's benchmark_serving measures the same way). Per request:

- TTFT: first streamed output - submission;
- TPOT: (finish - first output) / (output tokens - 1), only for requests with more than one output token;
- ITL: the gaps between successive streamed outputs;
- E2E: finish - submission.

Elapsed time runs from the first submission to the last finish; requests/s, output tok/s and total tok/s
(prompt + output) are over that span.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rocmforge.bench.stats import DEFAULT_PERCENTILES, Summary, summarize
from rocmforge.engine.async_llm import AsyncLLM
from rocmforge.engine.config import EngineConfig
from rocmforge.engine.core import EngineCore
from rocmforge.sampling_params import SamplingParams


@dataclass(frozen=True)
class RequestTiming:
    """One request's token counts and times (time.perf_counter seconds)."""

    prompt_tokens: int
    output_tokens: int
    submitted: float
    first_token: float | None
    finished: float
    cached_tokens: int = 0
    inter_token_s: tuple[float, ...] = ()  # gaps between successive streamed outputs

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.submitted

    @property
    def tpot_s(self) -> float | None:
        if self.first_token is None or self.output_tokens < 2:
            return None  # one token has no "per output token after the first"
        return (self.finished - self.first_token) / (self.output_tokens - 1)

    @property
    def e2e_s(self) -> float:
        return self.finished - self.submitted


@dataclass(frozen=True)
class ThroughputResult:
    num_requests: int
    elapsed_s: float
    prompt_tokens: int
    output_tokens: int
    cached_tokens: int
    ttft_ms: Summary
    tpot_ms: Summary
    itl_ms: Summary
    e2e_ms: Summary
    requests: tuple[RequestTiming, ...]

    @property
    def requests_per_s(self) -> float:
        return self.num_requests / self.elapsed_s

    @property
    def output_tokens_per_s(self) -> float:
        return self.output_tokens / self.elapsed_s

    @property
    def total_tokens_per_s(self) -> float:
        return (self.prompt_tokens + self.output_tokens) / self.elapsed_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_requests": self.num_requests,
            "elapsed_s": self.elapsed_s,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "cached_prompt_tokens": self.cached_tokens,
            "requests_per_s": self.requests_per_s,
            "output_tokens_per_s": self.output_tokens_per_s,
            "total_tokens_per_s": self.total_tokens_per_s,
            "ttft_ms": self.ttft_ms.to_dict(),
            "tpot_ms": self.tpot_ms.to_dict(),
            "itl_ms": self.itl_ms.to_dict(),
            "e2e_ms": self.e2e_ms.to_dict(),
            "requests": [
                {
                    "prompt_tokens": t.prompt_tokens,
                    "output_tokens": t.output_tokens,
                    "cached_prompt_tokens": t.cached_tokens,
                    "ttft_ms": _ms(t.ttft_s),
                    "tpot_ms": _ms(t.tpot_s),
                    "e2e_ms": _ms(t.e2e_s),
                }
                for t in self.requests
            ],
        }


def summarize_run(
    timings: Sequence[RequestTiming], elapsed_s: float, percentiles: Sequence[float] = DEFAULT_PERCENTILES
) -> ThroughputResult:
    """Totals and per-request latency summaries (in milliseconds) of a finished run."""
    if not timings:
        raise ValueError("no requests to summarize")
    if elapsed_s <= 0:
        raise ValueError(f"elapsed time must be > 0, got {elapsed_s}")

    def ms(values: Sequence[float | None]) -> Summary:
        return summarize([v * 1e3 for v in values if v is not None], percentiles)

    return ThroughputResult(
        num_requests=len(timings),
        elapsed_s=elapsed_s,
        prompt_tokens=sum(t.prompt_tokens for t in timings),
        output_tokens=sum(t.output_tokens for t in timings),
        cached_tokens=sum(t.cached_tokens for t in timings),
        ttft_ms=ms([t.ttft_s for t in timings]),
        tpot_ms=ms([t.tpot_s for t in timings]),
        itl_ms=ms([gap for t in timings for gap in t.inter_token_s]),
        e2e_ms=ms([t.e2e_s for t in timings]),
        requests=tuple(timings),
    )


async def time_request(llm: AsyncLLM, request_id: str, prompt: list[int], params: SamplingParams) -> RequestTiming:
    """Stream one request to its end and time it from the moment it is handed to the engine."""
    submitted = time.perf_counter()
    first: float | None = None
    last = submitted
    gaps: list[float] = []
    output_tokens = cached = 0
    async for output in llm.generate(prompt, params, request_id=request_id):
        now = time.perf_counter()
        new_tokens = sum(len(completion.token_ids) for completion in output.outputs)
        if new_tokens:
            if first is None:
                first = now
            else:
                gaps.append(now - last)
            last = now
        output_tokens += new_tokens
        cached = output.metrics.num_cached_tokens
    return RequestTiming(len(prompt), output_tokens, submitted, first, time.perf_counter(), cached, tuple(gaps))


async def measure_throughput(
    llm: AsyncLLM,
    prompts: Sequence[list[int]],
    params: SamplingParams,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    progress: bool = False,
    request_prefix: str = "bench",
) -> ThroughputResult:
    """Submit every prompt at once on a started engine and wait for all; the scheduler batches them."""
    if not prompts:
        raise ValueError("no prompts to run")
    bar = tqdm(total=len(prompts), desc="requests", unit="req", disable=not progress, leave=False)

    async def one(index: int, prompt: list[int]) -> RequestTiming:
        timing = await time_request(llm, f"{request_prefix}-{index}", prompt, params)
        bar.update()
        return timing

    start = time.perf_counter()
    tasks = [asyncio.create_task(one(i, prompt)) for i, prompt in enumerate(prompts)]
    try:
        timings = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:  # one failure ends the run: leaving the rest would keep the engine busy
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        bar.close()
    elapsed = max(t.finished for t in timings) - start
    return summarize_run(timings, elapsed, percentiles)


@asynccontextmanager
async def started_engine(model: str | Path, config: EngineConfig) -> AsyncIterator[tuple[AsyncLLM, EngineCore]]:
    """A loaded, warmed-up AsyncLLM and its core (for the vocabulary size and max_model_len); shut down after."""
    llm = AsyncLLM(model, config)
    await llm.start()
    try:
        core = llm.engine.core
        assert core is not None  # set before the engine reports itself started
        yield llm, core
    finally:
        await llm.shutdown()


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3
