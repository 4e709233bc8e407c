"""`rocmforge bench throughput|latency|serve`: offline benchmarks of the engine, and an online one of any
OpenAI-compatible server (the logic is in rocmforge.bench)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from rocmforge.bench import report, workload
from rocmforge.bench import serve as serve_bench
from rocmforge.bench.latency import measure_latency
from rocmforge.bench.throughput import ThroughputResult, measure_throughput, started_engine
from rocmforge.cli.options import add_device_option, add_dtype_option, add_model_option
from rocmforge.engine.config import EngineConfig
from rocmforge.engine.llm import LLM
from rocmforge.errors import ValidationError
from rocmforge.hub import DEFAULT_MODEL
from rocmforge.sampling_params import SamplingParams

DEFAULT_NUM_PROMPTS = 64
DEFAULT_INPUT_LEN = 128


def _add_workload(parser: argparse.ArgumentParser, output_meaning: str) -> None:
    """The workload options `throughput` and `serve` share: how many prompts, how long, from where."""
    parser.add_argument(
        "--num-prompts",
        type=int,
        default=None,
        help=f"number of requests (default: {DEFAULT_NUM_PROMPTS}, or every prompt of --dataset)",
    )
    parser.add_argument(
        "--input-len",
        type=int,
        default=None,
        help=f"prompt tokens per request (default: {DEFAULT_INPUT_LEN}; with --dataset: cut prompts to this length, "
        "default as they are)",
    )
    parser.add_argument("--output-len", type=int, default=128, help=f"{output_meaning} (default: 128)")
    parser.add_argument(
        "--dataset",
        type=Path,
        default=None,
        help="prompts from FILE: a JSON list of strings if it ends in .json, else one prompt per line",
    )


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "bench",
        help="measure the engine's throughput or latency, or a running server's",
        description="Benchmarks in the manner of vLLM's: `throughput` submits many requests at once to the engine, "
        "`latency` times whole batches end to end, `serve` drives a running OpenAI-compatible server over HTTP. "
        "Every request generates exactly --output-len tokens (on servers that honour ignore_eos).",
    )
    kinds = parser.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)

    throughput = kinds.add_parser(
        "throughput",
        help="requests/s, tok/s, TTFT and TPOT of many requests submitted at once",
        description="Submit every prompt at once through the engine and report requests/s, output and total "
        "(prompt + output) tok/s, and TTFT, TPOT, ITL and end-to-end latency percentiles. Prompts are random "
        "token ids (seeded, no special tokens) or come from --dataset.",
    )
    _add_common(throughput)
    _add_workload(throughput, "output tokens per request")
    throughput.set_defaults(handler=run_throughput)

    latency = kinds.add_parser(
        "latency",
        help="end-to-end latency of one batch, over several iterations",
        description="Time a whole batch of random prompts from submission to the last token, --num-iters times "
        "after --num-iters-warmup untimed runs, and report the average and percentiles.",
    )
    _add_common(latency)
    latency.add_argument("--input-len", type=int, default=32, help="prompt tokens per request (default: 32)")
    latency.add_argument("--output-len", type=int, default=128, help="output tokens per request (default: 128)")
    latency.add_argument("--batch-size", type=int, default=8, help="requests per batch (default: 8)")
    latency.add_argument("--num-iters", type=int, default=3, help="timed iterations (default: 3)")
    latency.add_argument("--num-iters-warmup", type=int, default=1, help="untimed iterations first (default: 1)")
    latency.set_defaults(handler=run_latency)

    _register_serve(kinds)


def _add_common(parser: argparse.ArgumentParser) -> None:
    add_model_option(parser)
    add_dtype_option(parser)
    add_device_option(parser, default="cpu")
    parser.add_argument("--max-num-seqs", type=int, default=64, help="most requests in a step (default: 64)")
    parser.add_argument(
        "--max-num-batched-tokens", type=int, default=2048, help="most tokens in a step (default: 2048)"
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="sampling temperature, 0 for greedy (default: 1.0, as vLLM's benchmarks)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random prompts (default: 0)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results here")


def _check_counts(args: argparse.Namespace, names: tuple[str, ...], minimum: int = 1) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value < minimum:
            raise ValidationError(f"--{name.replace('_', '-')} must be >= {minimum}, got {value}")


def _engine_config(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        dtype=args.dtype,
        device=args.device,
        max_num_seqs=args.max_num_seqs,
        enforce_eager=args.enforce_eager,
        max_num_batched_tokens=args.max_num_batched_tokens,
    )


def _setup_rows(args: argparse.Namespace, workload: str) -> list[tuple[str, str]]:
    return [
        ("model", f"{args.model} ({args.dtype}, {args.device})"),
        ("workload", workload),
        ("engine", f"max_num_seqs={args.max_num_seqs} max_num_batched_tokens={args.max_num_batched_tokens}"),
        ("sampling", f"{'greedy' if args.temperature == 0 else f'temperature {args.temperature:g}'}, ignore_eos"),
    ]


def _config_dict(args: argparse.Namespace) -> dict[str, Any]:
    return {
        key: str(value) if isinstance(value, Path) else value
        for key, value in vars(args).items()
        if key not in ("handler", "command")
    }


def run_throughput(args: argparse.Namespace) -> int:
    _check_counts(args, ("num_prompts", "input_len", "output_len", "max_num_seqs", "max_num_batched_tokens"))
    report.check_json_target(args.json)
    texts = workload.load_prompt_texts(args.dataset) if args.dataset is not None else None
    num_prompts = args.num_prompts if args.num_prompts is not None or texts is not None else DEFAULT_NUM_PROMPTS
    if texts is not None and num_prompts is not None and num_prompts > len(texts):
        raise ValidationError(
            f"dataset {args.dataset} holds {len(texts)} prompts, fewer than --num-prompts {num_prompts}"
        )
    input_len = args.input_len if args.input_len is not None or texts is not None else DEFAULT_INPUT_LEN
    config = _engine_config(args)
    params = SamplingParams(max_tokens=args.output_len, temperature=args.temperature, ignore_eos=True)
    machine = report.machine_info(args.device)
    progress = sys.stderr.isatty()

    async def bench() -> tuple[ThroughputResult, Path]:
        async with started_engine(args.model, config) as (llm, core):
            if texts is not None:

                def encode(text: str) -> list[int]:
                    return llm.tokenizer.encode(text, add_special=True, parse_special=True)

                prompts = workload.file_prompts(texts, encode, num_prompts, input_len)
            else:
                pool = workload.sampleable_token_ids(llm.tokenizer, core.vocab_size)
                prompts = workload.random_prompts(pool, num_prompts, input_len, args.seed)
            workload.check_fits(prompts, args.output_len, core.max_model_len)
            result = await measure_throughput(llm, prompts, params, progress=progress)
            return result, llm.source.path

    result, path = asyncio.run(bench())
    if texts is not None:
        described = f"{result.num_requests} prompts from {args.dataset}"
        described += f" (cut to {input_len} tokens)" if input_len is not None else ""
        described += f", {args.output_len} output tokens each"
    else:
        described = f"{result.num_requests} random prompts of {input_len} tokens, {args.output_len} output tokens each"
    print(report.throughput_table(result, _setup_rows(args, described)))
    if args.json is not None:
        machine["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        payload = {
            "benchmark": "throughput",
            "config": _config_dict(args) | {"num_prompts": result.num_requests, "input_len": input_len},
            "model": report.model_info(args.model, path, args.dtype),
            "machine": machine,
            "results": result.to_dict(),
        }
        report.write_json(args.json, payload)
    return 0


def run_latency(args: argparse.Namespace) -> int:
    _check_counts(
        args, ("input_len", "output_len", "batch_size", "num_iters", "max_num_seqs", "max_num_batched_tokens")
    )
    _check_counts(args, ("num_iters_warmup",), minimum=0)
    report.check_json_target(args.json)
    config = _engine_config(args)
    params = SamplingParams(max_tokens=args.output_len, temperature=args.temperature, ignore_eos=True)
    machine = report.machine_info(args.device)
    iterations = args.num_iters_warmup + args.num_iters
    llm = LLM(args.model, config, progress=sys.stderr.isatty())
    try:
        core = llm.engine.core
        assert core is not None  # LLM() returns once the engine has started
        pool = workload.sampleable_token_ids(llm.tokenizer, core.vocab_size)
        prompts = workload.random_prompts(pool, args.batch_size * iterations, args.input_len, args.seed)
        workload.check_fits(prompts, args.output_len, core.max_model_len)
        batches = [prompts[i * args.batch_size : (i + 1) * args.batch_size] for i in range(iterations)]
        result = measure_latency(llm, batches, params, args.num_iters_warmup)
        path = llm.source.path
    finally:
        llm.shutdown()
    described = f"batches of {args.batch_size} random prompts of {args.input_len} tokens, {args.output_len} output "
    described += f"tokens each; {args.num_iters_warmup} warm-up + {args.num_iters} timed iterations"
    print(report.latency_table(result, _setup_rows(args, described)))
    if args.json is not None:
        machine["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        payload = {
            "benchmark": "latency",
            "config": _config_dict(args),
            "model": report.model_info(args.model, path, args.dtype),
            "machine": machine,
            "results": result.to_dict(),
        }
        report.write_json(args.json, payload)
    return 0


def _register_serve(kinds: Any) -> None:
    parser: argparse.ArgumentParser = kinds.add_parser(
        "serve",
        help="TTFT, TPOT, ITL, E2E and throughput of a running OpenAI-compatible server",
        description="Stream requests to a running OpenAI-compatible server (rocmforge serve, vLLM, llama.cpp's, "
        "llama-cpp-python's, ...) from --concurrency clients or at Poisson --request-rate arrivals, and report "
        "request and token throughput, failures and their reasons, and TTFT, TPOT, ITL and end-to-end latency "
        "percentiles. Random prompts are random token ids decoded to text of exactly --input-len tokens, so two "
        "servers of the same model get the same text. Each request asks for ignore_eos; output tokens come from "
        "the server's usage, else from counted text chunks. Exit status 1 if any request failed.",
    )
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the server (default: http://127.0.0.1:8080)")
    parser.add_argument("--model", default=None, help="model id to ask for (default: the first of GET /v1/models)")
    parser.add_argument(
        "--endpoint",
        choices=sorted(serve_bench.ENDPOINT_PATHS),
        default="completions",
        help="/v1/completions or /v1/chat/completions (default: completions)",
    )
    _add_workload(parser, "max_tokens per request")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument(
        "--concurrency", type=int, default=None, help="requests in flight at most (default: every request at once)"
    )
    pace.add_argument(
        "--request-rate",
        type=float,
        default=None,
        help="send requests at Poisson arrival times of this mean rate, in requests/s (seeded by --seed)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random prompts and arrivals (default: 0)")
    parser.add_argument("--api-key", default=None, help="bearer token for the server (default: none)")
    parser.add_argument(
        "--temperature", type=float, default=0.0, help="sampling temperature (default: 0, greedy, as vLLM's)"
    )
    parser.add_argument(
        "--extra-body",
        default=None,
        metavar="JSON",
        help="a JSON object merged into every request, e.g. '{\"top_k\": 1}'",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for any one read from the server (default: 600)"
    )
    parser.add_argument(
        "--tokenizer-model",
        default=DEFAULT_MODEL,
        metavar="NAME_OR_GGUF",
        help=f"tokenizer that builds exact-length prompts and counts prompt tokens when the server sends no usage "
        f"(default: {DEFAULT_MODEL}); use the served model's",
    )
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up request")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results here")
    parser.set_defaults(handler=run_serve)


def _extra_body(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"--extra-body: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(value, dict):
        raise ValidationError("--extra-body must be a JSON object")
    return value


def run_serve(args: argparse.Namespace) -> int:
    _check_counts(args, ("num_prompts", "input_len", "output_len", "concurrency"))
    if args.request_rate is not None and not 0 < args.request_rate < float("inf"):
        raise ValidationError(f"--request-rate must be a finite number > 0, got {args.request_rate}")
    if not args.timeout > 0:
        raise ValidationError(f"--timeout must be > 0, got {args.timeout}")
    extra_body = _extra_body(args.extra_body)
    report.check_json_target(args.json)
    texts = workload.load_prompt_texts(args.dataset) if args.dataset is not None else None
    num_prompts = args.num_prompts
    if num_prompts is None:
        num_prompts = DEFAULT_NUM_PROMPTS if texts is None else len(texts)
    input_len = args.input_len if args.input_len is not None or texts is not None else DEFAULT_INPUT_LEN
    progress = sys.stderr.isatty()
    tokenizer = serve_bench.load_tokenizer(args.tokenizer_model, progress=progress)
    if texts is not None:
        prompts = serve_bench.dataset_prompts(texts, tokenizer, num_prompts, input_len)
        # A prompt the run does not send, so that no timed request finds its prefill in a prefix cache.
        warmup = serve_bench.exact_length_prompts(tokenizer, 1, input_len or 32, args.seed + 1)[0]
    else:
        *prompts, warmup = serve_bench.exact_length_prompts(tokenizer, num_prompts + 1, input_len, args.seed)
    machine = report.machine_info("cpu")
    for key in ("device", "torch_threads"):  # the client's machine: the server's device and threads are its own
        machine.pop(key, None)

    async def bench() -> tuple[str, serve_bench.ServeResult]:
        model = args.model or (await serve_bench.list_models(args.url, args.api_key))[0]
        config = serve_bench.ServeConfig(
            url=args.url,
            model=model,
            output_len=args.output_len,
            endpoint=args.endpoint,
            concurrency=args.concurrency,
            request_rate=args.request_rate,
            seed=args.seed,
            api_key=args.api_key,
            temperature=args.temperature,
            extra_body=extra_body,
            timeout_s=args.timeout,
            warmup=not args.no_warmup,
        )
        return model, await serve_bench.run_benchmark(config, prompts, warmup, progress=progress)

    model, result = asyncio.run(bench())
    if args.request_rate is not None:
        pace = f"Poisson arrivals at {args.request_rate:g} requests/s (seed {args.seed})"
    elif args.concurrency is not None:
        pace = f"concurrency {args.concurrency}"
    else:
        pace = f"all {len(prompts)} requests at once"
    described = serve_bench.describe_workload(len(prompts), input_len, args.output_len, args.dataset, args.endpoint)
    setup = [
        ("server", f"{serve_bench.base_url(args.url)}, model {model}"),
        ("workload", described),
        ("pace", pace),
        ("sampling", "greedy" if args.temperature == 0 else f"temperature {args.temperature:g}"),
    ]
    print(serve_bench.serve_table(result, setup))
    if args.json is not None:
        machine["load_average_after"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        payload = {
            "benchmark": "serve",
            "config": _config_dict(args)
            | {
                "model": model,
                "num_prompts": len(prompts),
                "input_len": input_len,
                "extra_body": extra_body,
                "api_key": None if args.api_key is None else "(set)",  # a results file must not leak the secret
            },
            "client_machine": machine,
            "results": result.to_dict(),
        }
        report.write_json(args.json, payload)
    return 0 if result.failed == 0 else 1
