"""One server's state: its engine, settings, metrics and chat template, and the checks every request passes."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from rocmforge.engine.async_llm import AsyncLLM
from rocmforge.engine.config import EngineConfig
from rocmforge.engine.lifecycle import EngineState
from rocmforge.errors import QueueFullError
from rocmforge.server.errors import APIError, not_ready
from rocmforge.server.metrics import ServerMetrics

logger = logging.getLogger(__name__)

MiB = 1 << 20


@dataclass(frozen=True)
class ServerConfig:
    """Settings of `rocmforge serve` beyond the engine's own.

    ``max_queued_requests``: requests admitted beyond the engine's running batch (max_num_seqs); more get 429.
    ``api_keys``: accepted bearer tokens (none: no authentication).
    """

    model: str
    engine: EngineConfig = field(default_factory=EngineConfig)
    served_model_name: str | None = None
    api_keys: tuple[str, ...] = ()
    max_queued_requests: int = 256
    shutdown_timeout: float = 30.0
    chat_template: str | None = None  # a file overriding the model's template
    max_request_body_bytes: int = 10 * MiB

    @property
    def model_name(self) -> str:
        if self.served_model_name:
            return self.served_model_name
        name = self.model.rsplit("/", 1)[-1]
        return name.removesuffix(".gguf")


class ServerState:
    def __init__(self, config: ServerConfig, llm: AsyncLLM) -> None:
        self.config = config
        self.llm = llm
        self.metrics = ServerMetrics(config.model_name)
        self.chat_template: object | None = None  # a ChatTemplate, loaded once the tokenizer is
        self.num_admitted = 0  # requests between admission and the end of their response

    @property
    def model_name(self) -> str:
        return self.config.model_name

    def check_ready(self) -> None:
        state = self.llm.state
        if state is EngineState.READY:
            return
        if state is EngineState.DEAD:
            raise APIError(
                503, f"the engine is dead: {self.llm.engine.error}", "service_unavailable", code="engine_dead"
            )
        raise not_ready(f"the server is {'loading the model' if state is EngineState.STARTING else state.value}")

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise APIError(
                404,
                f"the model {model!r} does not exist; this server serves {self.model_name!r}",
                "not_found_error",
                "model",
                "model_not_found",
            )

    def admit(self, num_requests: int) -> Admission:
        """Count the requests in, or refuse with 429 when they would exceed the running batch plus the queue.

        Counted here, at admission, rather than from the engine's registered streams: a stream registers only
        once its response starts, and two requests admitted in that window would both get in.
        """
        capacity = self.config.engine.max_num_seqs + self.config.max_queued_requests
        if self.num_admitted + num_requests > capacity:
            raise QueueFullError(f"the server is at capacity ({capacity} requests in flight or queued); retry later")
        self.num_admitted += num_requests
        return Admission(self, num_requests)


class Admission:
    """Requests counted in by ``ServerState.admit``; ``release()`` (idempotent) counts them out."""

    def __init__(self, state: ServerState, num_requests: int) -> None:
        self._state, self._num_requests = state, num_requests

    def release(self) -> None:
        self._state.num_admitted -= self._num_requests
        self._num_requests = 0
