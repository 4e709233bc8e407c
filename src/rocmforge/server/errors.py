"""Errors in OpenAI's schema — {"error": {"message", "type", "param", "code"}} — and the handlers that make every
failure one. A client mistake is a 4xx naming what was wrong, never a 500 or a traceback."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rocmforge.errors import (
    EngineDeadError,
    EngineNotRunningError,
    QueueFullError,
    RocmForgeError,
    ValidationError,
)

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = "5"


class APIError(Exception):
    """An error answered as is: status, OpenAI error type, and optionally the parameter and a code."""

    def __init__(
        self,
        status: int,
        message: str,
        error_type: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.error_type = status, message, error_type
        self.param, self.code, self.headers = param, code, headers


def error_response(error: APIError) -> JSONResponse:
    body = {"error": {"message": error.message, "type": error.error_type, "param": error.param, "code": error.code}}
    return JSONResponse(body, status_code=error.status, headers=error.headers)


def not_ready(message: str) -> APIError:
    return APIError(503, message, "service_unavailable", code="not_ready", headers={"Retry-After": RETRY_AFTER_SECONDS})


def to_api_error(exc: BaseException) -> APIError:
    """The OpenAI-schema error for an exception raised while serving a request."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ValidationError):
        return APIError(400, str(exc), "invalid_request_error", exc.param)
    if isinstance(exc, QueueFullError):
        return APIError(429, str(exc), "rate_limit_exceeded", headers={"Retry-After": RETRY_AFTER_SECONDS})
    if isinstance(exc, EngineDeadError):
        return APIError(503, str(exc), "service_unavailable", code="engine_dead")
    if isinstance(exc, EngineNotRunningError):
        return not_ready(str(exc))
    logger.exception("unexpected error while serving a request", exc_info=exc)
    return APIError(500, "internal server error", "internal_error")


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors: list[dict[str, Any]] = list(exc.errors())
    first = errors[0] if errors else {}
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON", None
    if first.get("type") == "missing" and param is None:
        return "the request needs a JSON body", None
    return f"invalid parameter {param}: {first.get('msg', 'invalid value')}", param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(APIError(400, message, "invalid_request_error", param))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error_type = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(APIError(exc.status_code, str(exc.detail), error_type, headers=exc.headers))

    # Our deliberate errors get their own handlers: Starlette treats the catch-all Exception handler as a
    # server error, logging a traceback and re-raising after the response.
    @app.exception_handler(APIError)
    @app.exception_handler(RocmForgeError)
    async def _deliberate_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(to_api_error(exc))

    @app.exception_handler(Exception)
    async def _any_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(to_api_error(exc))
