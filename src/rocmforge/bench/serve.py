"""Online benchmark of any OpenAI-compatible server, in the manner of ``vllm bench serve``.

Requests stream over SSE (``/v1/completions`` or ``/v1/chat/completions``), sent either by a fixed number of
concurrent clients or at Poisson arrival times, and every request is timed as its client sees it:

- TTFT: the first chunk that carries text - the moment the request was sent;
- ITL: the gaps between successive chunks that carry text;
- TPOT: (E2E - TTFT) / (output tokens - 1), only for requests with more than one output token;
- E2E: the end of the stream - the moment the request was sent.

Output tokens come from the server's ``usage`` (asked for with ``stream_options.include_usage``) when it sends one,
else from the number of text chunks (llama-cpp-python's server sends no usage in streams). Every request asks for
``ignore_eos`` so that it yields exactly ``max_tokens``; servers that do not know the field ignore it and may stop
early, which the report shows as short outputs rather than hiding.

A request fails on a non-200 answer, an error sent in the stream, a stream cut off without a finish_reason (what
llama-cpp-python's server does to a stream when another request arrives, unless ``--interrupt_requests False``),
a finish_reason of "abort" or "error", or any transport exception; the run goes on and reports each reason.

Duration runs from the first request sent to the last one ended; request and token throughput are the completed
requests' over it (as vLLM's). The timing records are throughput.RequestTiming, so the summaries and percentiles
are the offline benchmark's own (throughput.summarize_run).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import httpx
import numpy as np
from tqdm import tqdm

from rocmforge.bench import workload
from rocmforge.bench.report import _rows, _summary_table
from rocmforge.bench.stats import DEFAULT_PERCENTILES, summarize
from rocmforge.bench.throughput import RequestTiming, ThroughputResult, summarize_run
from rocmforge.errors import RocmForgeError, ValidationError
from rocmforge.gguf.reader import GGUFFile
from rocmforge.gguf.tokenizer import Tokenizer
from rocmforge.hub import resolve_model

Endpoint = Literal["completions", "chat"]
ENDPOINT_PATHS: Mapping[str, str] = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
WARMUP_OUTPUT_LEN = 16  # enough steps to warm a server's decode path without costing a whole request
EXACT_LENGTH_ROUNDS = 10  # decode/re-encode rounds before settling for the closest length found
NO_FINISH_REASON = "the stream ended without a finish_reason (the server cut it off)"


class ServeBenchError(RocmForgeError):
    """The benchmark cannot start: the server is unreachable or names no model."""


class PromptTokenizer(workload.Vocabulary, Protocol):
    """What exact-length text prompts need of a tokenizer (rocmforge.gguf.tokenizer.Tokenizer provides it)."""

    def encode(self, text: str, add_special: bool = True, parse_special: bool = False) -> list[int]: ...

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = False) -> str: ...


@dataclass(frozen=True)
class ServePrompt:
    """A prompt's text and its token count as a server with the same tokenizer sees it (BOS included)."""

    text: str
    tokens: int


# ---------------------------------------------------------------------------------------------------- prompts


def load_tokenizer(name_or_path: str, progress: bool = False) -> Tokenizer:
    """The tokenizer of a named model or GGUF file, read from its metadata without loading any weight."""
    path = resolve_model(name_or_path, progress=progress)
    with GGUFFile(path) as gguf_file:
        return Tokenizer.from_metadata(gguf_file.metadata, source=str(path))


def exact_length_prompts(tokenizer: PromptTokenizer, num_prompts: int, input_len: int, seed: int) -> list[ServePrompt]:
    """``num_prompts`` texts of random tokens that re-encode to ``input_len`` tokens (BOS aside).

    A server gets text, not ids, so both servers of a comparison tokenize the same string. Decoding random ids does
    not round-trip (pieces merge, cut UTF-8 becomes U+FFFD), so the text is re-encoded and its ids cut or topped up
    with fresh random ones until the count is exact; the closest text is kept if that takes too many rounds.
    """
    pool = workload.sampleable_token_ids(tokenizer)
    drawn = workload.random_prompts(pool, num_prompts, input_len, seed)
    rng = np.random.default_rng([seed, 1])  # top-ups: a stream of its own, so the first draws match random_prompts
    prompts = []
    for ids in drawn:
        best_text, best_len = "", -1
        for _ in range(EXACT_LENGTH_ROUNDS):
            text = tokenizer.decode(ids)
            encoded = tokenizer.encode(text, add_special=False, parse_special=True)
            if best_len < 0 or abs(len(encoded) - input_len) < abs(best_len - input_len):
                best_text, best_len = text, len(encoded)
            if len(encoded) == input_len:
                break
            if len(encoded) > input_len:
                ids = encoded[:input_len]
            else:
                ids = encoded + rng.choice(pool, size=input_len - len(encoded)).tolist()
        prompts.append(ServePrompt(best_text, _server_tokens(tokenizer, best_text)))
    return prompts


