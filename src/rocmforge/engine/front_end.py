"""What both front ends (LLM, AsyncLLM) share: the model source, the engine loop, and read-only views."""

from __future__ import annotations

from pathlib import Path

from rocmforge.engine.config import EngineConfig
from rocmforge.engine.core import EngineStats
from rocmforge.engine.engine_loop import EngineHooks, EngineLoop, OutputSink
from rocmforge.engine.lifecycle import EngineState
from rocmforge.engine.model_source import ModelSource
from rocmforge.errors import EngineNotRunningError
from rocmforge.gguf.tokenizer import Tokenizer


class FrontEnd:
    """Resolves the model (a missing one fails here, fast) and builds the engine loop around ``sink``."""

    def __init__(
        self,
        model: str | Path,
        config: EngineConfig | None,
        hooks: EngineHooks | None,
        progress: bool,
        sink: OutputSink,
    ) -> None:
        self.config = config or EngineConfig()
        self.source = ModelSource(model, self.config, progress)
        self.engine = EngineLoop(self.source.build_core, sink, hooks)

    @property
    def state(self) -> EngineState:
        return self.engine.state

    @property
    def stats(self) -> EngineStats:
        """The engine's load after its latest step (running, waiting, KV usage, prefix-cache hits)."""
        return self.engine.stats

    @property
    def tokenizer(self) -> Tokenizer:
        return self.source.tokenizer

    @property
    def max_model_len(self) -> int:
        """The most prompt plus output tokens one request may have (known once started)."""
        core = self.engine.core
        if core is None:
            raise EngineNotRunningError("engine is not running")
        return core.max_model_len
