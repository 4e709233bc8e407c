"""Whether the Triton kernels can run here, so that callers can fall back to the torch references."""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Literal

import torch

__all__ = ["KernelTarget", "interpreter_enabled", "kernel_target", "triton_available", "triton_device"]

# Who runs a kernel launched on tensors of a device: Triton's NVIDIA backend, its AMD backend, or the CPU
# interpreter. The few launch choices that differ (a dot's input precision, say) key on this.
KernelTarget = Literal["cuda", "hip", "interpreter"]


def interpreter_enabled() -> bool:
    """True when ``TRITON_INTERPRET`` is set to a true value (Triton then runs kernels on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    """True when Triton is installed and either a GPU (CUDA or ROCm) is present or the interpreter is on.

    Note that Triton decides between compiling and interpreting when a kernel is *defined*: set
    ``TRITON_INTERPRET`` before ``rocmforge.kernels.triton`` is first imported.
    """
    return _triton_installed() and (interpreter_enabled() or torch.cuda.is_available())


def triton_device() -> torch.device:
    """The device that Triton kernels run on here: the GPU, or the CPU under the interpreter."""
    if interpreter_enabled() or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def kernel_target(device: torch.device) -> KernelTarget:
    """The backend that runs kernels on ``device``: ROCm GPUs are "cuda" devices to torch, told apart by the build."""
    if device.type != "cuda":
        return "interpreter"
    return "hip" if torch.version.hip else "cuda"
