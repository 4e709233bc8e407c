"""Folding engine outputs of one HTTP request (several prompts x n samples) into OpenAI choices."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rocmforge.engine.outputs import CompletionOutput, RequestOutput
from rocmforge.gguf.tokenizer import Tokenizer
from rocmforge.layers.sampler import SampleOutput
from rocmforge.server.metrics import ServerMetrics


@dataclass
class Choice:
    pieces: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[SampleOutput] = field(default_factory=list)
    finish_reason: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)


class Choices:
    """Choice index = prompt index * n + sample index, as OpenAI numbers them."""

    def __init__(self, num_prompts: int, n: int, prompt_lengths: list[int], metrics: ServerMetrics) -> None:
        self.n = n
        self.choices = [Choice() for _ in range(num_prompts * n)]
        self.prompt_tokens = sum(prompt_lengths)
        self._metrics = metrics

    def update(self, prompt_index: int, output: RequestOutput) -> list[tuple[int, CompletionOutput]]:
        """Fold a delta in; returns (choice index, delta) pairs. Records metrics when the request finishes."""
        deltas = []
        for sample in output.outputs:
            index = prompt_index * self.n + sample.index
            choice = self.choices[index]
            choice.pieces.append(sample.text)
            choice.token_ids.extend(sample.token_ids)
            choice.logprobs.extend(sample.logprobs or ())
            choice.finish_reason = sample.finish_reason or choice.finish_reason
            deltas.append((index, sample))
        if output.finished:
            first = prompt_index * self.n
            reasons = [choice.finish_reason for choice in self.choices[first : first + self.n]]
            self._metrics.observe_finished(output.metrics, reasons)
        return deltas

    @property
    def completion_tokens(self) -> int:
        return sum(len(choice.token_ids) for choice in self.choices)


def token_text(tokenizer: Tokenizer, token_id: int) -> str:
    return tokenizer.token_bytes(token_id).decode("utf-8", errors="replace")


def completion_logprobs(tokenizer: Tokenizer, samples: list[SampleOutput], offset: int) -> dict[str, Any]:
    """The legacy completions format: tokens, token_logprobs, top_logprobs (dicts), text_offset."""
    tokens = [token_text(tokenizer, s.token_id) for s in samples]
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    return {
        "tokens": tokens,
        "token_logprobs": [s.logprob for s in samples],
        "top_logprobs": [{token_text(tokenizer, t): lp for t, lp in s.top_logprobs} for s in samples],
        "text_offset": offsets,
    }


def chat_logprobs(tokenizer: Tokenizer, samples: list[SampleOutput]) -> dict[str, Any]:
    """The chat format: {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}."""

    def entry(token_id: int, logprob: float | None) -> dict[str, Any]:
        raw = tokenizer.token_bytes(token_id)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}

    return {
        "content": [
            entry(s.token_id, s.logprob) | {"top_logprobs": [entry(t, lp) for t, lp in s.top_logprobs]} for s in samples
        ]
    }
