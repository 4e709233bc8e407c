"""`rocmforge generate`: stream a completion of one prompt to the terminal."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from pathlib import Path
from typing import Any

from rocmforge.cli.options import add_dtype_option, add_model_option
from rocmforge.engine.async_llm import AsyncLLM
from rocmforge.engine.config import EngineConfig
from rocmforge.engine.outputs import RequestMetrics
from rocmforge.errors import ValidationError
from rocmforge.hub import resolve_model
from rocmforge.sampling_params import SamplingParams


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "generate",
        help="complete a prompt and stream the text",
        description="Complete PROMPT (or standard input when PROMPT is omitted), streaming text to standard output "
        "and speed to standard error. The prompt is used as is: no chat template is applied.",
    )
    parser.add_argument("prompt", nargs="?", help="the prompt text (default: read standard input)")
    add_model_option(parser)
    add_dtype_option(parser)
    parser.add_argument("--max-tokens", "-n", type=int, default=256, help="most tokens to generate (default: 256)")
    parser.add_argument("--temperature", type=float, default=0.8, help="0 for greedy decoding (default: 0.8)")
    parser.add_argument("--top-k", type=int, default=40, help="0 disables (default: 40)")
    parser.add_argument("--top-p", type=float, default=0.95, help="1 disables (default: 0.95)")
    parser.add_argument("--min-p", type=float, default=0.05, help="0 disables (default: 0.05)")
    parser.add_argument("--repeat-penalty", type=float, default=1.0, help="1 disables (default: 1.0)")
    parser.add_argument("--seed", type=int, default=None, help="make sampling reproducible")
    parser.add_argument("--ignore-eos", action="store_true", help="keep generating past end-of-generation tokens")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar or speed line")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    prompt = args.prompt
    if prompt is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise ValidationError("no prompt: give PROMPT as an argument or pipe it on standard input")
        prompt = sys.stdin.read()
    if not prompt:
        # Checked before loading the model, so the mistake costs no time.
        raise ValidationError("prompt is empty: give some text to complete")
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        repetition_penalty=args.repeat_penalty,
        seed=args.seed,
        ignore_eos=args.ignore_eos,
    )
    path = resolve_model(args.model, progress=not args.quiet)
    config = EngineConfig(dtype=args.dtype, max_num_seqs=1)
    metrics = asyncio.run(_stream(path, prompt, params, config, progress=not args.quiet))
    sys.stdout.write("\n")
    sys.stdout.flush()
    if not args.quiet:
        print(_speed_line(metrics), file=sys.stderr)
    return 0


async def _stream(path: Path, prompt: str, params: SamplingParams, config: EngineConfig, progress: bool) -> _Result:
    """Run one request through the engine, writing text as it streams. Ctrl-C cancels this coroutine, which
    aborts the request, and ``async with`` then shuts the engine down before the process exits."""
    async with AsyncLLM(path, config, progress=progress) as llm:
        prompt_ids = llm.tokenizer.encode(prompt, add_special=True, parse_special=True)
        room = llm.max_model_len - len(prompt_ids)
        if room < 1:
            raise ValidationError(
                f"prompt of {len(prompt_ids)} tokens does not fit the context length of {llm.max_model_len}"
            )
        # Like llama.cpp's -n, a request for more tokens than the context holds stops at the context's end.
        params = dataclasses.replace(params, max_tokens=min(params.max_tokens, room))
        result = _Result(len(prompt_ids))
        async for output in llm.generate(prompt_ids, params):
            sample = output.outputs[0]
            sys.stdout.write(sample.text)
            sys.stdout.flush()
            result.generated += len(sample.token_ids)
            result.finish_reason = sample.finish_reason
            result.metrics = output.metrics
        return result


@dataclasses.dataclass
class _Result:
    prompt_tokens: int
    generated: int = 0
    finish_reason: str | None = None
    metrics: RequestMetrics | None = None


def _speed_line(result: _Result) -> str:
    prefill = decode = 0.0
    metrics = result.metrics
    if metrics is not None and metrics.first_token_time is not None:
        prefill = result.prompt_tokens / max(metrics.first_token_time - metrics.arrival_time, 1e-9)
        if metrics.finished_time is not None and result.generated > 1:
            decode = (result.generated - 1) / max(metrics.finished_time - metrics.first_token_time, 1e-9)
    return (
        f"[{result.prompt_tokens} prompt tokens at {prefill:.1f} tok/s, "
        f"{result.generated} generated at {decode:.1f} tok/s, finish: {result.finish_reason}]"
    )