def dataset_prompts(
    texts: Sequence[str], tokenizer: PromptTokenizer, num_prompts: int | None, input_len: int | None
) -> list[ServePrompt]:
    """The first ``num_prompts`` texts of a dataset (all if None), cut to ``input_len`` tokens if given."""
    if num_prompts is not None and num_prompts > len(texts):
        raise ValidationError(f"the dataset holds {len(texts)} prompts, fewer than --num-prompts {num_prompts}")
    chosen = list(texts if num_prompts is None else texts[:num_prompts])
    if input_len is not None:
        cut = [tokenizer.encode(t, add_special=False, parse_special=True)[:input_len] for t in chosen]
        chosen = [tokenizer.decode(ids) for ids in cut]
    return [ServePrompt(text, _server_tokens(tokenizer, text)) for text in chosen]


def _server_tokens(tokenizer: PromptTokenizer, text: str) -> int:
    # What an OpenAI-compatible server encodes a completion prompt as: BOS if the model adds one, specials parsed.
    return len(tokenizer.encode(text, add_special=True, parse_special=True))


# ---------------------------------------------------------------------------------------------------- schedule


def poisson_schedule(num_requests: int, rate: float, seed: int) -> list[float]:
    """Send times (seconds from the start) of a Poisson process of ``rate`` requests/s: the first at 0, then
    exponential gaps of mean 1/rate. The same seed gives the same times."""
    if num_requests < 1:
        raise ValueError(f"num_requests must be >= 1, got {num_requests}")
    if not rate > 0 or rate == float("inf"):
        raise ValueError(f"the request rate must be a finite number > 0, got {rate}")
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=num_requests - 1)
    return [0.0, *np.cumsum(gaps).tolist()]


# ---------------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ServeRequest:
    """One request's outcome: its timing (perf_counter seconds) and, when it failed, why."""

    index: int
    timing: RequestTiming
    error: str | None = None
    finish_reason: str | None = None
    usage_reported: bool = False  # output tokens from the server's usage, else counted text chunks

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class ServeResult:
    num_prompts: int
    output_len: int  # max_tokens asked of every request
    duration_s: float
    summary: ThroughputResult  # the completed requests' totals and TTFT/TPOT/ITL/E2E summaries over duration_s
    requests: tuple[ServeRequest, ...]
    max_in_flight: int
    warmup_error: str | None = None

    @property
    def completed(self) -> int:
        return sum(r.ok for r in self.requests)

    @property
    def failed(self) -> int:
        return self.num_prompts - self.completed

    @property
    def failure_reasons(self) -> dict[str, int]:
        return dict(Counter(r.error for r in self.requests if r.error is not None).most_common())

    @property
    def short_outputs(self) -> int:
        """Completed requests with fewer tokens than asked: the server stopped at EOS (ignore_eos unknown)."""
        return sum(r.ok and r.timing.output_tokens < self.output_len for r in self.requests)

    @property
    def usage_reported(self) -> int:
        return sum(r.ok and r.usage_reported for r in self.requests)

    def to_dict(self) -> dict[str, Any]:
        s = self.summary
        return {
            "num_prompts": self.num_prompts,
            "completed": self.completed,
            "failed": self.failed,
            "failure_reasons": self.failure_reasons,
            "warmup_error": self.warmup_error,
            "duration_s": self.duration_s,
            "max_in_flight": self.max_in_flight,
            "prompt_tokens": s.prompt_tokens,
            "output_tokens": s.output_tokens,
            "short_outputs": self.short_outputs,
            "output_tokens_from_usage": self.usage_reported,
            "request_throughput": s.requests_per_s,
            "output_token_throughput": s.output_tokens_per_s,
            "total_token_throughput": s.total_tokens_per_s,
            "ttft_ms": s.ttft_ms.to_dict(),
            "tpot_ms": s.tpot_ms.to_dict(),
            "itl_ms": s.itl_ms.to_dict(),
            "e2e_ms": s.e2e_ms.to_dict(),
            "requests": [
                {
                    "index": r.index,
                    "ok": r.ok,
                    "error": r.error,
                    "finish_reason": r.finish_reason,
                    "prompt_tokens": r.timing.prompt_tokens,
                    "output_tokens": r.timing.output_tokens,
                    "output_tokens_from_usage": r.usage_reported,
                    "ttft_ms": _ms(r.timing.ttft_s),
                    "tpot_ms": _ms(r.timing.tpot_s),
                    "e2e_ms": r.timing.e2e_s * 1e3,
                }
                for r in self.requests
            ],
        }


