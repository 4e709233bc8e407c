"""The server process under signals, at startup, with API keys and with hostile chat templates."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.server.server_process import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MODEL_NAME = "smollm2-135m"


async def _streams(url: str, count: int, max_tokens: int) -> list[tuple[str | None, bool]]:
    """Open ``count`` streams; return each one's last finish_reason and whether it ended properly."""
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

    async def one(i: int) -> tuple[str | None, bool]:
        stream = await client.completions.create(
            model=MODEL_NAME,
            prompt=f"Count to a hundred: {i},",
            max_tokens=max_tokens,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        reason = None
        async for chunk in stream:
            reason = chunk.choices[0].finish_reason or reason
        return reason, True

    try:
        return await asyncio.gather(*(one(i) for i in range(count)))
    finally:
        await client.close()


async def _wait_running(http: httpx.AsyncClient, url: str, count: int) -> None:
    """Wait (bounded) until the engine runs ``count`` requests (at least; exactly for 0), as a monitoring
    client would see it."""
    for _ in range(1200):
        metrics = (await http.get(f"{url}/metrics")).text
        running = [line for line in metrics.splitlines() if line.startswith("rocmforge_num_requests_running{")]
        value = float(running[0].rsplit(" ", 1)[1]) if running else -1
        if (count == 0 and value == 0) or (count > 0 and value >= count):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never saw {count} running requests")


def _sigterm_when_streaming(server: ServerProcess, count: int, max_tokens: int) -> list[tuple[str | None, bool]]:
    async def main() -> list[tuple[str | None, bool]]:
        streams = asyncio.create_task(_streams(server.url, count, max_tokens))
        async with httpx.AsyncClient() as http:  # wait until every stream is running, then signal
            await _wait_running(http, server.url, count)
            server.signal(signal.SIGTERM)
            # Draining: new requests get 503 with Retry-After, never a hang or a 500.
            late = await http.post(f"{server.url}/v1/completions", json={"model": MODEL_NAME, "prompt": "hi"})
            assert late.status_code == 503 and late.headers.get("retry-after"), late.text
            ready = await http.get(f"{server.url}/ready")
            assert ready.status_code == 503
        return await streams

    return asyncio.run(main())


def test_sigterm_with_a_long_timeout_lets_16_streams_finish(model_paths: dict[str, Path]) -> None:
    server = ServerProcess(MODEL_NAME, "--shutdown-timeout", "300")
    try:
        server.wait_ready()
        results = _sigterm_when_streaming(server, 16, 48)
        assert results == [("length", True)] * 16
        assert server.wait(timeout=120) == 0, server.log()
        assert "Traceback" not in server.log()
    finally:
        server.stop()


def test_sigterm_with_a_short_timeout_aborts_the_streams(model_paths: dict[str, Path]) -> None:
    server = ServerProcess(MODEL_NAME, "--shutdown-timeout", "0.5")
    try:
        server.wait_ready()
        results = _sigterm_when_streaming(server, 16, 4000)
        assert results == [("abort", True)] * 16
        assert server.wait(timeout=120) == 0, server.log()
    finally:
        server.stop()


def test_a_second_signal_aborts_at_once(model_paths: dict[str, Path]) -> None:
    server = ServerProcess(MODEL_NAME, "--shutdown-timeout", "600")
    try:
        server.wait_ready()

        async def main() -> list[tuple[str | None, bool]]:
            streams = asyncio.create_task(_streams(server.url, 4, 4000))
            async with httpx.AsyncClient() as http:
                await _wait_running(http, server.url, 4)
            server.signal(signal.SIGTERM)
            server.signal(signal.SIGINT)
            return await streams

        started = time.monotonic()
        results = asyncio.run(main())
        assert results == [("abort", True)] * 4
        assert server.wait(timeout=60) == 0
        assert time.monotonic() - started < 60
    finally:
        server.stop()


def test_clients_firing_from_the_moment_the_port_opens_get_answers_or_503(model_paths: dict[str, Path]) -> None:
    server = ServerProcess(MODEL_NAME)
    statuses: list[int] = []
    try:
        body = {"model": MODEL_NAME, "prompt": "Hello", "max_tokens": 2}
        deadline = time.monotonic() + 120
        with httpx.Client(timeout=60) as http:
            while time.monotonic() < deadline:
                try:
                    response = http.post(f"{server.url}/v1/completions", json=body)
                except httpx.TransportError:
                    continue  # the port is not open yet
                statuses.append(response.status_code)
                if response.status_code == 503:
                    assert response.headers.get("retry-after")
                    continue
                assert response.status_code == 200, response.text
                assert response.json()["choices"][0]["text"] is not None
                break
        assert statuses and statuses[-1] == 200 and set(statuses) <= {200, 503}
    finally:
        server.stop()


def test_api_keys(model_paths: dict[str, Path]) -> None:
    server = ServerProcess(MODEL_NAME, "--api-key", "key-one", env={"ROCMFORGE_API_KEY": "ignored"})
    try:
        server.wait_ready()
        url = f"{server.url}/v1/models"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Bearer key-one"}).status_code == 200
        assert httpx.get(f"{server.url}/metrics").status_code == 401
        assert httpx.get(f"{server.url}/health").status_code == 200
        assert httpx.get(f"{server.url}/ready").status_code == 200
        error = httpx.post(f"{server.url}/v1/completions", json={"model": MODEL_NAME, "prompt": "x"}).json()["error"]
        assert error["type"] == "authentication_error"
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="key-one", max_retries=0)
        assert client.completions.create(model=MODEL_NAME, prompt="Hi", max_tokens=2).choices
    finally:
        server.stop()


