"""Shared fixtures: real GGUF models (fetched once into the rocmforge cache) and the llama.cpp oracle."""

from __future__ import annotations

from pathlib import Path

import pytest

NAMED_MODELS = ("smollm2-135m", "qwen2.5-coder-0.5b", "gemma3-270m")


@pytest.fixture(scope="session")
def model_paths() -> dict[str, Path]:
    """Paths of the three named models, downloaded and verified by rocmforge's own hub on first use."""
    from rocmforge.hub import resolve_model

    return {name: resolve_model(name) for name in NAMED_MODELS}


@pytest.fixture(scope="session", params=NAMED_MODELS)
def named_model(request: pytest.FixtureRequest, model_paths: dict[str, Path]) -> tuple[str, Path]:
    """Parametrises a test over the three named models: (name, path)."""
    return request.param, model_paths[request.param]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip `gpu` tests without a GPU (tests/kernels/conftest.py handles its own folder, interpreter included)."""
    import torch

    if torch.cuda.is_available():
        return
    kernels = Path(__file__).parent / "kernels"
    no_gpu = pytest.mark.skip(reason="needs a CUDA or ROCm GPU")
    for item in items:
        if "gpu" in item.keywords and kernels not in Path(item.path).parents:
            item.add_marker(no_gpu)