def summarize_serve(
    requests: Sequence[ServeRequest],
    output_len: int,
    duration_s: float,
    max_in_flight: int = 0,
    warmup_error: str | None = None,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
) -> ServeResult:
    """Totals and latency summaries of the completed requests (failed ones count only as failures)."""
    if not requests:
        raise ValueError("no requests to summarize")
    duration_s = max(duration_s, 1e-9)  # every request refused at once still took some time
    completed = [r.timing for r in requests if r.ok]
    if completed:
        summary = summarize_run(completed, duration_s, percentiles)
    else:
        empty = summarize([], percentiles)
        summary = ThroughputResult(0, duration_s, 0, 0, 0, empty, empty, empty, empty, ())
    return ServeResult(len(requests), output_len, duration_s, summary, tuple(requests), max_in_flight, warmup_error)


# ---------------------------------------------------------------------------------------------------- client


@dataclass(frozen=True)
class ServeConfig:
    url: str  # the server's base URL, e.g. http://127.0.0.1:8080
    model: str
    output_len: int
    endpoint: Endpoint = "completions"
    concurrency: int | None = None  # None: no limit (every request at once, or as the arrival times say)
    request_rate: float | None = None  # requests/s of a Poisson process; None: as fast as concurrency allows
    seed: int = 0
    api_key: str | None = None
    temperature: float = 0.0  # greedy, as vLLM's bench serve: sampling cost and output are then comparable
    extra_body: Mapping[str, Any] = field(default_factory=dict)
    timeout_s: float = 600.0  # longest wait for any one read; a queued request may wait a long time for its first
    warmup: bool = True


def base_url(url: str) -> str:
    """The server's root: a trailing / or /v1 is dropped, since the endpoint paths carry /v1 themselves."""
    url = url.rstrip("/")
    return url.removesuffix("/v1")


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def list_models(url: str, api_key: str | None = None, timeout_s: float = 30.0) -> list[str]:
    """The model ids of GET /v1/models; ServeBenchError, naming the cause, when it cannot be had."""
    target = f"{base_url(url)}/v1/models"
    try:
        async with httpx.AsyncClient(timeout=timeout_s, headers=_headers(api_key)) as client:
            response = await client.get(target)
    except httpx.HTTPError as exc:
        raise ServeBenchError(f"cannot list the models at {target}: {_describe(exc)}; is the server up?") from None
    if response.status_code != 200:
        raise ServeBenchError(f"GET {target}: HTTP {response.status_code}: {_error_message(response.content)}")
    try:
        models = [str(m["id"]) for m in response.json()["data"]]
    except (ValueError, KeyError, TypeError):
        raise ServeBenchError(f"GET {target}: not an OpenAI model list: {response.text[:200]!r}") from None
    if not models:
        raise ServeBenchError(f"GET {target}: the server lists no model; name one with --model")
    return models


