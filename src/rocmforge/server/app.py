"""The FastAPI application: routes, API keys, body limit, and the engine's life inside the app's lifespan.

The engine starts loading when the app starts, and the port opens at once: /health answers 200 while the
model loads and /ready 503 (with Retry-After) until the engine is READY, so load balancers see the state.
Requests that arrive before then get 503 too: the original's startup race becomes an answer, never a hang.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from rocmforge.engine.async_llm import AsyncLLM
from rocmforge.engine.engine_loop import EngineHooks
from rocmforge.engine.lifecycle import EngineState
from rocmforge.server.errors import APIError, error_response, install_error_handlers, not_ready
from rocmforge.server.protocol import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest
from rocmforge.server.serving_chat import chat_prompt_ids, create_chat_completion
from rocmforge.server.serving_completion import create_completion
from rocmforge.server.state import ServerConfig, ServerState

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class BodyTooLarge(APIError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes", "invalid_request_error")


class BodyLimitMiddleware:
    """413 for bodies over the limit, whether declared by Content-Length or sent chunked (counted as read)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await error_response(BodyTooLarge(self.max_bytes))(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)  # answered by the app's error handler
            return message

        await self.app(scope, limited, send)


def create_app(config: ServerConfig, hooks: EngineHooks | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        llm = AsyncLLM(config.model, config.engine, hooks=hooks)
        state = ServerState(config, llm)
        app.state.rocmforge = state
        app.state.startup = asyncio.create_task(_start(state))
        try:
            yield
        finally:
            await llm.shutdown(config.shutdown_timeout)
            await asyncio.gather(app.state.startup, return_exceptions=True)

    app = FastAPI(title="rocmforge", lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=config.max_request_body_bytes)

    def get_state(request: Request) -> ServerState:
        return request.app.state.rocmforge  # type: ignore[no-any-return]

    keys = [key.encode() for key in config.api_keys]

    def require_api_key(request: Request) -> None:
        if not keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        # compare_digest on every key: the time taken does not tell how much of a guess was right.
        if scheme.lower() != "bearer" or not any(secrets.compare_digest(token.encode(), key) for key in keys):
            raise APIError(401, "a valid API key is required (Authorization: Bearer KEY)", "authentication_error")

    @app.get("/health")
    async def health(request: Request) -> Response:
        state = get_state(request)
        if state.llm.state is EngineState.DEAD:
            return error_response(APIError(503, "the engine is dead", "service_unavailable", code="engine_dead"))
        return JSONResponse({"status": "ok", "engine": state.llm.state.value})

    @app.get("/ready")
    async def ready(request: Request) -> Response:
        engine_state = get_state(request).llm.state
        if engine_state is not EngineState.READY:
            return error_response(not_ready(f"the engine is {engine_state.value}"))
        return JSONResponse({"status": "ready"})

    api = APIRouter(dependencies=[Depends(require_api_key)])

    @api.get("/metrics")
    async def metrics(request: Request) -> Response:
        state = get_state(request)
        return Response(state.metrics.render(state.llm.stats), media_type=CONTENT_TYPE_LATEST)

    @api.get("/v1/models")
    async def models(request: Request) -> Response:
        state = get_state(request)
        card: dict[str, Any] = {
            "id": state.model_name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "rocmforge",
        }
        if state.llm.engine.core is not None:
            card["max_model_len"] = state.llm.max_model_len
        return JSONResponse({"object": "list", "data": [card]})

    @api.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await create_completion(get_state(request), body, request)

    @api.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await create_chat_completion(get_state(request), body, request)

    @api.post("/tokenize")
    async def tokenize(body: TokenizeRequest, request: Request) -> Response:
        state = get_state(request)
        state.check_ready()
        state.check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "give exactly one of prompt and messages", "invalid_request_error", "prompt")
        if body.messages is not None:
            messages = [message.model_dump(exclude_none=True) for message in body.messages]
            tokens = chat_prompt_ids(state, messages, body.add_generation_prompt)
        else:
            tokens = state.llm.tokenizer.encode(
                body.prompt or "", add_special=body.add_special_tokens, parse_special=True
            )
        return JSONResponse({"tokens": tokens, "count": len(tokens), "max_model_len": state.llm.max_model_len})

    @api.post("/detokenize")
    async def detokenize(body: DetokenizeRequest, request: Request) -> Response:
        state = get_state(request)
        state.check_ready()
        state.check_model(body.model)
        vocab = state.llm.engine.core.vocab_size if state.llm.engine.core is not None else 0
        bad = [t for t in body.tokens if not 0 <= t < vocab]
        if bad:
            raise APIError(
                400,
                f"invalid parameter tokens: ids must be in [0, {vocab}), got {bad[:5]}",
                "invalid_request_error",
                "tokens",
            )
        return JSONResponse({"prompt": state.llm.tokenizer.decode(body.tokens)})

    app.include_router(api)
    return app


async def _start(state: ServerState) -> None:
    """Start the engine, then load the chat template (it needs the tokenizer). A failure here leaves the engine
    stopped or dead, which /health and /ready report; `rocmforge serve` exits on it."""
    from rocmforge.server.chat_template import ChatTemplate, load_template_file

    await state.llm.start()
    try:
        path = state.config.chat_template
        state.chat_template = ChatTemplate.from_tokenizer(
            state.llm.tokenizer, override=load_template_file(path) if path else None, model_arch=_arch(state)
        )
    except BaseException:
        await state.llm.shutdown(0)
        raise
    logger.info("serving %s", state.model_name)


def _arch(state: ServerState) -> str | None:
    core = state.llm.engine.core
    return core.model.config.arch if core is not None else None
