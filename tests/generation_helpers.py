"""Driving the serving engine from synchronous tests: one AsyncLLM kept on its own event loop, so a test can read
a stream delta by delta, and the model an engine serves, for teacher-forced logits in one forward pass."""

from __future__ import annotations

import asyncio
from pathlib import Path

import torch

from rocmforge import AsyncLLM, EngineConfig, SamplingParams
from rocmforge.engine.front_end import FrontEnd
from rocmforge.engine.outputs import CompletionOutput
from rocmforge.models.decoder import DecoderModel


class StreamingEngine:
    """An AsyncLLM started once on a private event loop, shared by a module's tests (one model load).

    AsyncLLM hands its outputs to the loop it was started on, so every stream must run on that same loop:
    a fresh ``asyncio.run`` per test would start a fresh engine each time.
    """

    def __init__(self, model: str | Path, config: EngineConfig) -> None:
        self._loop = asyncio.new_event_loop()
        self.llm = AsyncLLM(model, config)
        try:
            self._loop.run_until_complete(self.llm.start())
        except BaseException:
            self._loop.close()
            raise

    def stream(self, prompt: str | list[int], params: SamplingParams) -> list[CompletionOutput]:
        """Every streamed delta of a one-sample request, in order; the last one is finished."""
        return self._loop.run_until_complete(self._collect(prompt, params))

    async def _collect(self, prompt: str | list[int], params: SamplingParams) -> list[CompletionOutput]:
        return [output.outputs[0] async for output in self.llm.generate(prompt, params)]

    def shutdown(self) -> None:
        try:
            self._loop.run_until_complete(self.llm.shutdown())
        finally:
            self._loop.close()


def served_model(front_end: FrontEnd) -> DecoderModel:
    """The model a running engine serves: the weights its outputs come from, not a second copy."""
    core = front_end.engine.core
    assert core is not None, "the engine is not running"
    return core.model


def teacher_forced_logits(model: DecoderModel, token_ids: list[int]) -> torch.Tensor:
    """[len(token_ids), vocab] float32 logits: row i is the next-token distribution after token_ids[: i + 1].

    One forward pass over the whole sequence: every row conditions on the given tokens, not on what the model
    would have chosen itself, which is what a comparison along another implementation's path needs.
    """
    cache = model.new_kv_cache(len(token_ids))
    return model.forward(torch.tensor(token_ids, dtype=torch.long), 0, cache, all_logits=True)
