"""LLM: the offline front end. ``generate(prompts)`` runs a whole batch through the engine and returns results.

It drives the same EngineLoop as AsyncLLM: the loop thread steps the core, and the calling thread turns
outputs into text as they arrive on a thread-safe queue. Ctrl-C aborts the batch's requests cleanly.
"""

from __future__ import annotations

import atexit
import itertools
import queue
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from tqdm import tqdm

from rocmforge.engine.config import EngineConfig
from rocmforge.engine.engine_loop import EngineHooks
from rocmforge.engine.front_end import FrontEnd
from rocmforge.engine.output_processor import RequestState
from rocmforge.engine.outputs import EngineCoreOutput, RequestOutput
from rocmforge.errors import ValidationError
from rocmforge.sampling_params import SamplingParams

Prompt = str | list[int]


class LLM(FrontEnd):
    """Loads the model and starts the engine on construction; ``shutdown()`` (or ``with``) frees it all."""

    def __init__(
        self,
        model: str | Path,
        config: EngineConfig | None = None,
        *,
        hooks: EngineHooks | None = None,
        progress: bool = False,
    ) -> None:
        self._outputs: queue.SimpleQueue[list[EngineCoreOutput]] = queue.SimpleQueue()
        super().__init__(model, config, hooks, progress, self._outputs.put)
        self._ids = itertools.count()
        self.engine.start()
        atexit.register(self.shutdown)

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """Complete every prompt (text, or a list of token ids); results come back in the prompts' order."""
        batch = [prompts] if isinstance(prompts, str) or _is_token_ids(prompts) else list(prompts)
        params = sampling_params or SamplingParams()
        params_list = [params] * len(batch) if isinstance(params, SamplingParams) else list(params)
        if len(params_list) != len(batch):
            raise ValidationError(f"got {len(params_list)} sampling params for {len(batch)} prompts")
        states: dict[str, RequestState] = {}
        order: list[str] = []
        try:
            for prompt, request_params in zip(batch, params_list, strict=True):
                request_id = f"llm-{next(self._ids)}"
                text, token_ids = self.source.encode(prompt)  # type: ignore[arg-type]
                states[request_id] = RequestState(request_id, text, token_ids, request_params, self.tokenizer)
                order.append(request_id)
                self.engine.add_request(request_id, token_ids, request_params)
            self._collect(states, use_tqdm)
        except BaseException:
            for request_id, state in states.items():  # Ctrl-C or a refused prompt: none of the batch lingers
                if not state.finished:
                    self.engine.abort(request_id)
            raise
        return [states[request_id].final_output() for request_id in order]

    def _collect(self, states: dict[str, RequestState], use_tqdm: bool) -> None:
        unfinished = set(states)
        with tqdm(total=len(states), desc="generating", unit="req", disable=not use_tqdm) as bar:
            while unfinished:
                for output in self._outputs.get():
                    state = states.get(output.request_id)
                    if state is None or state.finished:
                        continue
                    if output.error is not None:
                        raise output.error
                    processed = state.process(output)
                    if processed is not None and processed.abort_sample is not None:
                        self.engine.abort(output.request_id, processed.abort_sample)
                    if state.finished:
                        unfinished.discard(output.request_id)
                        bar.update()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Finish or abort what runs, join the engine thread, free the KV cache and weights. Idempotent."""
        self.engine.shutdown(timeout)
        atexit.unregister(self.shutdown)

    def __enter__(self) -> LLM:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()


def _is_token_ids(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(t, int) for t in value)
