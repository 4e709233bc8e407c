"""The engine core's own thread, its message queue, and the lifecycle state machine around them.

Front ends talk to the loop only by messages: requests and aborts go in through a queue, per-step outputs
come out through a sink callback (called on the loop thread). Nothing polls: an idle loop blocks on its
queue, and front ends are woken by their sinks.

Why a request is never lost or hung: the state check and the enqueue happen under one lock, and so do the
state change and the enqueue of the drain message in ``shutdown``. So every request that was accepted sits
in the queue ahead of the drain, and the loop answers each one (served, aborted at the drain deadline, or
failed with EngineDeadError) before it exits. Requests that arrive too early or too late are refused at once.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rocmforge.engine.core import EngineCore, EngineStats
from rocmforge.engine.lifecycle import EngineState, check_transition
from rocmforge.engine.outputs import EngineCoreOutput
from rocmforge.engine.request import LogitsProcessor
from rocmforge.errors import EngineDeadError, EngineNotRunningError, RocmForgeError, ValidationError
from rocmforge.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

OutputSink = Callable[[list[EngineCoreOutput]], None]
Hook = Callable[[], None]


@dataclass
class EngineHooks:
    """Test seams called on the loop thread: at its start (before loading), before and after each step, and
    when the drain begins. A hook that raises kills the engine like any other loop failure."""

    on_loop_start: Hook | None = None
    before_step: Hook | None = None
    after_step: Hook | None = None
    on_drain: Hook | None = None


@dataclass(frozen=True)
class _AddRequest:
    request_id: str
    prompt_token_ids: tuple[int, ...]
    params: SamplingParams
    logits_processors: tuple[LogitsProcessor, ...]


@dataclass(frozen=True)
class _Abort:
    request_id: str
    index: int | None


@dataclass(frozen=True)
class _Drain:
    deadline: float  # time.monotonic() after which unfinished requests are aborted


_Message = _AddRequest | _Abort | _Drain


class EngineLoop:
    """Owns the engine thread. ``core_factory`` runs on that thread (loading happens there, off the caller)."""

    def __init__(
        self,
        core_factory: Callable[[], EngineCore],
        sink: OutputSink,
        hooks: EngineHooks | None = None,
        name: str = "rocmforge-engine",
    ) -> None:
        self._core_factory = core_factory
        self._sink = sink
        self._hooks = hooks or EngineHooks()
        self._name = name
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Message] = queue.SimpleQueue()
        self._state = EngineState.NEW
        self._thread: threading.Thread | None = None
        self._core: EngineCore | None = None  # set once loaded; read by validate() from other threads
        self._started = threading.Event()  # set when READY, DEAD, or drained during start
        self._stopped = threading.Event()  # set when the thread has released everything
        self._on_started: list[Callable[[], None]] = []
        self._on_stopped: list[Callable[[], None]] = []
        self.error: BaseException | None = None
        self.stats = EngineStats()

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def core(self) -> EngineCore | None:
        return self._core

    def _set_state(self, new: EngineState) -> None:
        check_transition(self._state, new)
        self._state = new

    # ------------------------------------------------------------------ start

    def launch(
        self, on_started: Callable[[], None] | None = None, on_stopped: Callable[[], None] | None = None
    ) -> None:
        """NEW -> STARTING: start the thread, which loads, warms up, and goes READY. Returns at once.

        ``on_started`` runs (on the loop thread) when it is READY or failed; ``on_stopped`` when the thread is
        done. Async front ends hand these to their event loop instead of blocking a thread on ``wait_started``.
        """
        with self._lock:
            if self._state is not EngineState.NEW:
                raise EngineNotRunningError(f"engine cannot start: it is {self._state.value}")
            self._set_state(EngineState.STARTING)
            self._on_started.extend([on_started] if on_started else [])
            self._on_stopped.extend([on_stopped] if on_stopped else [])
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()

    def start(self) -> None:
        """Blocking start: returns when the loop runs and has warmed up; raises if it could not."""
        self.launch()
        self.wait_started()

    def wait_started(self) -> None:
        self._started.wait()
        self.raise_if_not_ready()

    def raise_if_not_ready(self) -> None:
        if self._state is EngineState.DEAD:
            raise EngineDeadError(f"engine failed to start: {self.error}") from self.error
        if self._state is not EngineState.READY:
            raise EngineNotRunningError(f"engine is {self._state.value}: it accepts no new requests")

    # ------------------------------------------------------------------ requests

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        logits_processors: Sequence[LogitsProcessor] = (),
    ) -> None:
        """Queue a request; its outputs arrive through the sink. Raises at once if it cannot be accepted."""
        core = self._core
        if core is not None:
            core.validate(request_id, prompt_token_ids, params)  # thread-safe: reads fixed settings only
        message = _AddRequest(request_id, tuple(prompt_token_ids), params, tuple(logits_processors))
        with self._lock:
            self._check_accepting()
            self._queue.put(message)

    def abort(self, request_id: str, index: int | None = None) -> None:
        """Abort a request (or one of its samples); its stream ends with finish_reason "abort" if it was live."""
        with self._lock:
            if not self._state.is_final:
                self._queue.put(_Abort(request_id, index))

    def _check_accepting(self) -> None:
        state = self._state
        if state is EngineState.DEAD:
            raise EngineDeadError(f"engine is dead: {self.error!r}")
        if state is EngineState.NEW:
            raise EngineNotRunningError("engine is not started: call start() first")
        if not state.accepts_requests:
            raise EngineNotRunningError(f"engine is {state.value}: it accepts no new requests")

    # ------------------------------------------------------------------ shutdown

    def begin_shutdown(self, timeout: float) -> None:
        """Stop accepting, and let in-flight requests finish for up to ``timeout`` seconds. Returns at once.

        Calling it again (a second signal) only ever moves the deadline earlier.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._lock:
            if self._state is EngineState.NEW:
                self._set_state(EngineState.STOPPED)
                self._stopped.set()
                self._started.set()
                return
            if self._state in (EngineState.STARTING, EngineState.READY):
                self._set_state(EngineState.DRAINING)
            if self._state is EngineState.DRAINING:
                self._queue.put(_Drain(deadline))

    def join(self) -> None:
        """Wait for the loop thread to finish (after ``begin_shutdown``, or after it died)."""
        self._stopped.wait()
        if self._thread is not None:
            self._thread.join()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Drain for up to ``timeout`` seconds, abort the rest, join the thread, free everything. Idempotent."""
        self.begin_shutdown(timeout)
        self.join()

    @property
    def is_stopped(self) -> bool:
        return self._stopped.is_set()

    # ------------------------------------------------------------------ the loop thread

    def _run(self) -> None:
        core: EngineCore | None = None
        live: set[str] = set()  # request ids accepted and not yet finished: who to fail if the loop dies
        try:
            if self._hooks.on_loop_start:
                self._hooks.on_loop_start()
            core = self._core_factory()
            core.runner.warm_up()
            self._core = core
            with self._lock:
                if self._state is EngineState.STARTING:
                    self._set_state(EngineState.READY)
            self._signal_started()
            self._serve(core, live)
        except BaseException as exc:  # any failure must reach every waiting caller
            if isinstance(exc, RocmForgeError):  # a bad model file and the like: every caller gets the message
                logger.debug("engine loop failed: %s", exc)
            else:
                logger.exception("engine loop failed")
            self._die(exc, live)
        finally:
            self._core = None
            if core is not None:
                core.release()
            with self._lock:
                if self._state is not EngineState.DEAD:
                    self._set_state(EngineState.STOPPED)
            self._signal_started()
            self._stopped.set()
            for callback in self._on_stopped:
                callback()

    def _signal_started(self) -> None:
        if not self._started.is_set():
            self._started.set()
            for callback in self._on_started:
                callback()

    def _serve(self, core: EngineCore, live: set[str]) -> None:
        deadline: float | None = None
        while True:
            idle = not core.has_unfinished_requests()
            if idle and deadline is not None:
                return
            # Idle: block until a message comes. Busy: take what has arrived and step.
            outputs: list[EngineCoreOutput] = []
            for message in self._take_messages(block=idle):
                if isinstance(message, _Drain):
                    if deadline is None and self._hooks.on_drain:
                        self._hooks.on_drain()
                    deadline = message.deadline if deadline is None else min(deadline, message.deadline)
                else:
                    outputs.extend(self._handle(core, message, live))
            draining_done = deadline is not None and time.monotonic() >= deadline
            if draining_done:
                outputs.extend(core.abort_all())
            # Stats first, outputs second: a caller woken by its stream's end sees the stats that followed it.
            self.stats = core.stats()
            self._emit(outputs, live)
            if draining_done:
                return
            if core.has_unfinished_requests():
                if self._hooks.before_step:
                    self._hooks.before_step()
                outputs = core.step()
                self.stats = core.stats()
                if self._hooks.after_step:
                    self._hooks.after_step()
                self._emit(outputs, live)

    def _take_messages(self, block: bool) -> list[_Message]:
        messages = [self._queue.get()] if block else []
        while True:
            try:
                messages.append(self._queue.get_nowait())
            except queue.Empty:
                return messages

    def _handle(self, core: EngineCore, message: _AddRequest | _Abort, live: set[str]) -> list[EngineCoreOutput]:
        if isinstance(message, _Abort):
            return core.abort(message.request_id, message.index)
        try:
            core.add_request(message.request_id, message.prompt_token_ids, message.params, message.logits_processors)
        except ValidationError as exc:
            # Queued before the model was loaded (so not validated at submission): refused now, on its stream.
            return [EngineCoreOutput(message.request_id, 0, error=exc)]
        live.add(message.request_id)
        return []

    def _emit(self, outputs: list[EngineCoreOutput], live: set[str]) -> None:
        if not outputs:
            return
        for output in outputs:
            if output.finished and output.request_id in live and not self._holds(output.request_id):
                live.discard(output.request_id)
        self._sink(outputs)

    def _die(self, exc: BaseException, live: set[str]) -> None:
        with self._lock:
            self.error = exc
            self._state = EngineState.DEAD  # from any state: nothing may be accepted after this
            pending = [m.request_id for m in self._take_messages(block=False) if isinstance(m, _AddRequest)]
        error = EngineDeadError(f"engine loop failed: {exc!r}")
        error.__cause__ = exc
        failed = [EngineCoreOutput(request_id, 0, error=error) for request_id in [*live, *pending]]
        if failed:
            try:
                self._sink(failed)
            except Exception:  # the sink itself may be what failed: nothing more can be told
                logger.exception("could not deliver EngineDeadError to pending requests")

    def _holds(self, request_id: str) -> bool:
        core = self._core
        return core is not None and core.has_request(request_id)
