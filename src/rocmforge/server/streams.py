"""Running one HTTP request's engine requests: several prompts or samples merged into one stream, SSE framing,
and non-streamed results that still abort when the client goes away."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from rocmforge.engine.async_llm import AsyncLLM
from rocmforge.engine.outputs import RequestOutput
from rocmforge.sampling_params import SamplingParams
from rocmforge.server.errors import to_api_error
from rocmforge.server.state import Admission

T = TypeVar("T")
_DONE = object()


def sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


async def merged_outputs(
    llm: AsyncLLM, prompts: list[list[int]], params: SamplingParams, request_id: str
) -> AsyncIterator[tuple[int, RequestOutput]]:
    """Run every prompt as its own engine request; yield (prompt index, output delta) as they come.

    Leaving the iteration early (the client went away, or an error) cancels every request, which aborts it.
    """
    queue: asyncio.Queue[tuple[int, RequestOutput] | BaseException | object] = asyncio.Queue()

    async def pump(index: int, prompt: list[int]) -> None:
        try:
            async for output in llm.generate(prompt, params, request_id=f"{request_id}-{index}"):
                queue.put_nowait((index, output))
        except Exception as exc:  # delivered to the consumer, which raises it
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(_DONE)

    tasks = [asyncio.create_task(pump(index, prompt)) for index, prompt in enumerate(prompts)]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is _DONE:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Await ``work``, or cancel it (aborting its engine requests) if the client disconnects first; None then.

    The disconnect is noticed by waiting on the ASGI receive channel, not by polling.
    """

    async def disconnected() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    work_task = asyncio.ensure_future(work)
    watch = asyncio.create_task(disconnected())
    try:
        done, _ = await asyncio.wait({work_task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if work_task in done:
            return work_task.result()
        work_task.cancel()
        await asyncio.gather(work_task, return_exceptions=True)
        return None
    finally:
        watch.cancel()
        work_task.cancel()


def event_stream(chunks: AsyncIterator[dict[str, Any]], admission: Admission) -> StreamingResponse:
    """An SSE response of ``chunks`` ending in ``data: [DONE]``. The response has started by the time a chunk
    fails, so an error goes in-band as one ``{"error": ...}`` event. The admission is released when the stream
    ends, or by a background task should the body never be iterated (the client left first)."""

    async def events() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield sse(chunk)
        except Exception as exc:
            error = to_api_error(exc)
            yield sse({"error": {"message": error.message, "type": error.error_type, "code": error.code}})
        finally:
            admission.release()
        yield SSE_DONE

    return StreamingResponse(events(), media_type="text/event-stream", background=BackgroundTask(admission.release))


async def json_unless_disconnected(request: Request, work: Awaitable[dict[str, Any]], admission: Admission) -> Response:
    """The JSON answer of a non-streamed request, or 499 (which nobody reads) when its client left first; the
    admission is released either way."""
    try:
        result = await unless_disconnected(request, work)
    finally:
        admission.release()
    return Response(status_code=499) if result is None else JSONResponse(result)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
