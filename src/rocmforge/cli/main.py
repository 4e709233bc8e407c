"""Entry point: parse arguments, dispatch, and turn deliberate errors into one clear line and exit code 1."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rocmforge import __version__
from rocmforge.cli import bench, chat, generate, inspect, models, serve, synth
from rocmforge.errors import RocmForgeError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rocmforge",
        description="Run GGUF language models on AMD (ROCm) and NVIDIA (CUDA) GPUs, or on the CPU.",
    )
    parser.add_argument("--version", action="version", version=f"rocmforge {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    generate.register(commands)
    inspect.register(commands)
    models.register(commands)
    bench.register(commands)
    synth.register(commands)
    serve.register(commands)
    chat.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except RocmForgeError as exc:
        print(f"rocmforge: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `rocmforge generate ... | head` closes our stdout early: that is the reader's choice, not an error.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
