"""uvicorn's Server with rocmforge's drain on signals (see `rocmforge serve`).

First signal: the engine stops taking requests (they get 503), in-flight ones finish until the shutdown
timeout, the rest are aborted, and the process exits 0. A second signal moves the deadline to now.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from types import FrameType
from typing import Any

import uvicorn

from rocmforge.server.state import ServerState

logger = logging.getLogger("rocmforge.serve")


class DrainingServer(uvicorn.Server):
    """uvicorn, with our drain on signals instead of its own close-the-listener shutdown."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.exit_code = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signals = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)
        self._spawn(self._exit_if_start_fails())

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler may interrupt code holding the engine's lock: only hand the work to the event loop.
        # (Not recording the signal also keeps uvicorn from re-raising it at exit, so we exit 0.)
        if self._loop is None:
            self.should_exit = True
            return
        self._loop.call_soon_threadsafe(self._on_signal)

    def _on_signal(self) -> None:
        self._signals += 1
        state = self._state()
        if state is None:
            self.should_exit = True
            return
        if self._signals == 1:
            logger.info(
                "draining: %s s for in-flight requests (a second signal aborts them)", state.config.shutdown_timeout
            )
            self._spawn(self._drain_then_exit(state, state.config.shutdown_timeout))
        else:
            logger.info("aborting in-flight requests")
            state.llm.engine.begin_shutdown(0)

    async def _drain_then_exit(self, state: ServerState, timeout: float) -> None:
        await state.llm.shutdown(timeout)
        self.should_exit = True

    async def _exit_if_start_fails(self) -> None:
        state = self._state()
        if state is None:
            return
        try:
            await self.config.loaded_app.app.state.startup  # type: ignore[attr-defined]  (see create_app)
        except asyncio.CancelledError:
            return
        except BaseException as exc:
            print(f"rocmforge: error: the server could not start: {exc}", file=sys.stderr)
            self.exit_code = 1
            self.should_exit = True

    def _state(self) -> ServerState | None:
        app = self.config.loaded_app
        while app is not None and not hasattr(app, "state"):
            app = getattr(app, "app", None)  # through uvicorn's middleware wrappers to the FastAPI app
        return getattr(getattr(app, "state", None), "rocmforge", None)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