def request_body(config: ServeConfig, prompt: str, max_tokens: int) -> dict[str, Any]:
    """The JSON of one streamed request; ``config.extra_body`` is merged last, so it can override anything."""
    body: dict[str, Any] = {
        "model": config.model,
        "max_tokens": max_tokens,
        "temperature": config.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    if config.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return body | dict(config.extra_body)


async def send_request(
    client: httpx.AsyncClient, config: ServeConfig, index: int, prompt: ServePrompt, max_tokens: int
) -> ServeRequest:
    """Stream one request to its end and time it; any failure becomes the record's ``error``, never an exception."""
    body = request_body(config, prompt.text, max_tokens)
    url = base_url(config.url) + ENDPOINT_PATHS[config.endpoint]
    chat = config.endpoint == "chat"
    first: float | None = None
    gaps: list[float] = []
    chunks = 0
    usage: Mapping[str, Any] | None = None
    finish: str | None = None
    error: str | None = None
    submitted = last = time.perf_counter()
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                error = f"HTTP {response.status_code}: {_error_message(await response.aread())}"
            else:
                async for line in response.aiter_lines():
                    # Blank separators, ": ping" comments and "event:" lines carry no data.
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    now = time.perf_counter()
                    chunk = _parse_chunk(data)
                    if isinstance(chunk, str):
                        error = chunk
                        break
                    if isinstance(chunk.get("usage"), Mapping):
                        usage = chunk["usage"]
                    for choice in chunk.get("choices") or []:
                        if not isinstance(choice, Mapping):
                            continue
                        if _choice_text(choice, chat):
                            if first is None:
                                first = now
                            else:
                                gaps.append(now - last)
                            last = now
                            chunks += 1
                        if choice.get("finish_reason"):
                            finish = str(choice["finish_reason"])
    except Exception as exc:  # one request's fault (refused, reset, timed out) is a failure to report, not a crash
        error = _describe(exc)
    finished = time.perf_counter()
    if error is None:
        if finish is None:
            error = NO_FINISH_REASON
        elif finish in ("abort", "error"):
            error = f"finish_reason {finish!r}"
    usage_tokens = usage.get("completion_tokens") if usage is not None else None
    from_usage = isinstance(usage_tokens, int) and not isinstance(usage_tokens, bool)
    output_tokens = usage_tokens if from_usage else chunks
    prompt_tokens = usage.get("prompt_tokens") if usage is not None else None
    if not isinstance(prompt_tokens, int) or isinstance(prompt_tokens, bool):
        prompt_tokens = prompt.tokens
    timing = RequestTiming(prompt_tokens, output_tokens, submitted, first, finished, inter_token_s=tuple(gaps))
    return ServeRequest(index, timing, error, finish, from_usage)


def _parse_chunk(data: str) -> dict[str, Any] | str:
    """A stream event's JSON object, or the failure it reports (an in-band error, or data that is not JSON)."""
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError:
        return f"a stream event is not JSON: {data[:120]!r}"
    if not isinstance(chunk, dict):
        return f"a stream event is not a JSON object: {data[:120]!r}"
    if chunk.get("error"):
        return f"error in the stream: {_error_text(chunk['error'])}"
    return chunk


def _choice_text(choice: Mapping[str, Any], chat: bool) -> str:
    if not chat:
        text = choice.get("text")
        return text if isinstance(text, str) else ""
    delta = choice.get("delta")
    if not isinstance(delta, Mapping):
        return ""
    # Reasoning models stream their thinking first: it is generated text too, so it counts towards TTFT.
    content = delta.get("content") or delta.get("reasoning_content") or ""
    return content if isinstance(content, str) else ""


def _error_text(error: object) -> str:
    if isinstance(error, Mapping):
        return str(error.get("message") or error.get("detail") or error)
    return str(error)


def _error_message(body: bytes) -> str:
    """The message of an error answer: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, or the raw text."""
    text = body.decode("utf-8", errors="replace")
    with contextlib.suppress(ValueError):
        data = json.loads(text)
        if isinstance(data, dict) and (data.get("error") or data.get("detail")):
            return _error_text(data.get("error") or data.get("detail"))
    return text.strip()[:200] or "(empty body)"


def _describe(exc: BaseException) -> str:
    # httpx's timeouts have empty messages; the class name alone still says what happened.
    message = str(exc).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


async def run_benchmark(
    config: ServeConfig,
    prompts: Sequence[ServePrompt],
    warmup_prompt: ServePrompt | None = None,
    progress: bool = False,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
) -> ServeResult:
    """Warm up with ``warmup_prompt`` (not counted), then send every prompt and summarize.

    The warm-up prompt should be none of ``prompts``: a server's prefix cache would otherwise serve one of the
    timed requests' prefill. A failed warm-up is reported but does not stop the run, whose failures then say why.
    """
    if not prompts:
        raise ValueError("no prompts to send")
    if config.concurrency is not None and config.concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {config.concurrency}")
    if config.request_rate is not None:
        offsets = poisson_schedule(len(prompts), config.request_rate, config.seed)
    else:
        offsets = [0.0] * len(prompts)
    connections = min(config.concurrency or len(prompts), len(prompts))
    timeout = httpx.Timeout(config.timeout_s, connect=30.0, pool=None)  # the pool wait is the schedule's to bound
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=_headers(config.api_key)) as client:
        warmup_error = None
        if config.warmup and warmup_prompt is not None:
            warm = await send_request(client, config, -1, warmup_prompt, min(config.output_len, WARMUP_OUTPUT_LEN))
            warmup_error = warm.error
        gate = asyncio.Semaphore(config.concurrency) if config.concurrency is not None else None
        bar = tqdm(total=len(prompts), desc="requests", unit="req", disable=not progress, leave=False)
        in_flight = max_in_flight = 0

        async def one(index: int, prompt: ServePrompt, start: float) -> ServeRequest:
            nonlocal in_flight, max_in_flight
            await asyncio.sleep(max(0.0, start + offsets[index] - time.perf_counter()))
            async with gate if gate is not None else contextlib.nullcontext():
                in_flight += 1
                max_in_flight = max(max_in_flight, in_flight)
                try:
                    return await send_request(client, config, index, prompt, config.output_len)
                finally:
                    in_flight -= 1
                    bar.update()

        start = time.perf_counter()
        try:
            results = await asyncio.gather(*(one(i, p, start) for i, p in enumerate(prompts)))
        finally:
            bar.close()
    duration = max(r.timing.finished for r in results) - start
    return summarize_serve(results, config.output_len, duration, max_in_flight, warmup_error, percentiles)


