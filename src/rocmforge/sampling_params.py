"""Validated per-request sampling parameters (OpenAI / vLLM names)."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NoReturn, TypeGuard

from rocmforge.errors import ValidationError

MAX_LOGPROBS = 20  # OpenAI's top_logprobs limit
MAX_STOP_STRINGS = 16
MAX_N = 128
# OpenAI's JSON carries logit_bias keys as strings; only plain ASCII digits name a token ("1_0", " 1", "٣" do not).
_DECIMAL = re.compile(r"[0-9]+")


def _empty_bias() -> Mapping[int, float]:
    return MappingProxyType({})


@dataclass(frozen=True)
class SamplingParams:
    """How to pick each next token and when to stop. Invalid values raise ValidationError naming the field.

    temperature 0 means greedy. top_k 0 (or -1) disables top-k; top_p 1 and min_p 0 disable theirs;
    repetition_penalty 1 disables it. A seed makes a request reproducible whatever else runs beside it.
    min_tokens: end-of-generation and stop tokens cannot be drawn before this many tokens are out.

    presence_penalty / frequency_penalty (OpenAI, in [-2, 2]) lower a token's logit by a flat amount once it
    appears in the output, and by an amount per occurrence; unlike repetition_penalty they ignore the prompt.
    logit_bias maps token id -> bias in [-100, 100] added to the logits first (string keys of decimal digits,
    as OpenAI's JSON sends them, become ints; None means none). logprobs None returns no logprobs; k in
    [0, 20] returns the sampled token's logprob plus the k most likely alternatives.
    stop: strings that end the output (one string or several; None means none); the front end cuts the text
    there, keeping the stop string only with include_stop_str_in_output. n: independent samples of the prompt.
    Token ids are checked against the vocabulary by check_token_ids, once the model is known.
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
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # Read-only view of a private copy: the caller's dict can change afterwards without changing the request.
    # Left out of the hash (a mapping has none), so params stay hashable; equality still compares it.
    logit_bias: Mapping[int, float] = field(default_factory=_empty_bias, hash=False)
    logprobs: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    include_stop_str_in_output: bool = False
    n: int = 1

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
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            _check(_is_number(value) and -2 <= value <= 2, name, "a number in [-2, 2]")
        _check(
            self.logprobs is None or (_is_int(self.logprobs) and 0 <= self.logprobs <= MAX_LOGPROBS),
            "logprobs",
            f"null or an integer in [0, {MAX_LOGPROBS}]",
        )
        _check(isinstance(self.include_stop_str_in_output, bool), "include_stop_str_in_output", "a boolean")
        _check(_is_int(self.n) and 1 <= self.n <= MAX_N, "n", f"an integer in [1, {MAX_N}]")
        object.__setattr__(self, "stop_token_ids", stop_token_ids)
        object.__setattr__(self, "logit_bias", MappingProxyType(_logit_bias(self.logit_bias)))
        object.__setattr__(self, "stop", _stop_strings(self.stop))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def check_token_ids(self, vocab_size: int) -> None:
        """Reject token ids the model does not have; the engine calls this at submission, once it knows the model."""
        if any(t >= vocab_size for t in self.stop_token_ids):
            raise ValidationError(
                f"invalid sampling parameter stop_token_ids: token ids must be < {vocab_size}", "stop_token_ids"
            )
        if any(t >= vocab_size for t in self.logit_bias):
            raise ValidationError(
                f"invalid sampling parameter logit_bias: token ids must be < {vocab_size}", "logit_bias"
            )

    def for_sample(self, index: int) -> SamplingParams:
        """The parameters of sample ``index`` (0 <= index < n) of this request, each drawn as its own request.

        n = 1 there. A seeded request gives sample i the seed ``seed + i`` (vLLM's rule): the samples differ
        from one another, yet the whole set is reproducible. Unseeded samples draw fresh entropy each.
        """
        if not (_is_int(index) and 0 <= index < self.n):
            raise ValidationError(f"sample index must be an integer in [0, n={self.n}), got {index!r}")
        seed = None if self.seed is None else (self.seed + index) % 2**64
        return dataclasses.replace(self, n=1, seed=seed)


def _logit_bias(value: object) -> dict[int, float]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        _fail("logit_bias", "a map of token id to bias")
    bias: dict[int, float] = {}
    for key, amount in value.items():
        token_id = int(key) if isinstance(key, str) and _DECIMAL.fullmatch(key) else key
        if not _is_int(token_id) or token_id < 0:
            _fail("logit_bias", f"keyed by token ids >= 0, not {key!r}")
        # "7" and "007" both name token 7: which bias was meant is ambiguous, so neither is guessed.
        _check(token_id not in bias, "logit_bias", f"free of duplicate token ids ({token_id} repeats)")
        _check(_is_number(amount) and -100 <= amount <= 100, "logit_bias", "biases in [-100, 100]")
        bias[token_id] = float(amount)
    return bias


def _stop_strings(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = (value,)  # OpenAI allows one string where a list is expected
    if not isinstance(value, Iterable) or isinstance(value, (bytes, Mapping)):
        _fail("stop", "a string or strings")
    stop = tuple(value)
    _check(all(isinstance(s, str) and s for s in stop), "stop", "non-empty strings")
    _check(len(stop) <= MAX_STOP_STRINGS, "stop", f"at most {MAX_STOP_STRINGS} strings")
    return stop


def _is_int(value: object) -> TypeGuard[int]:
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
        _fail(name, requirement)


def _fail(name: str, requirement: str) -> NoReturn:
    raise ValidationError(f"invalid sampling parameter {name}: must be {requirement}", name)
