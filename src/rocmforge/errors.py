"""One exception hierarchy for everything rocmforge raises on purpose."""

from __future__ import annotations


class RocmForgeError(Exception):
    """Base class of every error rocmforge raises deliberately."""


class GGUFError(RocmForgeError):
    """A GGUF file is malformed, truncated or inconsistent; the message names the file and the fault."""


class UnsupportedModelError(GGUFError):
    """A well-formed GGUF file describes a model or tensor type rocmforge does not support."""


class ConfigError(RocmForgeError):
    """An engine or model configuration value is invalid."""


class ValidationError(RocmForgeError, ValueError):
    """A request parameter is invalid; the message names the parameter, and ``param`` holds its name when known."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ModelNotFoundError(RocmForgeError):
    """A model name is neither a known named model nor a path to a GGUF file."""


class DownloadError(RocmForgeError):
    """Fetching or verifying a named model failed."""


class EngineNotRunningError(RocmForgeError):
    """The engine cannot take the request now: not started yet, or draining / stopped."""


class EngineDeadError(RocmForgeError):
    """The engine loop failed; every pending request fails with this, and the engine accepts no more."""


class QueueFullError(RocmForgeError):
    """The engine's waiting queue is full; retry later."""
