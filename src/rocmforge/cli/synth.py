"""`rocmforge synth`: write a random-weight model of a real architecture and size, for benchmarks without downloads."""

from __future__ import annotations

import argparse
from typing import Any

from rocmforge.synth import (
    ARCHITECTURES,
    DEFAULT_TOKENIZER_SOURCES,
    QUANT_SCHEMES,
    SynthError,
    get_preset,
    public_preset_names,
    write_synthetic_model,
)


def register(commands: Any) -> None:
    presets = "; ".join(f"{arch}: {', '.join(public_preset_names(arch))}" for arch in ARCHITECTURES)
    parser: argparse.ArgumentParser = commands.add_parser(
        "synth",
        help="write a synthetic model (random weights, real shapes and tokenizer)",
        description=(
            "Write a GGUF model with random weights in the shapes of a real model and a real tokenizer, so that "
            "benchmarks at realistic sizes need no download. The file loads in rocmforge and in llama.cpp; its "
            "output is meaningless text."
        ),
    )
    parser.add_argument("out", metavar="OUT.gguf", help="the file to write")
    # Validated by the handler, not by argparse `choices`: a mistake then gives rocmforge's one-line error.
    parser.add_argument("--arch", required=True, help=f"architecture: {', '.join(ARCHITECTURES)}")
    parser.add_argument("--preset", required=True, help=f"model size ({presets})")
    parser.add_argument(
        "--quant",
        default="q4_k_m",
        help=f"storage type of the weights (default q4_k_m): {', '.join(QUANT_SCHEMES)}",
    )
    parser.add_argument(
        "--tokenizer-from",
        metavar="GGUF",
        help="copy the tokenizer from this GGUF file or named model (default: "
        + ", ".join(f"{name} for {arch}" for arch, name in DEFAULT_TOKENIZER_SOURCES.items())
        + ")",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same command writes the same file")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar and no summary line")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.seed < 0:
        raise SynthError(f"--seed must be a non-negative integer, got {args.seed}")
    preset = get_preset(args.arch, args.preset)
    result = write_synthetic_model(
        args.out,
        preset,
        args.quant,
        tokenizer_from=args.tokenizer_from,
        seed=args.seed,
        overwrite=args.force,
        progress=not args.quiet,
    )
    if not args.quiet:
        print(result.summary())
    return 0
