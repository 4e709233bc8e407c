"""rocmforge: GGUF inference on ROCm and CUDA GPUs through PyTorch and Triton, with a CPU reference path."""

from __future__ import annotations

__version__ = "0.1.0"
