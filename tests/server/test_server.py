"""The OpenAI-compatible server as users reach it: a real `rocmforge serve` on 127.0.0.1, the official `openai`
client for the API, httpx for the error cases."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.server.server_process import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MODEL_NAME = "smollm2-135m"
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def server(model_paths: dict[str, Path]) -> Iterator[ServerProcess]:
    limits = ("--max-num-seqs", "64", "--max-model-len", "2048", "--max-queued-requests", "512")
    process = ServerProcess(MODEL_NAME, *limits)
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_completion_and_its_stream_agree(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=MODEL_NAME, prompt="The capital of France is", max_tokens=12, seed=3)
    assert whole.choices[0].finish_reason in ("length", "stop")
    assert whole.usage is not None and whole.usage.prompt_tokens > 0
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    chunks = list(
        client.completions.create(
            model=MODEL_NAME,
            prompt="The capital of France is",
            max_tokens=12,
            seed=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_chat_completion_and_its_stream_agree(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_completion_tokens=16, seed=5)
    message = whole.choices[0].message
    assert message.role == "assistant" and message.content
    stream = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=16, seed=5, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_n_logprobs_stop_and_extras(client: openai.OpenAI) -> None:
    result = client.completions.create(
        model=MODEL_NAME,
        prompt="1, 2, 3,",
        max_tokens=8,
        n=3,
        logprobs=2,
        temperature=0.9,
        seed=11,
        extra_body={"top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1},
    )
    assert sorted(c.index for c in result.choices) == [0, 1, 2]
    for choice in result.choices:
        assert choice.logprobs is not None and len(choice.logprobs.tokens) == len(choice.logprobs.token_logprobs)
        assert all(len(top) <= 2 for top in choice.logprobs.top_logprobs)
    greedy = client.completions.create(model=MODEL_NAME, prompt="1, 2, 3,", max_tokens=8, temperature=0)
    stop = greedy.choices[0].text[3:5]
    cut = client.completions.create(model=MODEL_NAME, prompt="1, 2, 3,", max_tokens=8, temperature=0, stop=[stop])
    assert cut.choices[0].text == greedy.choices[0].text[: greedy.choices[0].text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    chat = client.chat.completions.create(
        model=MODEL_NAME, messages=CHAT, max_tokens=4, logprobs=True, top_logprobs=3, temperature=0
    )
    content = chat.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content and all(len(entry.top_logprobs) == 3 for entry in content)


def test_models_tokenize_detokenize(server: ServerProcess, client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    assert models.data[0].model_extra["max_model_len"] == 2048  # type: ignore[index]
    tokens = httpx.post(f"{server.url}/tokenize", json={"prompt": "Hello world"}).json()
    assert tokens["count"] == len(tokens["tokens"]) > 0
    text = httpx.post(f"{server.url}/detokenize", json={"tokens": tokens["tokens"]}).json()["prompt"]
    assert text.endswith("Hello world")
    chat_tokens = httpx.post(f"{server.url}/tokenize", json={"messages": CHAT}).json()
    assert chat_tokens["count"] > tokens["count"]


@pytest.mark.parametrize(
    "body, status, param",
    [
        ({"model": MODEL_NAME, "prompt": "hi", "temperature": -1}, 400, "temperature"),
        ({"model": MODEL_NAME, "prompt": "hi", "max_tokens": "many"}, 400, "max_tokens"),
        ({"model": MODEL_NAME, "prompt": "hi", "top_p": 0}, 400, "top_p"),
        ({"model": MODEL_NAME, "prompt": "hi", "logit_bias": {"999999999": 1}}, 400, "logit_bias"),
        ({"model": MODEL_NAME}, 400, "prompt"),
        ({"model": MODEL_NAME, "prompt": "hi " * 3000}, 400, None),
        ({"model": MODEL_NAME, "prompt": "hi", "max_tokens": 5000}, 400, None),
        ({"model": "gpt-4", "prompt": "hi"}, 404, "model"),
    ],
)
def test_bad_completion_requests(
    server: ServerProcess, body: dict[str, object], status: int, param: str | None
) -> None:
    response = httpx.post(f"{server.url}/v1/completions", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    if param is not None:
        assert error["param"] == param


def test_bad_chat_requests_and_bodies(server: ServerProcess) -> None:
    url = f"{server.url}/v1/chat/completions"
    bad_role = httpx.post(url, json={"model": MODEL_NAME, "messages": [{"role": "wizard", "content": "x"}]})
    assert bad_role.status_code == 400 and "messages" in bad_role.json()["error"]["param"]
    empty = httpx.post(url, json={"model": MODEL_NAME, "messages": []})
    assert empty.status_code == 400
    malformed = httpx.post(url, content=b"{not json", headers={"content-type": "application/json"})
    assert malformed.status_code == 400 and "JSON" in malformed.json()["error"]["message"]
    huge = httpx.post(url, content=b"x" * (11 << 20), headers={"content-type": "application/json"})
    assert huge.status_code == 413
    missing = httpx.get(f"{server.url}/v1/nothing")
    assert missing.status_code == 404 and "error" in missing.json()
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.get(f"{server.url}/ready").status_code == 200


def test_metrics_count_requests_and_tokens(server: ServerProcess, client: openai.OpenAI) -> None:
    client.completions.create(model=MODEL_NAME, prompt="Hello", max_tokens=3)
    text = httpx.get(f"{server.url}/metrics").text
    for name in (
        "rocmforge_requests_total",
        "rocmforge_prompt_tokens_total",
        "rocmforge_generation_tokens_total",
        "rocmforge_time_to_first_token_seconds_bucket",
        "rocmforge_time_per_output_token_seconds_bucket",
        "rocmforge_e2e_request_latency_seconds_bucket",
        "rocmforge_num_requests_running",
        "rocmforge_num_requests_waiting",
        "rocmforge_kv_cache_usage_perc",
        "rocmforge_prefix_cache_hit_rate",
    ):
        assert name in text, name
    assert 'finish_reason="length"' in text


def _metric(server: ServerProcess, name: str) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


def test_128_concurrent_streams_then_disconnects_leave_no_blocks(server: ServerProcess, client: openai.OpenAI) -> None:
    prompts = [f"Story {i}: once upon a time" for i in range(128)]

    async def main() -> None:
        aclient = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)

        async def streamed(prompt: str, seed: int, leave_after: int | None) -> tuple[str, int | None, bool]:
            stream = await aclient.completions.create(
                model=MODEL_NAME,
                prompt=prompt,
                max_tokens=16,
                seed=seed,
                temperature=0.8,
                stream=True,
                stream_options={"include_usage": True},
            )
            text, completion_tokens, count = [], None, 0
            async for chunk in stream:
                if chunk.choices:
                    text.append(chunk.choices[0].text)
                if chunk.usage is not None:
                    completion_tokens = chunk.usage.completion_tokens
                count += 1
                if leave_after is not None and count >= leave_after:
                    await stream.close()  # the client goes away mid-stream
                    return "".join(text), None, False
            return "".join(text), completion_tokens, True

        results = await asyncio.gather(*(streamed(p, i, None) for i, p in enumerate(prompts)))
        assert all(done for _, _, done in results)  # the client library saw [DONE] on every stream
        wholes = await asyncio.gather(
            *(
                aclient.completions.create(model=MODEL_NAME, prompt=p, max_tokens=16, seed=i, temperature=0.8)
                for i, p in enumerate(prompts[:16])
            )
        )
        for (text, tokens, _), whole in zip(results[:16], wholes, strict=False):
            assert text == whole.choices[0].text and tokens == whole.usage.completion_tokens  # type: ignore[union-attr]
        # A fifth of a new wave leaves mid-stream; the rest finish.
        await asyncio.gather(*(streamed(p, i, 3 if i % 5 == 0 else None) for i, p in enumerate(prompts)))
        await aclient.close()

    asyncio.run(main())
    # The server notices a disconnect on its own schedule: wait (bounded) for the aborts to land.
    for _ in range(100):
        if _metric(server, "rocmforge_num_requests_running") == _metric(server, "rocmforge_kv_cache_usage_perc") == 0:
            break
        time.sleep(0.1)
    assert _metric(server, "rocmforge_kv_cache_usage_perc") == 0.0
    assert _metric(server, "rocmforge_num_requests_running") == 0.0


def test_a_raw_stream_ends_with_done(server: ServerProcess) -> None:
    body = {"model": MODEL_NAME, "messages": CHAT, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    assert all(line.startswith("data: ") for line in lines)
    payloads = [json.loads(line[6:]) for line in lines[:-1]]
    assert payloads[-1]["choices"][0]["finish_reason"] in ("length", "stop")
