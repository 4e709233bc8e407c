"""Single-sequence generation on the reference path: prefill, then decode token by token with a KV cache.

The serving engine (continuous batching, paged cache) supersedes this for throughput; this stays the plain,
obviously-correct loop that the CLI's first commands and the parity tests use.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rocmforge.engine.detokenizer import IncrementalDetokenizer
from rocmforge.errors import ValidationError
from rocmforge.gguf.tokenizer import Tokenizer
from rocmforge.layers.sampler import make_generator, sample_token
from rocmforge.models.decoder import DecoderModel
from rocmforge.models.loader import load_model_and_tokenizer
from rocmforge.sampling_params import SamplingParams


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    finish_reason: str | None = None  # "stop" (end-of-generation or stop token) or "length"

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prefill_seconds if self.prefill_seconds else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        # The first token comes out of prefill; decode speed counts the steps after it.
        steps = self.generated_tokens - 1
        return steps / self.decode_seconds if steps > 0 and self.decode_seconds else 0.0


@dataclass
class StreamEvent:
    token_id: int | None  # None for the final flush of an incomplete UTF-8 sequence
    text: str  # the new text this token completes (may be "" while a UTF-8 character is still split)


@dataclass
class Completion:
    token_ids: list[int]
    text: str
    finish_reason: str
    stats: GenerationStats = field(default_factory=GenerationStats)


class TextGenerator:
    """A model and its tokenizer, generating one sequence at a time."""

    def __init__(self, model: DecoderModel, tokenizer: Tokenizer) -> None:
        self.model = model
        self.tokenizer = tokenizer

    @classmethod
    def from_path(cls, path: str | Path, dtype: torch.dtype = torch.float32, progress: bool = False) -> TextGenerator:
        model, tokenizer = load_model_and_tokenizer(path, dtype=dtype, progress=progress)
        return cls(model, tokenizer)

    def encode_prompt(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special=True, parse_special=True)
        return list(prompt)

    def stream(
        self, prompt: str | list[int], params: SamplingParams, stats: GenerationStats | None = None
    ) -> Iterator[StreamEvent]:
        """Yield each generated token with its text delta; the end-of-generation token itself is not yielded.

        An invalid prompt raises ValidationError here, at the call, not at the first next(): a server can then
        answer with an error before it starts a streamed response.
        """
        stats = stats if stats is not None else GenerationStats()
        prompt_ids = self.encode_prompt(prompt)
        context_length = self.model.config.context_length
        if not prompt_ids:
            raise ValidationError("prompt is empty: it must hold at least one token")
        if len(prompt_ids) >= context_length:
            raise ValidationError(
                f"prompt of {len(prompt_ids)} tokens does not fit the context length of {context_length}"
            )
        return self._stream(prompt_ids, params, stats)

    def _stream(self, prompt_ids: list[int], params: SamplingParams, stats: GenerationStats) -> Iterator[StreamEvent]:
        context_length = self.model.config.context_length
        max_len = min(context_length, len(prompt_ids) + params.max_tokens)
        cache = self.model.new_kv_cache(max_len)
        stop_ids = set(params.stop_token_ids) | (set() if params.ignore_eos else set(self.tokenizer.eog_token_ids))
        stop_index = torch.tensor(sorted(stop_ids), dtype=torch.long)
        generator = make_generator(params.seed)
        # Bytes of a multi-byte character may span tokens: the detokenizer holds them until complete.
        detokenizer = IncrementalDetokenizer(self.tokenizer, prompt_ids)
        history = list(prompt_ids)
        stats.prompt_tokens = len(prompt_ids)

        start = time.perf_counter()
        logits = self.model.forward(torch.tensor(prompt_ids, dtype=torch.long), 0, cache)
        stats.prefill_seconds = time.perf_counter() - start
        start = time.perf_counter()
        while True:
            next_logits = logits[-1]
            if stats.generated_tokens < params.min_tokens and stop_ids:
                # Too early to stop: stopping tokens get no probability at all (vLLM's semantics), rather
                # than being drawn and then ignored.
                next_logits = next_logits.index_fill(0, stop_index, float("-inf"))
            token_id = sample_token(next_logits, params, history, generator)
            if token_id in stop_ids:
                stats.finish_reason = "stop"
                break
            history.append(token_id)
            stats.generated_tokens += 1
            yield StreamEvent(token_id, detokenizer.update([token_id]).text)
            if stats.generated_tokens >= params.max_tokens or len(history) >= max_len:
                stats.finish_reason = "length"
                break
            logits = self.model.forward(torch.tensor([token_id], dtype=torch.long), len(history) - 1, cache)
            stats.decode_seconds = time.perf_counter() - start
        tail = detokenizer.finish()
        if tail:
            yield StreamEvent(None, tail)

    def generate(self, prompt: str | list[int], params: SamplingParams) -> Completion:
        stats = GenerationStats()
        token_ids: list[int] = []
        pieces: list[str] = []
        for event in self.stream(prompt, params, stats):
            if event.token_id is not None:
                token_ids.append(event.token_id)
            pieces.append(event.text)
        return Completion(token_ids, "".join(pieces), stats.finish_reason or "length", stats)
