"""Small helpers the engine's components share: block arithmetic and limit validation."""

from __future__ import annotations

from rocmforge.errors import ConfigError


def cdiv(a: int, b: int) -> int:
    """Ceiling division: how many blocks of size b hold a tokens."""
    return -(-a // b)


def check_positive_int(name: str, value: object) -> int:
    """A configured limit: a positive int (bool is rejected though Python counts it as an int)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value
