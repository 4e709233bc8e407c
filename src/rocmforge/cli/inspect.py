"""`rocmforge inspect`: a GGUF file's metadata, model configuration and tensor table."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

from rocmforge.config import ModelConfig, describe
from rocmforge.errors import GGUFError
from rocmforge.gguf.reader import GGUFFile
from rocmforge.hub import resolve_model

# Long arrays (vocabularies, merges, scores) are summarised, not printed.
_MAX_LIST_SHOWN = 8


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "inspect", help="show a model's metadata and tensors", description="Show a GGUF model's metadata and tensors."
    )
    parser.add_argument("model", help="a named model or a path to a GGUF file")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.set_defaults(handler=run)


def _summarise(value: Any) -> Any:
    if isinstance(value, list) and len(value) > _MAX_LIST_SHOWN:
        return f"[{len(value)} items: {', '.join(map(repr, value[:3]))}, ...]"
    if isinstance(value, str) and len(value) > 200:
        return value[:200] + f"... ({len(value)} chars)"
    return value


def run(args: argparse.Namespace) -> int:
    path = resolve_model(args.model)
    with GGUFFile(path) as f:
        metadata = {k: _summarise(v) for k, v in f.metadata.items()}
        try:
            config: dict[str, Any] | str = describe(ModelConfig.from_gguf(f))
        except GGUFError as exc:
            config = f"not loadable by rocmforge: {exc}"
        tensors = [
            {"name": t.name, "type": t.qtype.name, "shape": list(t.shape), "bytes": t.n_bytes}
            for t in f.tensors.values()
        ]
        header = {"path": str(path), "version": f.version, "tensor_count": len(tensors)}
    if args.json:
        print(json.dumps({**header, "metadata": metadata, "config": config, "tensors": tensors}, indent=2))
        return 0
    print(f"{header['path']}  (GGUF v{header['version']}, {header['tensor_count']} tensors)")
    print("\nmetadata:")
    for key, value in metadata.items():
        print(f"  {key} = {value}")
    print("\nconfig:")
    for key, value in config.items() if isinstance(config, dict) else [("error", config)]:
        print(f"  {key} = {value}")
    types = Counter(t["type"] for t in tensors)
    total = sum(t["bytes"] for t in tensors)
    print(f"\ntensors: {total / 2**20:.1f} MiB, " + ", ".join(f"{n} {k}" for k, n in types.most_common()))
    width = max((len(t["name"]) for t in tensors), default=4)
    print(f"  {'name':<{width}}  {'type':<6}  {'shape':<16}  bytes")
    for t in tensors:
        print(f"  {t['name']:<{width}}  {t['type']:<6}  {'x'.join(map(str, t['shape'])):<16}  {t['bytes']}")
    return 0
