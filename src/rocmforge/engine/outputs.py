"""Messages out of the engine: the core's per-step deltas, and the front ends' per-request outputs."""

from __future__ import annotations

from dataclasses import dataclass, field

from rocmforge.layers.sampler import SampleOutput


@dataclass(frozen=True)
class EngineCoreOutput:
    """One sample's new tokens from one step (core -> front end); ``error`` set means it failed instead."""

    request_id: str
    index: int  # which of the request's n samples
    new_token_ids: tuple[int, ...] = ()
    new_logprobs: tuple[SampleOutput, ...] = ()  # one per new token when the request asked for logprobs
    finish_reason: str | None = None
    stop_token_id: int | None = None
    num_cached_tokens: int = 0
    error: BaseException | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None or self.error is not None


@dataclass
class CompletionOutput:
    """One of a request's n samples. In a stream each output carries only what is new since the last one."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[SampleOutput] | None = None
    finish_reason: str | None = None  # "stop", "length" or "abort"
    stop_reason: str | int | None = None  # the stop string or stop token id that ended it, if any

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    """Wall-clock times (time.monotonic) and token counts of one request, for latency metrics."""

    arrival_time: float
    first_token_time: float | None = None
    finished_time: float | None = None
    num_prompt_tokens: int = 0
    num_generation_tokens: int = 0
    num_cached_tokens: int = 0


@dataclass
class RequestOutput:
    """What a front end hands its caller for one request: a streamed delta, or the final whole result."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics = field(default_factory=lambda: RequestMetrics(0.0))
