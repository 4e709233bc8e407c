"""What an engine serves: a GGUF model (named or by path), loaded on the engine thread when it starts."""

from __future__ import annotations

from pathlib import Path

import torch

from rocmforge.engine.config import EngineConfig
from rocmforge.engine.core import EngineCore
from rocmforge.gguf.tokenizer import Tokenizer
from rocmforge.hub import resolve_model
from rocmforge.models.loader import load_model_and_tokenizer


class ModelSource:
    """Resolves the model at construction (a missing file fails fast); ``build_core`` loads it.

    The tokenizer becomes available once ``build_core`` has run; front ends wait for the engine to start
    before they encode prompts.
    """

    def __init__(self, model: str | Path, config: EngineConfig, progress: bool = False) -> None:
        self.path = resolve_model(str(model), progress=progress)
        self.config = config
        self.progress = progress
        self._tokenizer: Tokenizer | None = None

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            raise RuntimeError("the model is not loaded yet: start the engine first")
        return self._tokenizer

    def build_core(self) -> EngineCore:
        config = self.config
        device = config.torch_device
        # What the load takes on the GPU is this engine's (its share, kv_sizing), not another engine's.
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        model, tokenizer = load_model_and_tokenizer(
            self.path, dtype=config.torch_dtype, device=device, progress=self.progress
        )
        weights_bytes = torch.cuda.memory_allocated(device) - before if device.type == "cuda" else None
        self._tokenizer = tokenizer
        return EngineCore(model, tokenizer.eog_token_ids, config, weights_bytes)

    def encode(self, prompt: str | list[int]) -> tuple[str | None, list[int]]:
        """(text, token ids) of a prompt given as text (tokenized with the model's BOS rules) or as token ids."""
        if isinstance(prompt, str):
            return prompt, self.tokenizer.encode(prompt, add_special=True, parse_special=True)
        return None, list(prompt)
