"""`rocmforge bench serve`: its statistics, Poisson arrivals and SSE client on fakes, then real runs against a
`rocmforge serve` process on smollm2-135m and against a port where nothing listens."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from rocmforge.bench import serve
from rocmforge.bench.serve import ServeConfig, ServePrompt, ServeRequest, poisson_schedule, summarize_serve
from rocmforge.bench.throughput import RequestTiming
from rocmforge.cli.main import main
from tests.server.server_process import ServerProcess, free_port

MODEL_NAME = "smollm2-135m"

# ---------------------------------------------------------------------------------------------------- stats


def _ok(
    index: int, output_tokens: int, submitted: float, first: float, finished: float, gaps: tuple[float, ...]
) -> ServeRequest:
    timing = RequestTiming(10, output_tokens, submitted, first, finished, inter_token_s=gaps)
    return ServeRequest(index, timing, finish_reason="length", usage_reported=True)


def test_summary_of_fake_timings_counts_only_completed_requests() -> None:
    requests = [
        _ok(0, 5, submitted=0.0, first=0.5, finished=1.3, gaps=(0.2, 0.2, 0.2, 0.2)),
        _ok(1, 5, submitted=0.0, first=1.0, finished=3.0, gaps=(0.5,) * 4),
        _ok(2, 1, submitted=0.1, first=0.4, finished=0.4, gaps=()),  # one token: no TPOT, a short output
        ServeRequest(3, RequestTiming(10, 0, 0.2, None, 0.25), error="HTTP 503: draining"),
        ServeRequest(4, RequestTiming(10, 2, 0.2, 0.3, 0.35), error=serve.NO_FINISH_REASON, finish_reason=None),
        ServeRequest(5, RequestTiming(10, 0, 0.3, None, 0.31), error="HTTP 503: draining"),
    ]
    result = summarize_serve(requests, output_len=5, duration_s=4.0, max_in_flight=3)
    assert (result.completed, result.failed, result.short_outputs, result.usage_reported) == (3, 3, 1, 3)
    assert result.failure_reasons == {"HTTP 503: draining": 2, serve.NO_FINISH_REASON: 1}
    s = result.summary
    assert (s.prompt_tokens, s.output_tokens) == (30, 11)
    assert s.requests_per_s == pytest.approx(0.75) and s.output_tokens_per_s == pytest.approx(2.75)
    assert s.total_tokens_per_s == pytest.approx(41 / 4)
    assert s.ttft_ms.count == 3 and s.ttft_ms.mean == pytest.approx((500 + 1000 + 300) / 3)
    # TPOT = (E2E - TTFT) / (output tokens - 1): 800 / 4 and 2000 / 4 ms.
    assert s.tpot_ms.count == 2 and (s.tpot_ms.min, s.tpot_ms.max) == pytest.approx((200, 500))
    assert s.itl_ms.count == 8 and s.itl_ms.mean == pytest.approx(350) and s.itl_ms.percentile(50) == pytest.approx(350)
    assert (s.e2e_ms.min, s.e2e_ms.max) == pytest.approx((300, 3000)) and s.e2e_ms.percentile(50) == pytest.approx(1300)
    data = result.to_dict()
    json.dumps(data, allow_nan=False)
    assert data["completed"] == 3 and [r["ok"] for r in data["requests"]] == [True] * 3 + [False] * 3
    assert data["requests"][2]["tpot_ms"] is None and data["requests"][0]["ttft_ms"] == pytest.approx(500)
    table = serve.serve_table(result, [("server", "fake")])
    assert "3 of 6" in table and "2 x HTTP 503: draining" in table


def test_summary_when_every_request_failed_is_zeros_and_nones() -> None:
    requests = [ServeRequest(i, RequestTiming(8, 0, 0.0, None, 0.0), error="ConnectError: refused") for i in range(3)]
    result = summarize_serve(requests, output_len=4, duration_s=0.0)
    assert result.completed == 0 and result.failed == 3 and result.summary.output_tokens_per_s == 0
    assert result.summary.ttft_ms.mean is None and result.summary.e2e_ms.percentile(99) is None
    json.dumps(result.to_dict(), allow_nan=False)
    assert "3 x ConnectError: refused" in serve.serve_table(result, [("server", "fake")])


# ---------------------------------------------------------------------------------------------------- arrivals


def test_poisson_schedule_is_seeded_with_mean_interval_one_over_rate() -> None:
    times = poisson_schedule(4000, rate=8.0, seed=7)
    assert times == poisson_schedule(4000, rate=8.0, seed=7)
    assert times != poisson_schedule(4000, rate=8.0, seed=8)
    gaps = np.diff(times)
    assert times[0] == 0.0 and len(times) == 4000 and (gaps > 0).all()
    assert gaps.mean() == pytest.approx(1 / 8, rel=0.05)
    assert gaps.std() == pytest.approx(1 / 8, rel=0.08)  # exponential: std == mean, unlike evenly spaced sends
    assert poisson_schedule(1, rate=2.0, seed=0) == [0.0]
    for rate in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="rate"):
            poisson_schedule(3, rate=rate, seed=0)


# ---------------------------------------------------------------------------------------------------- SSE client


def _sse(*events: dict[str, Any] | str) -> bytes:
    lines = [f"data: {e if isinstance(e, str) else json.dumps(e)}\r\n\r\n" for e in events]
    return "".join(lines).encode()


def _send(handler: Callable[[httpx.Request], httpx.Response], endpoint: serve.Endpoint = "completions") -> ServeRequest:
    config = ServeConfig(url="http://fake/v1", model="m", output_len=3, endpoint=endpoint, extra_body={"top_k": 1})

    async def go() -> ServeRequest:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            return await serve.send_request(client, config, 0, ServePrompt("hi", 2), 3)

    return asyncio.run(go())


def _text(text: str, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "text": text, "finish_reason": finish}]}


def test_client_times_text_chunks_and_takes_tokens_from_usage() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        assert request.url.path == "/v1/completions"
        usage = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}}
        body = b": ping\r\n\r\n" + _sse(_text("a"), _text(""), _text("b"), _text("c", "length"), usage, "[DONE]")
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    record = _send(handler)
    assert record.ok and record.finish_reason == "length" and record.usage_reported
    assert (record.timing.prompt_tokens, record.timing.output_tokens, len(record.timing.inter_token_s)) == (3, 3, 2)
    assert record.timing.ttft_s is not None and record.timing.e2e_s >= record.timing.ttft_s
    body = seen[0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True} and body["ignore_eos"] is True
    assert (body["max_tokens"], body["prompt"], body["model"], body["top_k"]) == (3, "hi", "m", 1)


def test_client_counts_chunks_without_usage_and_reads_chat_deltas() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/chat/completions"
        assert json.loads(request.content)["messages"] == [{"role": "user", "content": "hi"}]
        deltas = [{"role": "assistant"}, {"content": "x"}, {"content": "y"}]
        events = [{"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
        events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        return httpx.Response(200, content=_sse(*events, "[DONE]"))

    record = _send(handler, "chat")
    assert record.ok and not record.usage_reported
    assert (record.timing.prompt_tokens, record.timing.output_tokens) == (2, 2)  # the prompt's count is ours


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (httpx.Response(429, json={"error": {"message": "queue full"}}), "HTTP 429: queue full"),
        (httpx.Response(500, text="boom"), "HTTP 500: boom"),
        (httpx.Response(200, content=_sse(_text("a"), {"error": {"message": "engine died"}})), "engine died"),
        (httpx.Response(200, content=_sse(_text("a"), "[DONE]")), "without a finish_reason"),
        (httpx.Response(200, content=_sse(_text("a", "abort"), "[DONE]")), "finish_reason 'abort'"),
        (httpx.Response(200, content=b"data: {not json\n\n"), "not JSON"),
    ],
)
def test_client_failures_carry_their_reason(response: httpx.Response, reason: str) -> None:
    record = _send(lambda request: response)
    assert not record.ok and record.error is not None and reason in record.error


def test_client_transport_errors_are_failures_not_exceptions() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("", request=request)

    record = _send(handler)
    assert record.error == "ReadTimeout"


def test_cli_mistakes_fail_before_any_request(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["bench", "serve", "--url", "http://127.0.0.1:9", "--model", "m"]
    assert main([*base, "--extra-body", "[1]"]) == 1
    assert main([*base, "--extra-body", "{nope"]) == 1
    assert main([*base, "--request-rate", "0"]) == 1
    assert main([*base, "--concurrency", "0"]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 4 and all(line.startswith("rocmforge: error: ") for line in errors)
    with pytest.raises(SystemExit):  # argparse: a fixed concurrency and an arrival rate exclude each other
        main([*base, "--concurrency", "2", "--request-rate", "1"])


# ---------------------------------------------------------------------------------------------------- real runs


@pytest.mark.slow
def test_exact_length_prompts_reencode_to_input_len(model_paths: dict[str, Path]) -> None:
    tokenizer = serve.load_tokenizer(str(model_paths[MODEL_NAME]))
    prompts = serve.exact_length_prompts(tokenizer, 16, 24, seed=3)
    assert prompts == serve.exact_length_prompts(tokenizer, 16, 24, seed=3)
    assert len({p.text for p in prompts}) == 16
    for prompt in prompts:
        assert len(tokenizer.encode(prompt.text, add_special=False, parse_special=True)) == 24
        assert prompt.tokens == len(tokenizer.encode(prompt.text, add_special=True, parse_special=True))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_run_against_rocmforge_serve(model_paths: dict[str, Path], tmp_path: Path) -> None:
    server = ServerProcess(MODEL_NAME)
    try:
        server.wait_ready()
        out = tmp_path / "serve.json"
        argv = ["bench", "serve", "--url", server.url, "--num-prompts", "4", "--input-len", "8", "--output-len", "4"]
        assert main([*argv, "--concurrency", "2", "--json", str(out)]) == 0, server.log()
    finally:
        server.stop()
    data = json.loads(out.read_text())
    results = data["results"]
    assert data["config"]["model"] == MODEL_NAME  # the first of GET /v1/models
    assert (results["completed"], results["failed"], results["failure_reasons"]) == (4, 0, {})
    assert results["warmup_error"] is None and results["max_in_flight"] == 2
    assert results["output_tokens"] == 4 * 4 and results["output_tokens_from_usage"] == 4
    assert results["short_outputs"] == 0 and results["prompt_tokens"] >= 4 * 8
    duration = results["duration_s"]
    assert results["request_throughput"] == pytest.approx(4 / duration)
    assert results["output_token_throughput"] == pytest.approx(16 / duration)
    for metric, count in (("ttft_ms", 4), ("tpot_ms", 4), ("itl_ms", 4 * 3), ("e2e_ms", 4)):
        summary = results[metric]
        assert summary["count"] == count
        assert 0 <= summary["min"] <= summary["p50"] <= summary["p90"] <= summary["p99"] <= summary["max"]
    assert results["ttft_ms"]["max"] <= results["e2e_ms"]["max"] <= duration * 1e3
    for request in results["requests"]:
        assert request["ok"] and request["output_tokens"] == 4 and request["finish_reason"] == "length"


@pytest.mark.slow
def test_nothing_listening_reports_failures_cleanly(
    model_paths: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "down.json"
    argv = ["bench", "serve", "--url", url, "--num-prompts", "3", "--input-len", "8", "--output-len", "4"]
    assert main([*argv, "--model", MODEL_NAME, "--concurrency", "2", "--json", str(out)]) == 1
    table = capsys.readouterr().out
    assert "0 of 3" in table and "3 x ConnectError" in table
    results = json.loads(out.read_text())["results"]
    assert (results["completed"], results["failed"]) == (0, 3) and results["warmup_error"].startswith("ConnectError")
    assert results["ttft_ms"]["p50"] is None and results["output_token_throughput"] == 0
    # Without --model the model list cannot be had either: one line, exit status 1.
    assert main(argv) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("rocmforge: error: cannot list the models") and "\n" not in error
