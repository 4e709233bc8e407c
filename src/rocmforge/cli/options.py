"""Options shared by several sub-commands."""

from __future__ import annotations

import argparse

from rocmforge.engine.config import DTYPES
from rocmforge.hub import DEFAULT_MODEL


def add_model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        "-m",
        default=DEFAULT_MODEL,
        help=f"a named model (see `rocmforge models`) or a path to a GGUF file (default: {DEFAULT_MODEL})",
    )


def add_dtype_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="bf16",
        help="storage and matmul dtype of weight matrices; bf16 is fastest on CPUs with AVX-512 BF16 (default: bf16)",
    )


def add_device_option(parser: argparse.ArgumentParser, default: str = "auto") -> None:
    parser.add_argument(
        "--device",
        default=default,
        help=f"auto (a GPU when torch sees one; ROCm GPUs count as cuda), cpu or cuda[:N] (default: {default})",
    )
    parser.add_argument(
        "--enforce-eager",
        action="store_true",
        help="on a GPU, run decode steps op by op instead of replaying CUDA graphs (starts sooner, decodes slower)",
    )
