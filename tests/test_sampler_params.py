"""SamplingParams' serving fields (OpenAI / vLLM): penalties, logit_bias, logprobs, stop strings, n, and the checks
that need the vocabulary."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rocmforge.errors import ValidationError
from rocmforge.sampling_params import SamplingParams

NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
WRONG_TYPE = st.sampled_from([True, False, "1", None, [1], b"1"])


def assert_rejects(field: str, value: object, **others: object) -> None:
    # The message must name the field: a client learns which of its parameters to fix.
    with pytest.raises(ValidationError, match=rf"\b{field}\b"):
        SamplingParams(**{field: value}, **others)  # type: ignore[arg-type]


def test_new_fields_default_to_off() -> None:
    params = SamplingParams()
    assert (params.presence_penalty, params.frequency_penalty) == (0.0, 0.0)
    assert dict(params.logit_bias) == {}
    assert params.logprobs is None
    assert params.stop == ()
    assert params.include_stop_str_in_output is False
    assert params.n == 1


# --- presence_penalty, frequency_penalty ---------------------------------------------------------------------


@pytest.mark.parametrize("field", ["presence_penalty", "frequency_penalty"])
@given(value=st.one_of(st.floats(min_value=-2, max_value=2), st.integers(min_value=-2, max_value=2)))
def test_output_penalties_accept_minus_two_to_two(field: str, value: float) -> None:
    assert getattr(SamplingParams(**{field: value}), field) == value


@pytest.mark.parametrize("field", ["presence_penalty", "frequency_penalty"])
@settings(max_examples=60)
@given(
    value=st.one_of(
        st.floats(min_value=2, exclude_min=True, allow_infinity=False),
        st.floats(max_value=-2, exclude_max=True, allow_infinity=False),
        st.integers(min_value=3),
        NON_FINITE,
        WRONG_TYPE,
    )
)
def test_output_penalties_reject_out_of_range_non_finite_and_wrong_types(field: str, value: object) -> None:
    assert_rejects(field, value)


# --- logit_bias ----------------------------------------------------------------------------------------------


def test_logit_bias_string_keys_become_token_ids() -> None:
    # OpenAI's JSON object keys are strings.
    params = SamplingParams(logit_bias={"50256": -100, "7": 2.5, 9: 100})
    assert dict(params.logit_bias) == {50256: -100.0, 7: 2.5, 9: 100.0}
    assert all(type(key) is int for key in params.logit_bias)
    assert all(type(value) is float for value in params.logit_bias.values())


def test_logit_bias_is_a_private_read_only_copy() -> None:
    source = {3: 1.0}
    params = SamplingParams(logit_bias=source)
    source[4] = 2.0
    assert dict(params.logit_bias) == {3: 1.0}
    with pytest.raises(TypeError):
        params.logit_bias[5] = 1.0  # type: ignore[index]


def test_logit_bias_none_means_none() -> None:
    assert dict(SamplingParams(logit_bias=None).logit_bias) == {}  # type: ignore[arg-type]


def test_params_stay_comparable_and_hashable_with_a_logit_bias() -> None:
    a = SamplingParams(logit_bias={"1": 2})
    assert a == SamplingParams(logit_bias={1: 2.0})
    assert a != SamplingParams(logit_bias={1: 3.0})
    assert hash(a) == hash(SamplingParams(logit_bias={1: 2.0}))


@pytest.mark.parametrize(
    "value",
    [
        {-1: 1.0},
        {"-1": 1.0},
        {"1.5": 1.0},
        {" 1": 1.0},
        {"1_0": 1.0},
        {"٣": 1.0},  # an Arabic-Indic digit: int() reads it, but it is no token id a client meant
        {"": 1.0},
        {"abc": 1.0},
        {True: 1.0},
        {1.0: 1.0},
        {None: 1.0},
        {(1,): 1.0},
        {1: 100.5},
        {1: -100.001},
        {1: math.nan},
        {1: math.inf},
        {1: True},
        {1: "1"},
        {1: None},
        {"7": 1.0, 7: 2.0},  # the same token twice: which bias was meant is ambiguous
        {"007": 1.0, "7": 1.0},
        [(1, 1.0)],
        "1",
        5,
    ],
    ids=repr,
)
def test_logit_bias_rejected(value: object) -> None:
    assert_rejects("logit_bias", value)


@given(st.dictionaries(st.integers(min_value=0, max_value=2**40), st.floats(min_value=-100, max_value=100), max_size=8))
def test_logit_bias_accepted(bias: dict[int, float]) -> None:
    assert dict(SamplingParams(logit_bias=bias).logit_bias) == bias


# --- logprobs ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, 0, 1, 5, 20])
def test_logprobs_accepted(value: int | None) -> None:
    assert SamplingParams(logprobs=value).logprobs == value


@pytest.mark.parametrize("value", [-1, 21, 2**70, True, False, 1.0, "3", [3]], ids=repr)
def test_logprobs_rejected(value: object) -> None:
    assert_rejects("logprobs", value)


# --- stop, include_stop_str_in_output ------------------------------------------------------------------------


def test_stop_accepts_one_string_or_several() -> None:
    assert SamplingParams(stop="\n\n").stop == ("\n\n",)
    assert SamplingParams(stop=["###", "User:"]).stop == ("###", "User:")  # type: ignore[arg-type]
    assert SamplingParams(stop=None).stop == ()  # type: ignore[arg-type]
    assert SamplingParams(stop=["x"] * 16).stop == ("x",) * 16  # type: ignore[arg-type]


def test_stop_from_a_generator_is_kept() -> None:
    strings: Iterator[str] = (s for s in ("a", "b"))
    assert SamplingParams(stop=strings).stop == ("a", "b")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value", ["", [""], ["a", ""], [1], ["a", None], b"stop", [b"stop"], 5, {"a": 1}, ["x"] * 17], ids=repr
)
def test_stop_rejected(value: object) -> None:
    assert_rejects("stop", value)


@pytest.mark.parametrize("value", [0, 1, "yes", None, 1.0])
def test_include_stop_str_in_output_must_be_a_bool(value: object) -> None:
    assert_rejects("include_stop_str_in_output", value)


def test_include_stop_str_in_output_accepted() -> None:
    assert SamplingParams(stop="x", include_stop_str_in_output=True).include_stop_str_in_output is True


# --- n -------------------------------------------------------------------------------------------------------


@given(st.integers(min_value=1, max_value=128))
def test_n_accepted(value: int) -> None:
    assert SamplingParams(n=value).n == value


@given(st.one_of(st.integers(max_value=0), st.integers(min_value=129), WRONG_TYPE, st.floats()))
def test_n_rejected(value: object) -> None:
    assert_rejects("n", value)


def test_for_sample_gives_each_sample_its_own_seed() -> None:
    params = SamplingParams(n=3, seed=10, temperature=0.7, logit_bias={1: 2.0}, stop="x")
    samples = [params.for_sample(i) for i in range(3)]
    assert [s.seed for s in samples] == [10, 11, 12]
    assert all(s.n == 1 for s in samples)
    # Everything else is the request's.
    assert all((s.temperature, dict(s.logit_bias), s.stop) == (0.7, {1: 2.0}, ("x",)) for s in samples)
    # Seeds stay within torch's 64 bits; unseeded samples stay unseeded.
    assert SamplingParams(n=2, seed=2**64 - 1).for_sample(1).seed == 0
    assert SamplingParams(n=2).for_sample(1).seed is None


@pytest.mark.parametrize("index", [-1, 3, True, 1.0])
def test_for_sample_index_must_be_below_n(index: object) -> None:
    with pytest.raises(ValidationError, match="index"):
        SamplingParams(n=3).for_sample(index)  # type: ignore[arg-type]


# --- check_token_ids -----------------------------------------------------------------------------------------


def test_check_token_ids_accepts_ids_inside_the_vocabulary() -> None:
    SamplingParams(stop_token_ids=(0, 99), logit_bias={99: 1.0, "0": -1.0}).check_token_ids(100)


@pytest.mark.parametrize(
    ("field", "params"),
    [
        ("stop_token_ids", SamplingParams(stop_token_ids=(5, 100))),
        ("logit_bias", SamplingParams(logit_bias={"100": 1.0})),
        ("logit_bias", SamplingParams(logit_bias={3: 1.0, 10**9: -1.0})),
    ],
)
def test_check_token_ids_rejects_ids_past_the_vocabulary(field: str, params: SamplingParams) -> None:
    with pytest.raises(ValidationError, match=rf"\b{field}\b"):
        params.check_token_ids(100)
