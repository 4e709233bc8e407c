"""Time to load each named model (open, validate, dequantize every tensor) against the 10 s target.

Usage: python benchmarks/load_time.py [--models NAME ...] [--dtype bf16|f32] [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rocmforge.hub import NAMED_MODELS, resolve_model
from rocmforge.models.loader import load_model_and_tokenizer

TARGET_SECONDS = 10.0
DTYPES = {"bf16": torch.bfloat16, "f32": torch.float32}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(NAMED_MODELS))
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{'model':<20} {'file MB':>8} {'load s (median)':>16} {'target s':>9} {'ratio':>6}")
    for name in args.models:
        path = resolve_model(name, progress=False)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            model, _ = load_model_and_tokenizer(path, dtype=DTYPES[args.dtype])
            times.append(time.perf_counter() - start)
            del model
        median = statistics.median(times)
        size_mb = path.stat().st_size / 1e6
        print(f"{name:<20} {size_mb:>8.0f} {median:>16.2f} {TARGET_SECONDS:>9.1f} {median / TARGET_SECONDS:>6.2f}")


if __name__ == "__main__":
    main()
