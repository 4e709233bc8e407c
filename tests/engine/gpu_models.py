"""The real models that the whole-model GPU tests run on.

By default the three named models (the GPU issue's parity set); ``ROCMFORGE_TEST_MODEL`` lists others instead, as
GGUF paths or named models separated by the path separator (e.g. a truncated real model made by
scripts/truncate_gguf.py for a quick check on a machine the named models cannot reach).
"""

from __future__ import annotations

import os
from pathlib import Path

PARITY_MODELS = ("smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b")


def gpu_test_models() -> list[str]:
    """ROCMFORGE_TEST_MODEL's entries (GGUF paths or named models), else the three named models."""
    listed = os.environ.get("ROCMFORGE_TEST_MODEL")
    return listed.split(os.pathsep) if listed else list(PARITY_MODELS)


def resolve_test_model(model: str) -> Path:
    """A GGUF path as given; a named model through the hub (verified, fetched if missing)."""
    from rocmforge.hub import resolve_model

    return Path(model) if model.endswith(".gguf") else resolve_model(model)
