"""Front-end side of a request: core deltas -> text deltas (detokenizer, stop strings) and the final result.

Both front ends (LLM, AsyncLLM) keep one RequestState per request on their own thread; the core never
sees text. The token that ends a sample (end-of-generation or a stop token id) is in its token_ids, as
vLLM reports it, but never in its text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rocmforge.engine.detokenizer import IncrementalDetokenizer
from rocmforge.engine.outputs import CompletionOutput, EngineCoreOutput, RequestMetrics, RequestOutput
from rocmforge.gguf.tokenizer import Tokenizer
from rocmforge.layers.sampler import SampleOutput
from rocmforge.sampling_params import SamplingParams


@dataclass
class _SampleState:
    detokenizer: IncrementalDetokenizer
    text_pieces: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[SampleOutput] | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None


@dataclass(frozen=True)
class ProcessedOutput:
    """One core output seen by the front end: the caller's delta, and whether the core must abort the sample
    (a stop string ended it before the core knew)."""

    delta: RequestOutput
    abort_sample: int | None = None


class RequestState:
    def __init__(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        tokenizer: Tokenizer,
        arrival_time: float | None = None,
    ) -> None:
        self.request_id = request_id
        self.prompt = prompt
        self.prompt_token_ids = prompt_token_ids
        self.params = params
        self.metrics = RequestMetrics(
            arrival_time if arrival_time is not None else time.monotonic(), num_prompt_tokens=len(prompt_token_ids)
        )
        self._samples = [
            _SampleState(
                IncrementalDetokenizer(tokenizer, prompt_token_ids, params.stop, params.include_stop_str_in_output),
                logprobs=[] if params.logprobs is not None else None,
            )
            for _ in range(params.n)
        ]

    @property
    def finished(self) -> bool:
        return all(sample.finish_reason is not None for sample in self._samples)

    def process(self, output: EngineCoreOutput) -> ProcessedOutput | None:
        """Fold one core output in; None when it changes nothing (a sample already ended by a stop string)."""
        sample = self._samples[output.index]
        if sample.finish_reason is not None:
            return None
        now = time.monotonic()
        new_ids = list(output.new_token_ids)
        if new_ids and self.metrics.first_token_time is None:
            self.metrics.first_token_time = now
            self.metrics.num_cached_tokens = output.num_cached_tokens
        self.metrics.num_generation_tokens += len(new_ids)
        text_ids = new_ids[:-1] if output.stop_token_id is not None and output.finish_reason == "stop" else new_ids
        delta = sample.detokenizer.update(text_ids)
        text = delta.text
        finish_reason, stop_reason, abort = output.finish_reason, output.stop_token_id, None
        if delta.stopped:
            finish_reason, stop_reason = "stop", delta.stop_str
            abort = None if output.finished else output.index
        elif output.finished:
            text += sample.detokenizer.finish()
        sample.text_pieces.append(text)
        sample.token_ids.extend(new_ids)
        new_logprobs = list(output.new_logprobs) if sample.logprobs is not None else None
        if sample.logprobs is not None and new_logprobs:
            sample.logprobs.extend(new_logprobs)
        sample.finish_reason, sample.stop_reason = finish_reason, stop_reason
        if self.finished:
            self.metrics.finished_time = now
        completion = CompletionOutput(output.index, text, new_ids, new_logprobs, finish_reason, stop_reason)
        return ProcessedOutput(self._request_output([completion]), abort)

    def final_output(self) -> RequestOutput:
        """The whole result so far: every sample's full text, tokens and logprobs."""
        return self._request_output(
            [
                CompletionOutput(
                    index,
                    "".join(sample.text_pieces),
                    list(sample.token_ids),
                    list(sample.logprobs) if sample.logprobs is not None else None,
                    sample.finish_reason,
                    sample.stop_reason,
                )
                for index, sample in enumerate(self._samples)
            ]
        )

    def _request_output(self, outputs: list[CompletionOutput]) -> RequestOutput:
        return RequestOutput(
            self.request_id, self.prompt, self.prompt_token_ids, outputs, self.finished, metrics=self.metrics
        )
