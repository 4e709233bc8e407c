"""`rocmforge generate`: stream a completion of one prompt to the terminal."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rocmforge.cli.options import add_dtype_option, add_model_option, torch_dtype
from rocmforge.errors import ValidationError
from rocmforge.generation import GenerationStats, TextGenerator
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
    generator = TextGenerator.from_path(path, dtype=torch_dtype(args.dtype), progress=not args.quiet)
    stats = GenerationStats()
    for event in generator.stream(prompt, params, stats):
        sys.stdout.write(event.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    if not args.quiet:
        print(
            f"[{stats.prompt_tokens} prompt tokens at {stats.prefill_tokens_per_second:.1f} tok/s, "
            f"{stats.generated_tokens} generated at {stats.decode_tokens_per_second:.1f} tok/s, "
            f"finish: {stats.finish_reason}]",
            file=sys.stderr,
        )
    return 0