def test_env_api_keys(model_paths: dict[str, Path]) -> None:
    server = ServerProcess(MODEL_NAME, env={"ROCMFORGE_API_KEY": "alpha,beta"})
    try:
        server.wait_ready()
        url = f"{server.url}/v1/models"
        assert httpx.get(url).status_code == 401
        for key in ("alpha", "beta"):
            assert httpx.get(url, headers={"Authorization": f"Bearer {key}"}).status_code == 200
    finally:
        server.stop()


def test_hostile_chat_templates(model_paths: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}{{ m.content ")
    server = ServerProcess(MODEL_NAME, "--chat-template", str(broken))
    assert server.wait(timeout=120) == 1
    assert "chat template" in server.log().lower() and "Traceback" not in server.log()

    hostile = tmp_path / "hostile.jinja"
    hostile.write_text(
        "{% if messages[0].content == 'escape' %}{{ ''.__class__.__mro__[1].__subclasses__() }}"
        "{% elif messages[0].content == 'loop' %}{% for i in range(10**9) %}x{% endfor %}"
        "{% else %}{{ raise_exception('no ' + messages[0].role + ' messages here') }}{% endif %}"
    )
    server = ServerProcess(MODEL_NAME, "--chat-template", str(hostile))
    try:
        server.wait_ready()
        url = f"{server.url}/v1/chat/completions"
        for content in ("escape", "loop", "other"):
            body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": content}], "max_tokens": 2}
            response = httpx.post(url, json=body, timeout=60)
            assert response.status_code == 400, response.text
            assert response.json()["error"]["type"] == "invalid_request_error"
        assert "no user messages here" in response.json()["error"]["message"]
        assert httpx.get(f"{server.url}/health").status_code == 200  # the server is unharmed
    finally:
        server.stop()


def test_queue_limit_answers_429_and_a_non_streamed_disconnect_aborts(model_paths: dict[str, Path]) -> None:
    server = ServerProcess(MODEL_NAME, "--max-num-seqs", "1", "--max-queued-requests", "0")
    try:
        server.wait_ready()
        long_body = {"model": MODEL_NAME, "prompt": "Count:", "max_tokens": 4000, "ignore_eos": True}

        async def main() -> None:
            # A non-streamed request whose client gives up and goes away: the server must abort it.
            async with httpx.AsyncClient(timeout=httpx.Timeout(120, read=2)) as impatient:
                with pytest.raises(httpx.ReadTimeout):
                    await impatient.post(f"{server.url}/v1/completions", json=long_body)
            async with httpx.AsyncClient(timeout=120) as http:
                await _wait_running(http, server.url, 0)
                # One long stream fills the only slot; the next request is refused with 429 and Retry-After.
                async with http.stream(
                    "POST", f"{server.url}/v1/completions", json=long_body | {"stream": True}
                ) as first:
                    lines = first.aiter_lines()  # kept referenced: a collected line iterator closes the response
                    await anext(lines)
                    refused = await http.post(f"{server.url}/v1/completions", json={"model": MODEL_NAME, "prompt": "x"})
                    assert refused.status_code == 429, refused.text
                    assert refused.headers.get("retry-after")
                    assert refused.json()["error"]["type"] == "rate_limit_exceeded"
                    await lines.aclose()
                await _wait_running(http, server.url, 0)  # leaving the stream aborted it
                ok = await http.post(
                    f"{server.url}/v1/completions", json={"model": MODEL_NAME, "prompt": "x", "max_tokens": 2}
                )
                assert ok.status_code == 200

        asyncio.run(main())
    finally:
        server.stop()
