"""Validated per-request sampling parameters (OpenAI / vLLM names)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rocmforge.errors import ValidationError


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token and when to stop. Invalid values raise ValidationError naming the field.

    temperature 0 means greedy. top_k 0 (or -1) disables top-k; top_p 1 and min_p 0 disable theirs;
    repetition_penalty 1 disables it. A seed makes a request reproducible whatever else runs beside it.
    min_tokens: end-of-generation and stop tokens cannot be drawn before this many tokens are out.
    """

    max_tokens: int = 256
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    ignore_eos: bool = False
    min_tokens: int = 0

    def __post_init__(self) -> None:
        # Materialise first: validating a one-shot iterable (a generator) would otherwise consume it and
        # silently leave no stop tokens.
        try:
            stop_token_ids = tuple(self.stop_token_ids)
        except TypeError:
            stop_token_ids = (None,)  # not iterable: fails the check below with the field's name
        _check(_is_int(self.max_tokens) and self.max_tokens >= 1, "max_tokens", "an integer >= 1")
        _check(_is_number(self.temperature) and self.temperature >= 0, "temperature", "a number >= 0")
        _check(_is_int(self.top_k) and self.top_k >= -1, "top_k", "an integer >= -1 (0 or -1: off)")
        _check(_is_number(self.top_p) and 0 < self.top_p <= 1, "top_p", "in (0, 1]")
        _check(_is_number(self.min_p) and 0 <= self.min_p <= 1, "min_p", "in [0, 1]")
        _check(
            _is_number(self.repetition_penalty) and self.repetition_penalty > 0,
            "repetition_penalty",
            "a number > 0",
        )
        # torch.Generator.manual_seed takes at most 64 bits; a larger seed would fail only mid-request.
        _check(self.seed is None or (_is_int(self.seed) and 0 <= self.seed < 2**64), "seed", "an integer in [0, 2**64)")
        _check(all(_is_int(t) and t >= 0 for t in stop_token_ids), "stop_token_ids", "a list of token ids >= 0")
        _check(isinstance(self.ignore_eos, bool), "ignore_eos", "a boolean")
        _check(
            _is_int(self.min_tokens) and 0 <= self.min_tokens <= self.max_tokens,
            "min_tokens",
            "an integer in [0, max_tokens]",
        )
        object.__setattr__(self, "stop_token_ids", stop_token_ids)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _is_int(value: object) -> bool:
    # bool is an int subclass, but True as max_tokens or a token id is a caller's mistake, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float (10**400): not a usable parameter either
        return False


def _check(ok: bool, name: str, requirement: str) -> None:
    if not ok:
        raise ValidationError(f"invalid sampling parameter {name}: must be {requirement}")
