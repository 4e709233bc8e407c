"""The engine's own settings (cache, scheduler, model placement), validated once and frozen."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rocmforge.errors import ConfigError

# Short names as llama.cpp users write them; the CLI offers the same choices.
DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}
GiB = 1 << 30


@dataclass(frozen=True)
class EngineConfig:
    """How the engine lays out its KV cache and batches its steps. Invalid values raise ConfigError.

    ``dtype`` is the weights' matmul dtype (activations and the KV cache stay float32 on the CPU path).
    ``device`` is "auto" (a GPU when torch sees one; ROCm GPUs are "cuda" devices to torch), "cpu" or "cuda[:N]".
    The KV cache gets ``num_kv_blocks`` blocks if given; else, on the CPU, as many as fit ``kv_cache_memory``
    bytes, and on a GPU, what is left of this engine's share of the card, ``gpu_memory_utilization`` of its
    memory (vLLM's meaning: two engines on one GPU take e.g. 0.45 each), after its weights and the activations
    of a full-size step; never more than ``max_num_seqs`` full-length sequences need.
    ``max_model_len`` (default: the model's context length) caps prompt plus output tokens per request.
    On a GPU, decode steps of up to ``max_num_seqs`` sequences replay CUDA graphs captured at start (vLLM's
    default too); ``enforce_eager`` runs every step op by op instead (slower, but starts sooner).
    """

    dtype: str = "bf16"
    device: str = "auto"
    gpu_memory_utilization: float = 0.9
    block_size: int = 16
    kv_cache_memory: int = 1 * GiB
    num_kv_blocks: int | None = None
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None
    enable_prefix_caching: bool = True
    enforce_eager: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        for name in ("block_size", "kv_cache_memory", "max_num_seqs", "max_num_batched_tokens"):
            _check_positive(name, getattr(self, name))
        for name in ("num_kv_blocks", "max_model_len"):
            if getattr(self, name) is not None:
                _check_positive(name, getattr(self, name))
        if self.block_size & (self.block_size - 1):
            raise ConfigError(f"block_size must be a power of two, got {self.block_size}")
        if not isinstance(self.gpu_memory_utilization, (int, float)) or not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization!r}")
        if self.device != "auto":
            try:
                device = torch.device(self.device)
            except (RuntimeError, TypeError) as exc:
                raise ConfigError(f"device {self.device!r} is not a valid torch device: {exc}") from None
            if device.type not in ("cpu", "cuda"):
                raise ConfigError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")

    @property
    def torch_device(self) -> torch.device:
        """The device to run on; raises ConfigError when a GPU is asked for and torch sees none."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        device = torch.device(self.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"device {self.device!r} asked for, but torch sees no GPU (is this a CPU-only torch build?)"
            )
        return device

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def _check_positive(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
