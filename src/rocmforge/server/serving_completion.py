"""POST /v1/completions: prompts (text or token ids) -> completions, streamed as SSE or returned whole."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import Response
from starlette.requests import Request

from rocmforge.server.choices import Choices, completion_logprobs
from rocmforge.server.protocol import CompletionRequest
from rocmforge.server.state import ServerState
from rocmforge.server.streams import event_stream, json_unless_disconnected, merged_outputs, usage


async def create_completion(state: ServerState, body: CompletionRequest, request: Request) -> Response:
    state.check_ready()
    state.check_model(body.model)
    llm = state.llm
    prompts = [
        p if isinstance(p, list) else llm.tokenizer.encode(p, add_special=True, parse_special=True)
        for p in body.prompts()
    ]
    longest = max(len(p) for p in prompts)
    max_tokens = body.max_tokens if body.max_tokens is not None else max(1, llm.max_model_len - longest)
    params = body.sampling_params(max_tokens, body.logprobs)
    for prompt in prompts:
        llm.validate(prompt, params)  # 400 now, before a stream starts
    admission = state.admit(len(prompts))
    request_id = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    choices = Choices(len(prompts), body.n, [len(p) for p in prompts], state.metrics)
    echoes = [llm.tokenizer.decode(p) if body.echo else "" for p in prompts]
    outputs = merged_outputs(llm, prompts, params, request_id)
    head = {"id": request_id, "object": "text_completion", "created": created, "model": state.model_name}

    if body.stream:

        async def chunks() -> AsyncIterator[dict[str, Any]]:
            echoed: set[int] = set()
            async for prompt_index, output in outputs:
                for index, delta in choices.update(prompt_index, output):
                    text = delta.text
                    if body.echo and index not in echoed:
                        echoed.add(index)
                        text = echoes[prompt_index] + text
                    logprobs = (
                        completion_logprobs(llm.tokenizer, delta.logprobs or [], 0)
                        if body.logprobs is not None
                        else None
                    )
                    choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": delta.finish_reason}
                    yield head | {"choices": [choice]}
            if body.include_usage:
                yield head | {"choices": [], "usage": usage(choices.prompt_tokens, choices.completion_tokens)}

        return event_stream(chunks(), admission)

    async def collect() -> dict[str, Any]:
        async for prompt_index, output in outputs:
            choices.update(prompt_index, output)
        return head | {
            "choices": [_final_choice(state, body, choices, index, echoes) for index in range(len(choices.choices))],
            "usage": usage(choices.prompt_tokens, choices.completion_tokens),
        }

    return await json_unless_disconnected(request, collect(), admission)


def _final_choice(
    state: ServerState, body: CompletionRequest, choices: Choices, index: int, echoes: list[str]
) -> dict[str, Any]:
    choice = choices.choices[index]
    prefix = echoes[index // body.n]
    logprobs = (
        completion_logprobs(state.llm.tokenizer, choice.logprobs, len(prefix)) if body.logprobs is not None else None
    )
    return {"index": index, "text": prefix + choice.text, "logprobs": logprobs, "finish_reason": choice.finish_reason}