# ---------------------------------------------------------------------------------------------------- report


def serve_table(result: ServeResult, setup: Sequence[tuple[str, str]]) -> str:
    s = result.summary
    if result.completed == 0:
        counted = "no request completed"
    elif result.usage_reported == result.completed:
        counted = "from the server's usage"
    elif result.usage_reported == 0:
        counted = "counted text chunks: the server sent no usage"
    else:
        counted = f"{result.usage_reported} from usage, the rest counted text chunks"
    lines = ["== rocmforge bench serve ==", *_rows(setup), ""]
    lines += _rows(
        [
            ("completed", f"{result.completed} of {result.num_prompts}"),
            ("failed", str(result.failed)),
            ("duration", f"{result.duration_s:.2f} s"),
            ("most in flight", str(result.max_in_flight)),
            ("prompt tokens", str(s.prompt_tokens)),
            ("output tokens", f"{s.output_tokens} ({counted})"),
            ("short outputs", f"{result.short_outputs} (fewer than {result.output_len} tokens)"),
            ("requests/s", f"{s.requests_per_s:.2f}"),
            ("output tok/s", f"{s.output_tokens_per_s:.1f}"),
            ("total tok/s", f"{s.total_tokens_per_s:.1f}"),
        ]
    )
    lines.append("")
    lines += _summary_table(
        [("TTFT (ms)", s.ttft_ms), ("TPOT (ms)", s.tpot_ms), ("ITL (ms)", s.itl_ms), ("E2E (ms)", s.e2e_ms)]
    )
    if result.warmup_error is not None:
        lines += ["", f"warm-up request failed: {result.warmup_error}"]
    if result.failure_reasons:
        lines += ["", "failures:"]
        lines += [f"  {count} x {reason}" for reason, count in result.failure_reasons.items()]
    return "\n".join(lines)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def describe_workload(
    num_prompts: int, input_len: int | None, output_len: int, dataset: Path | None, endpoint: Endpoint
) -> str:
    if dataset is not None:
        what = f"{num_prompts} prompts from {dataset}" + (f" (cut to {input_len} tokens)" if input_len else "")
    else:
        what = f"{num_prompts} random prompts of {input_len} tokens"
    return f"{what}, max_tokens {output_len} (ignore_eos), {ENDPOINT_PATHS[endpoint]}"
