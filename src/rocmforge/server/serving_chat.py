"""POST /v1/chat/completions: messages through the model's chat template -> assistant replies, SSE or whole."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import Response
from starlette.requests import Request

from rocmforge.server.choices import Choices, chat_logprobs
from rocmforge.server.protocol import ChatCompletionRequest
from rocmforge.server.state import ServerState
from rocmforge.server.streams import event_stream, json_unless_disconnected, merged_outputs, usage


def chat_prompt_ids(
    state: ServerState, messages: list[dict[str, Any]], add_generation_prompt: bool, **extra: Any
) -> list[int]:
    """Render the conversation with the chat template and tokenize it as llama-server does: special tokens
    added by the tokenizer's rules (the template leaves out a BOS the tokenizer adds) and parsed in the text."""
    template = state.chat_template
    text = template.render(messages, add_generation_prompt=add_generation_prompt, **extra)  # type: ignore[attr-defined]
    return state.llm.tokenizer.encode(text, add_special=True, parse_special=True)


async def create_chat_completion(state: ServerState, body: ChatCompletionRequest, request: Request) -> Response:
    state.check_ready()
    state.check_model(body.model)
    llm = state.llm
    extra = dict(body.chat_template_kwargs or {})
    if body.tools is not None:
        extra["tools"] = body.tools
    prompt = chat_prompt_ids(state, body.message_dicts(), body.add_generation_prompt, **extra)
    requested = body.requested_max_tokens()
    max_tokens = requested if requested is not None else max(1, llm.max_model_len - len(prompt))
    logprobs = body.requested_logprobs()
    params = body.sampling_params(max_tokens, logprobs)
    llm.validate(prompt, params)
    admission = state.admit(1)
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    head = {"id": request_id, "object": "chat.completion", "created": int(time.time()), "model": state.model_name}
    choices = Choices(1, body.n, [len(prompt)], state.metrics)
    outputs = merged_outputs(llm, [prompt], params, request_id)

    if body.stream:
        chunk_head = head | {"object": "chat.completion.chunk"}

        async def chunks() -> AsyncIterator[dict[str, Any]]:
            for index in range(body.n):  # OpenAI opens each choice with the role
                delta = {"role": "assistant", "content": ""}
                yield chunk_head | {"choices": [{"index": index, "delta": delta, "finish_reason": None}]}
            async for _, output in outputs:
                for index, sample in choices.update(0, output):
                    entry: dict[str, Any] = {
                        "index": index,
                        "delta": {"content": sample.text} if sample.text else {},
                        "finish_reason": sample.finish_reason,
                    }
                    if logprobs is not None:
                        entry["logprobs"] = chat_logprobs(llm.tokenizer, sample.logprobs or [])
                    yield chunk_head | {"choices": [entry]}
            if body.include_usage:
                yield chunk_head | {"choices": [], "usage": usage(choices.prompt_tokens, choices.completion_tokens)}

        return event_stream(chunks(), admission)

    async def collect() -> dict[str, Any]:
        async for _, output in outputs:
            choices.update(0, output)
        return head | {
            "choices": [
                {
                    "index": index,
                    "message": {"role": "assistant", "content": choice.text},
                    "logprobs": chat_logprobs(llm.tokenizer, choice.logprobs) if logprobs is not None else None,
                    "finish_reason": choice.finish_reason,
                }
                for index, choice in enumerate(choices.choices)
            ],
            "usage": usage(choices.prompt_tokens, choices.completion_tokens),
        }

    return await json_unless_disconnected(request, collect(), admission)
