"""rocmforge: GGUF inference on ROCm and CUDA GPUs through PyTorch and Triton, with a CPU reference path."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["LLM", "AsyncLLM", "EngineConfig", "SamplingParams", "__version__"]

if TYPE_CHECKING:
    from rocmforge.engine.async_llm import AsyncLLM
    from rocmforge.engine.config import EngineConfig
    from rocmforge.engine.llm import LLM
    from rocmforge.sampling_params import SamplingParams

_LAZY = {
    "LLM": "rocmforge.engine.llm",
    "AsyncLLM": "rocmforge.engine.async_llm",
    "EngineConfig": "rocmforge.engine.config",
    "SamplingParams": "rocmforge.sampling_params",
}


def __getattr__(name: str) -> Any:
    # Lazy: `import rocmforge` (and the CLI's startup) should not pay for importing torch.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rocmforge' has no attribute {name!r}")
