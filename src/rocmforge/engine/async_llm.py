"""AsyncLLM: the asyncio front end for servers. ``generate()`` is an async iterator of streamed outputs.

The engine core runs on its own thread (EngineLoop). Outputs cross back by ``call_soon_threadsafe`` into
one asyncio.Queue per request, registered before the request is submitted, so no output can arrive for a
stream that does not exist yet. Cancelling the consuming task (or leaving the loop early) aborts the
request, which frees its KV blocks at the engine's next step.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import weakref
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import TracebackType

from rocmforge.engine.config import EngineConfig
from rocmforge.engine.engine_loop import EngineHooks, EngineLoop
from rocmforge.engine.front_end import FrontEnd
from rocmforge.engine.lifecycle import EngineState
from rocmforge.engine.output_processor import RequestState
from rocmforge.engine.outputs import EngineCoreOutput, RequestOutput
from rocmforge.engine.request import LogitsProcessor
from rocmforge.errors import EngineNotRunningError, ValidationError
from rocmforge.sampling_params import SamplingParams

_request_counter = itertools.count()


class AsyncLLM(FrontEnd):
    """Construct (cheap), ``await start()`` (loads, warms up), generate, ``await shutdown()``; or ``async with``."""

    def __init__(
        self,
        model: str | Path,
        config: EngineConfig | None = None,
        *,
        hooks: EngineHooks | None = None,
        progress: bool = False,
    ) -> None:
        super().__init__(model, config, hooks, progress, self._on_outputs)
        self._streams: dict[str, tuple[RequestState, asyncio.Queue[RequestOutput | BaseException]]] = {}
        self._aio_loop: asyncio.AbstractEventLoop | None = None
        self._started: asyncio.Event | None = None
        self._stopped: asyncio.Event | None = None
        # At interpreter exit, an engine nobody shut down is stopped at once rather than left mid-step.
        self._atexit = _shutdown_at_exit(weakref.ref(self.engine))
        atexit.register(self._atexit)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Return once the engine loop runs and a warm-up step has completed; raise if it failed to start."""
        loop = asyncio.get_running_loop()
        self._aio_loop = loop
        started, stopped = asyncio.Event(), asyncio.Event()
        self._started, self._stopped = started, stopped
        self.engine.launch(
            on_started=lambda: _call_soon(loop, started.set), on_stopped=lambda: _call_soon(loop, stopped.set)
        )
        await started.wait()
        self.engine.raise_if_not_ready()

    async def shutdown(self, timeout: float = 30.0) -> None:
        """Stop accepting; in-flight requests finish until ``timeout``, then are aborted. Idempotent.

        Returns when the loop thread has joined and the KV cache and weights are freed.
        """
        self.engine.begin_shutdown(timeout)
        if self._stopped is not None:
            await self._stopped.wait()
        self.engine.join()  # the thread has signalled its end: this returns at once
        atexit.unregister(self._atexit)

    async def __aenter__(self) -> AsyncLLM:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.shutdown()

    # ------------------------------------------------------------------ requests

    async def generate(
        self,
        prompt: str | list[int],
        sampling_params: SamplingParams | None = None,
        request_id: str | None = None,
        logits_processors: tuple[LogitsProcessor, ...] = (),
    ) -> AsyncIterator[RequestOutput]:
        """Stream one request's outputs: each carries only what is new; the last has ``finished`` set.

        Raises ValidationError / EngineNotRunningError / EngineDeadError at the first iteration if the request
        cannot be accepted, and EngineDeadError mid-stream if the engine fails.
        """
        params = sampling_params or SamplingParams()
        request_id = request_id if request_id is not None else f"req-{next(_request_counter)}"
        if self.engine.state is EngineState.NEW:
            raise EngineNotRunningError("engine is not started: await start() first")
        if self._started is not None and not self._started.is_set():
            await self._started.wait()  # submitted during start: served once it is ready
        if self.engine.state is not EngineState.READY:
            self.engine.raise_if_not_ready()
        if request_id in self._streams:
            raise ValidationError(f"request id {request_id!r} is already in use")
        prompt_text, prompt_ids = self.source.encode(prompt)
        state = RequestState(request_id, prompt_text, prompt_ids, params, self.tokenizer)
        stream: asyncio.Queue[RequestOutput | BaseException] = asyncio.Queue()
        self._streams[request_id] = (state, stream)  # registered before submitting: no output is ever orphaned
        try:
            self.engine.add_request(request_id, prompt_ids, params, logits_processors)
        except BaseException:
            del self._streams[request_id]
            raise
        finished = False
        try:
            while True:
                item = await stream.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self.engine.abort(request_id)  # the consumer left: free its blocks at the next step

    def validate(self, prompt_token_ids: list[int], params: SamplingParams, request_id: str = "request") -> None:
        """Raise ValidationError now if the request could never run, so that a server can answer 400 before it
        starts a streamed response (generate() would only raise at its first iteration)."""
        core = self.engine.core
        if core is None:
            self.engine.raise_if_not_ready()
            raise EngineNotRunningError("engine is not running")
        core.validate(request_id, prompt_token_ids, params)

    async def abort(self, request_id: str) -> None:
        """Abort a request; its stream ends with finish_reason "abort" (nothing happens if it already ended)."""
        self.engine.abort(request_id)

    # ------------------------------------------------------------------ outputs (engine thread -> event loop)

    def _on_outputs(self, outputs: list[EngineCoreOutput]) -> None:
        loop = self._aio_loop
        if loop is not None:
            _call_soon(loop, self._dispatch, outputs)

    def _dispatch(self, outputs: list[EngineCoreOutput]) -> None:
        for output in outputs:
            entry = self._streams.get(output.request_id)
            if entry is None:
                continue  # its consumer left; the abort is on its way
            state, stream = entry
            if output.error is not None:
                stream.put_nowait(output.error)
                continue
            processed = state.process(output)
            if processed is None:
                continue
            if processed.abort_sample is not None:
                self.engine.abort(output.request_id, processed.abort_sample)
            stream.put_nowait(processed.delta)


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Callable[..., object], *args: object) -> None:
    # A closed event loop raises RuntimeError: nobody is left to tell.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(callback, *args)


def _shutdown_at_exit(engine_ref: weakref.ref[EngineLoop]) -> Callable[[], None]:
    def shutdown() -> None:
        engine = engine_ref()
        if engine is not None and not engine.is_stopped:
            engine.shutdown(timeout=0)

    return shutdown
