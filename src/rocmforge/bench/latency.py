"""Latency benchmark (vLLM's benchmark_latency): time one whole batch ``generate`` end to end, several times.

Each iteration, warm-up ones included, gets fresh random prompts: repeating a batch would find its prompts in
the prefix cache and time a prefill that never happens.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rocmforge.bench.stats import Summary, summarize
from rocmforge.engine.llm import LLM
from rocmforge.errors import EngineDeadError
from rocmforge.sampling_params import SamplingParams

LATENCY_PERCENTILES = (10.0, 25.0, 50.0, 75.0, 90.0, 99.0)  # what vLLM's benchmark_latency reports


@dataclass(frozen=True)
class LatencyResult:
    batch_size: int
    prompt_tokens: int  # per iteration, all requests together
    output_tokens: int  # per iteration, all requests together
    latencies_s: tuple[float, ...]
    latency_s: Summary

    @property
    def output_tokens_per_s(self) -> float:
        """Output tokens of one batch over its mean latency."""
        assert self.latency_s.mean is not None
        return self.output_tokens / self.latency_s.mean

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_size": self.batch_size,
            "prompt_tokens_per_iteration": self.prompt_tokens,
            "output_tokens_per_iteration": self.output_tokens,
            "avg_latency_s": self.latency_s.mean,
            "latency_s": self.latency_s.to_dict(),
            "output_tokens_per_s": self.output_tokens_per_s,
            "latencies_s": list(self.latencies_s),
        }


def measure_latency(
    llm: LLM,
    batches: Sequence[Sequence[list[int]]],
    params: SamplingParams,
    num_warmup: int,
    percentiles: Sequence[float] = LATENCY_PERCENTILES,
) -> LatencyResult:
    """Run ``batches[:num_warmup]`` untimed, then time each remaining batch's ``llm.generate``."""
    if num_warmup < 0 or len(batches) <= num_warmup:
        raise ValueError(f"need more than {num_warmup} batches, got {len(batches)}")
    sizes = {len(batch) for batch in batches}
    if len(sizes) != 1:
        raise ValueError(f"batches differ in size: {sorted(sizes)}")
    for batch in batches[:num_warmup]:
        llm.generate(list(batch), params)
    latencies: list[float] = []
    output_tokens = 0
    for batch in batches[num_warmup:]:
        start = time.perf_counter()
        outputs = llm.generate(list(batch), params)
        latencies.append(time.perf_counter() - start)
        output_tokens = sum(len(c.token_ids) for out in outputs for c in out.outputs)
        if any(c.finish_reason == "abort" for out in outputs for c in out.outputs):
            raise EngineDeadError("a benchmark request was aborted")  # its latency would mean nothing
    timed = batches[num_warmup]
    return LatencyResult(
        batch_size=len(timed),
        prompt_tokens=sum(len(p) for p in timed),
        output_tokens=output_tokens,
        latencies_s=tuple(latencies),
        latency_s=summarize(latencies, percentiles),
    )
