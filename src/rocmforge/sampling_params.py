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

    def __post_init__(self) -> None:
        _check(isinstance(self.max_tokens, int) and self.max_tokens >= 1, "max_tokens", "an integer >= 1")
        _check(_is_number(self.temperature) and self.temperature >= 0, "temperature", "a number >= 0")
        _check(isinstance(self.top_k, int) and self.top_k >= -1, "top_k", "an integer >= -1 (0 or -1: off)")
        _check(_is_number(self.top_p) and 0 < self.top_p <= 1, "top_p", "in (0, 1]")
        _check(_is_number(self.min_p) and 0 <= self.min_p <= 1, "min_p", "in [0, 1]")
        _check(
            _is_number(self.repetition_penalty) and self.repetition_penalty > 0,
            "repetition_penalty",
            "a number > 0",
        )
        _check(
            self.seed is None or (isinstance(self.seed, int) and self.seed >= 0), "seed", "an integer >= 0"
        )
        _check(
            all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids),
            "stop_token_ids",
            "a list of token ids >= 0",
        )
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check(ok: bool, name: str, requirement: str) -> None:
    if not ok:
        raise ValidationError(f"invalid sampling parameter {name}: must be {requirement}")
