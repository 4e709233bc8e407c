"""Sampling: parameter validation, the truncation masks and penalty, the draw, and, through the serving engine on a
real model, the stops, seeding and streamed text of generation."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rocmforge import LLM, EngineConfig
from rocmforge.engine.outputs import CompletionOutput
from rocmforge.errors import ValidationError
from rocmforge.layers.sampler import (
    apply_repetition_penalty,
    make_generator,
    min_p_mask,
    sample_token,
    top_k_mask,
    top_p_mask,
)
from rocmforge.sampling_params import SamplingParams
from tests.generation_helpers import StreamingEngine, served_model

NEG_INF = float("-inf")


def kept(masked: torch.Tensor) -> set[int]:
    """Indices a mask left finite."""
    return {int(i) for i in torch.nonzero(torch.isfinite(masked)).flatten()}


def logits_of(probs: list[float]) -> torch.Tensor:
    """Logits whose softmax is probs (up to float32 rounding)."""
    return torch.tensor(probs, dtype=torch.float64).log().float()


# --- SamplingParams validation -------------------------------------------------------------------------------

NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
# Values of the wrong type for any numeric field: bools (an int subclass), strings, None, containers.
WRONG_TYPE = st.sampled_from([True, False, "1", None, [1], b"1"])


def assert_rejects(field: str, value: object) -> None:
    # The message must name the field: a client learns which of its parameters to fix.
    with pytest.raises(ValidationError, match=rf"\b{field}\b"):
        SamplingParams(**{field: value})


def test_defaults_are_valid_and_off() -> None:
    params = SamplingParams()
    assert (params.top_k, params.top_p, params.min_p, params.repetition_penalty) == (0, 1.0, 0.0, 1.0)
    assert not params.greedy
    assert SamplingParams(temperature=0).greedy


@given(st.integers(max_value=0))
def test_max_tokens_below_one_rejected(value: int) -> None:
    assert_rejects("max_tokens", value)


@given(st.integers(min_value=1, max_value=2**70))
def test_max_tokens_positive_accepted(value: int) -> None:
    assert SamplingParams(max_tokens=value).max_tokens == value


@given(st.one_of(WRONG_TYPE, st.floats(), st.just(1.0)))
def test_integer_fields_reject_bools_floats_and_other_types(value: object) -> None:
    for field in ("max_tokens", "top_k", "seed"):
        if field == "seed" and value is None:
            continue  # seed=None means "unseeded"
        assert_rejects(field, value)


@given(st.integers(max_value=-2))
def test_top_k_below_minus_one_rejected(value: int) -> None:
    assert_rejects("top_k", value)


@given(st.integers(min_value=-1, max_value=2**40))
def test_top_k_accepted(value: int) -> None:
    assert SamplingParams(top_k=value).top_k == value


@given(st.one_of(st.integers(max_value=-1), st.integers(min_value=2**64, max_value=2**80)))
def test_seed_outside_64_bits_rejected(value: int) -> None:
    # torch's generator takes 64 bits: a larger seed must fail at validation, not in the middle of a request.
    assert_rejects("seed", value)


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_seed_in_64_bits_accepted_and_usable(value: int) -> None:
    assert make_generator(SamplingParams(seed=value).seed).initial_seed() == value


FLOAT_FIELDS = {
    # field: (strategy of invalid finite values, strategy of valid values)
    "temperature": (st.floats(max_value=-1e-300), st.floats(min_value=0, max_value=1e6)),
    "top_p": (
        st.one_of(st.floats(max_value=0), st.floats(min_value=1, exclude_min=True, allow_infinity=False)),
        st.floats(min_value=0, max_value=1, exclude_min=True),
    ),
    "min_p": (
        st.one_of(st.floats(max_value=-1e-300), st.floats(min_value=1, exclude_min=True, allow_infinity=False)),
        st.floats(min_value=0, max_value=1),
    ),
    "repetition_penalty": (st.floats(max_value=0), st.floats(min_value=1e-300, max_value=1e6)),
}


@pytest.mark.parametrize("field", sorted(FLOAT_FIELDS))
@settings(max_examples=60)
@given(data=st.data())
def test_float_fields_reject_out_of_range_non_finite_and_wrong_types(field: str, data: st.DataObject) -> None:
    invalid, _ = FLOAT_FIELDS[field]
    assert_rejects(field, data.draw(st.one_of(invalid.filter(math.isfinite), NON_FINITE, WRONG_TYPE)))


@pytest.mark.parametrize("field", sorted(FLOAT_FIELDS))
def test_float_fields_reject_ints_too_large_for_a_float(field: str) -> None:
    assert_rejects(field, 10**400)


@pytest.mark.parametrize("field", sorted(FLOAT_FIELDS))
@settings(max_examples=60)
@given(data=st.data())
def test_float_fields_accept_their_range(field: str, data: st.DataObject) -> None:
    _, valid = FLOAT_FIELDS[field]
    value = data.draw(valid)
    assert getattr(SamplingParams(**{field: value}), field) == value


def test_float_fields_accept_ints() -> None:
    params = SamplingParams(temperature=2, top_p=1, min_p=0, repetition_penalty=3)
    assert (params.temperature, params.top_p, params.min_p, params.repetition_penalty) == (2, 1, 0, 3)


@pytest.mark.parametrize(
    "value", [(-1,), (1, -5), (True,), (1, False), (1.0,), ("1",), (None,), "12", 5, 3.0, [[1]]], ids=repr
)
def test_stop_token_ids_rejected(value: object) -> None:
    assert_rejects("stop_token_ids", value)


@given(st.lists(st.integers(min_value=0, max_value=2**40), max_size=8))
def test_stop_token_ids_accepted_as_tuple(ids: list[int]) -> None:
    assert SamplingParams(stop_token_ids=ids).stop_token_ids == tuple(ids)  # type: ignore[arg-type]


def test_stop_token_ids_from_a_generator_are_kept() -> None:
    # Validation must not consume a one-shot iterable and leave no stop tokens behind.
    ids: Iterator[int] = (i for i in (7, 9))
    assert SamplingParams(stop_token_ids=ids).stop_token_ids == (7, 9)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [0, 1, "yes", None, 1.0])
def test_ignore_eos_must_be_a_bool(value: object) -> None:
    assert_rejects("ignore_eos", value)


# --- masks ---------------------------------------------------------------------------------------------------


def test_top_k_exact_sets_and_ties() -> None:
    logits = torch.tensor([1.0, 5.0, 3.0, 4.0, 2.0])
    assert kept(top_k_mask(logits, 1)) == {1}
    assert kept(top_k_mask(logits, 2)) == {1, 3}
    assert kept(top_k_mask(logits, 4)) == {1, 2, 3, 4}
    # Ties at the k-th value are all kept, whatever order topk happened to return them in.
    tied = torch.tensor([1.0, 3.0, 3.0, 3.0, 0.0])
    assert kept(top_k_mask(tied, 2)) == {1, 2, 3}
    assert kept(top_k_mask(tied, 1)) == {1, 2, 3}
    # Kept logits are unchanged, not renormalised.
    assert torch.equal(top_k_mask(logits, 2)[[1, 3]], logits[[1, 3]])


@pytest.mark.parametrize("top_k", [0, -1, 5, 6, 1000])
def test_top_k_off_values_leave_logits_alone(top_k: int) -> None:
    logits = torch.tensor([1.0, 5.0, 3.0, 4.0, 2.0])
    assert torch.equal(top_k_mask(logits, top_k), logits)


@pytest.mark.parametrize(
    ("top_p", "expected"),
    [
        (1e-9, {1}),
        (0.45, {1}),
        (0.6, {1, 3}),  # 0.5 < 0.6: the second token is needed
        (0.85, {1, 3, 0}),  # 0.5 + 0.3 < 0.85 <= 0.95
        (0.97, {0, 1, 2, 3}),
        (1.0, {0, 1, 2, 3}),
    ],
)
def test_top_p_exact_sets(top_p: float, expected: set[int]) -> None:
    # Deliberately unsorted so the scatter back to vocabulary order is exercised.
    logits = logits_of([0.15, 0.5, 0.05, 0.3])
    assert kept(top_p_mask(logits, top_p)) == expected


@settings(max_examples=200)
@given(
    st.lists(st.floats(min_value=-20, max_value=20), min_size=1, max_size=40),
    st.floats(min_value=1e-6, max_value=1.0, exclude_max=True),
)
def test_top_p_keeps_the_smallest_sufficient_prefix(values: list[float], top_p: float) -> None:
    logits = torch.tensor(values)
    keep = kept(top_p_mask(logits, top_p))
    assert keep, "top_p must always keep at least one token"
    probs = logits.double().softmax(-1)
    # Every kept token is at least as likely as every dropped one.
    if len(keep) < len(values):
        dropped = set(range(len(values))) - keep
        assert min(probs[i] for i in keep) >= max(probs[i] for i in dropped)
    # The kept mass reaches top_p; without its least likely token it would not (float32 slack).
    mass = sum(float(probs[i]) for i in keep)
    assert mass >= top_p - 1e-5 or len(keep) == len(values)
    assert mass - min(float(probs[i]) for i in keep) < top_p + 1e-5


@pytest.mark.parametrize(
    ("min_p", "expected"),
    [(0.0, {0, 1, 2, 3}), (0.05, {0, 1, 2, 3}), (0.2, {0, 1, 3}), (0.5, {1, 3}), (0.7, {1}), (1.0, {1})],
)
def test_min_p_exact_sets(min_p: float, expected: set[int]) -> None:
    # Probabilities 0.15, 0.5, 0.05, 0.3: the threshold is min_p * 0.5.
    assert kept(min_p_mask(logits_of([0.15, 0.5, 0.05, 0.3]), min_p)) == expected


def test_min_p_is_relative_to_the_most_likely_token() -> None:
    # 100 equally likely tokens each have probability 0.01: an absolute threshold of 0.5 would drop them all,
    # a relative one keeps them all.
    assert kept(min_p_mask(torch.zeros(100), 0.5)) == set(range(100))
    # Shifting every logit leaves the relative cut where it was.
    logits = logits_of([0.15, 0.5, 0.05, 0.3])
    assert kept(min_p_mask(logits + 30.0, 0.5)) == kept(min_p_mask(logits, 0.5)) == {1, 3}
    # min_p 1 keeps exactly the tied maxima.
    assert kept(min_p_mask(torch.tensor([2.0, 7.0, 7.0, 1.0]), 1.0)) == {1, 2}


# --- repetition penalty --------------------------------------------------------------------------------------


def test_repetition_penalty_divides_positive_and_multiplies_negative() -> None:
    logits = torch.tensor([2.0, -2.0, 0.0, 3.0, -1.0])
    seen = torch.tensor([0, 1, 2])
    assert torch.equal(apply_repetition_penalty(logits, seen, 2.0), torch.tensor([1.0, -4.0, 0.0, 3.0, -1.0]))
    # A penalty below 1 favours seen tokens: the same rule pushes both signs up.
    assert torch.equal(apply_repetition_penalty(logits, seen, 0.5), torch.tensor([4.0, -1.0, 0.0, 3.0, -1.0]))
    # The caller's tensor is not modified; penalty 1 and no history are no-ops.
    assert torch.equal(logits, torch.tensor([2.0, -2.0, 0.0, 3.0, -1.0]))
    assert torch.equal(apply_repetition_penalty(logits, seen, 1.0), logits)
    assert torch.equal(apply_repetition_penalty(logits, torch.tensor([], dtype=torch.long), 2.0), logits)


def test_repetition_penalty_counts_each_seen_token_once() -> None:
    # Seen three times is penalised once, as in llama.cpp's and HF's repetition penalty.
    logits = torch.tensor([3.0, 2.0])
    params = SamplingParams(temperature=0, repetition_penalty=2.0)
    assert sample_token(logits, params, [0, 0, 0], make_generator(0)) == 1  # 3 / 2 = 1.5 < 2
    assert (
        sample_token(logits, SamplingParams(temperature=0, repetition_penalty=1.4), [0, 0, 0], make_generator(0)) == 0
    )


# --- the draw ------------------------------------------------------------------------------------------------


@settings(max_examples=100)
@given(st.lists(st.floats(min_value=-1e4, max_value=1e4), min_size=1, max_size=64))
def test_greedy_is_argmax(values: list[float]) -> None:
    logits = torch.tensor(values)
    assert sample_token(logits, SamplingParams(temperature=0), [], make_generator(None)) == int(torch.argmax(logits))


def test_greedy_ignores_the_truncation_parameters() -> None:
    logits = torch.tensor([0.0, 9.0, 8.0])
    params = SamplingParams(temperature=0, top_k=1, top_p=0.01, min_p=1.0)
    assert sample_token(logits, params, [], make_generator(None)) == 1


def draws(logits: torch.Tensor, params: SamplingParams, seed: int | None, n: int) -> list[int]:
    generator = make_generator(seed)
    return [sample_token(logits, params, [], generator) for _ in range(n)]


def test_same_seed_same_tokens_different_seed_different_tokens() -> None:
    flat = torch.zeros(1000)
    params = SamplingParams(temperature=1.0)
    assert draws(flat, params, 123, 30) == draws(flat, params, 123, 30)
    # 30 draws from 1000 equally likely tokens: two seeds agreeing everywhere would be a broken generator.
    assert draws(flat, params, 123, 30) != draws(flat, params, 124, 30)
    # All masks on: still reproducible.
    full = SamplingParams(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, repetition_penalty=1.1, seed=7)
    logits = torch.randn(1000, generator=make_generator(0))
    assert draws(logits, full, 7, 30) == draws(logits, full, 7, 30)


@pytest.mark.parametrize("temperature", [1e-40, 1e-30, 5e-324])
def test_tiny_temperature_acts_greedy_without_nan(temperature: float) -> None:
    # A valid but tiny temperature must not overflow logits / temperature into inf and NaN probabilities.
    logits = torch.tensor([30.0, 50.0, 40.0, -10.0])
    assert draws(logits, SamplingParams(temperature=temperature), 0, 5) == [1] * 5


def chi_square(counts: Counter[int], expected: torch.Tensor, n: int) -> float:
    return sum((counts.get(i, 0) - n * float(p)) ** 2 / (n * float(p)) for i, p in enumerate(expected) if p > 0)


@pytest.mark.parametrize(
    ("params", "reference"),
    [
        # temperature 1: the draw follows softmax(logits).
        (SamplingParams(temperature=1.0), lambda x: x.softmax(-1)),
        # temperature 0.5 sharpens: softmax(logits / 0.5).
        (SamplingParams(temperature=0.5), lambda x: (x / 0.5).softmax(-1)),
        # top_k 3 renormalises over the three largest logits.
        (SamplingParams(temperature=1.0, top_k=3), lambda x: top_k_mask(x, 3).softmax(-1)),
    ],
    ids=["t1", "t0.5", "topk3"],
)
def test_sampling_follows_the_softmax(params: SamplingParams, reference: object) -> None:
    logits = torch.tensor([1.0, 0.0, 2.0, -1.0, 0.5, 1.5, -0.5, 0.2])
    expected = reference(logits)  # type: ignore[operator]
    n = 20_000
    counts = Counter(draws(logits, params, 2024, n))
    # Nothing outside the support, and a chi-square statistic far below what a wrong distribution gives.
    # 7 degrees of freedom: P(chi2 > 40) ~ 1e-6; deterministic anyway given the seed.
    assert all(expected[i] > 0 for i in counts)
    assert chi_square(counts, expected, n) < 40.0


# --- generation through the engine -------------------------------------------------------------------------

MODEL = "smollm2-135m"
CHAT_PROMPT = "<|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n"
# The engine users run, on the CPU in f32. These requests are a few dozen tokens each: a small KV cache holds
# them all, and leaves memory to the other engine of this module and to whatever else runs on the machine.
ENGINE_CONFIG = EngineConfig(device="cpu", dtype="f32", max_num_seqs=4, kv_cache_memory=256 * 2**20)


@pytest.fixture(scope="module")
def llm(model_paths: dict[str, Path]) -> Iterator[LLM]:
    engine = LLM(model_paths[MODEL], ENGINE_CONFIG)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def streaming(model_paths: dict[str, Path]) -> Iterator[StreamingEngine]:
    """The same model behind AsyncLLM, whose stream hands out text deltas as the engine produces tokens."""
    engine = StreamingEngine(model_paths[MODEL], ENGINE_CONFIG)
    yield engine
    engine.shutdown()


def complete(llm: LLM, prompt: str | list[int], params: SamplingParams) -> CompletionOutput:
    return llm.generate(prompt, params)[0].outputs[0]


@pytest.fixture(scope="module")
def chat_greedy(llm: LLM) -> list[int]:
    """smollm2's greedy answer to CHAT_PROMPT: it ends with an end-of-generation token well within 60 tokens.

    The engine reports the token that ended a sample as its last token id (vLLM's convention) but never puts
    it in the text; the answer returned here is what comes before it.
    """
    completion = complete(llm, CHAT_PROMPT, SamplingParams(temperature=0, max_tokens=60))
    assert completion.finish_reason == "stop"
    *answer, end = completion.token_ids
    assert completion.stop_reason == end
    assert completion.text == llm.tokenizer.decode(answer)
    return answer


@pytest.mark.slow
@pytest.mark.parametrize("ignore_eos", [False, True])
def test_max_tokens_gives_length_and_exactly_max_tokens(llm: LLM, ignore_eos: bool) -> None:
    params = SamplingParams(temperature=0, max_tokens=7, ignore_eos=ignore_eos)
    output = llm.generate("The capital of France is", params)[0]
    assert output.outputs[0].finish_reason == "length"
    assert len(output.outputs[0].token_ids) == 7
    assert output.metrics.num_generation_tokens == 7


@pytest.mark.slow
def test_greedy_stops_at_end_of_generation(llm: LLM, chat_greedy: list[int]) -> None:
    eog = llm.tokenizer.eog_token_ids
    assert 0 < len(chat_greedy) < 60
    assert not eog & set(chat_greedy)
    # The token generation stopped on really was the greedy choice there, and an end-of-generation token: with
    # ignore_eos it is emitted like any other and generation runs on to max_tokens.
    past = complete(llm, CHAT_PROMPT, SamplingParams(temperature=0, max_tokens=len(chat_greedy) + 1, ignore_eos=True))
    assert past.finish_reason == "length"
    assert past.token_ids[:-1] == chat_greedy
    assert past.token_ids[-1] in eog


@pytest.mark.slow
def test_ignore_eos_continues_past_end_of_generation(llm: LLM, chat_greedy: list[int]) -> None:
    max_tokens = len(chat_greedy) + 3
    completion = complete(llm, CHAT_PROMPT, SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True))
    assert completion.finish_reason == "length"
    assert len(completion.token_ids) == max_tokens
    assert completion.token_ids[: len(chat_greedy)] == chat_greedy
    assert completion.token_ids[len(chat_greedy)] in llm.tokenizer.eog_token_ids


@pytest.mark.slow
def test_min_tokens_keeps_end_of_generation_out(llm: LLM, chat_greedy: list[int]) -> None:
    min_tokens = len(chat_greedy) + 5
    completion = complete(llm, CHAT_PROMPT, SamplingParams(temperature=0, max_tokens=60, min_tokens=min_tokens))
    assert len(completion.token_ids) >= min_tokens
    # Where greedy decoding stopped, the end-of-generation token was masked and the next best one drawn.
    assert completion.token_ids[: len(chat_greedy)] == chat_greedy
    assert not llm.tokenizer.eog_token_ids & set(completion.token_ids[:min_tokens])


@pytest.mark.parametrize("min_tokens", [-1, 8, 1.5, True])
def test_min_tokens_validated(min_tokens: object) -> None:
    with pytest.raises(ValidationError, match="min_tokens"):
        SamplingParams(max_tokens=7, min_tokens=min_tokens)  # type: ignore[arg-type]


@pytest.mark.slow
def test_stop_token_ids_stop_on_a_token_it_would_emit(llm: LLM, chat_greedy: list[int]) -> None:
    stop = chat_greedy[3]
    first = chat_greedy.index(stop)
    completion = complete(llm, CHAT_PROMPT, SamplingParams(temperature=0, max_tokens=60, stop_token_ids=[stop]))
    assert completion.finish_reason == "stop"
    assert completion.stop_reason == stop
    # It stops at the token's first appearance: reported as the last token id, left out of the text.
    assert completion.token_ids == chat_greedy[: first + 1]
    assert completion.text == llm.tokenizer.decode(chat_greedy[:first])


@pytest.mark.slow
def test_seeded_sampled_generation_is_reproducible(llm: LLM) -> None:
    params = SamplingParams(temperature=0.8, top_k=40, top_p=0.95, min_p=0.05, seed=123, max_tokens=16, ignore_eos=True)
    first = complete(llm, "Once upon a time", params)
    second = complete(llm, "Once upon a time", params)
    assert first.token_ids == second.token_ids
    assert first.text == second.text


@pytest.mark.slow
@pytest.mark.parametrize(
    "prompt",
    [
        "<|im_start|>user\nTranslate to Chinese: Good morning<|im_end|>\n<|im_start|>assistant\n",
        "😀😃😄😁😆😅😂🤣😀😃😄😁😆",
    ],
)
def test_stream_deltas_are_whole_characters(llm: LLM, streaming: StreamingEngine, prompt: str) -> None:
    # 12 tokens end on a character boundary for both prompts; within them, characters span several tokens.
    params = SamplingParams(temperature=0, max_tokens=12)
    deltas = streaming.stream(prompt, params)
    # One delta a token, so an empty delta is a token that ended mid-character.
    assert [len(delta.token_ids) for delta in deltas] == [1] * 12
    texts = [delta.text for delta in deltas]
    assert "" in texts, "expected some token to end mid-character (so the incremental decoding is exercised)"
    assert any(ord(ch) > 0x2E80 for ch in "".join(texts)), "expected CJK or emoji output"
    assert not any("\ufffd" in text for text in texts)
    # The stream adds up to what the offline front end returns for the same request.
    completion = complete(llm, prompt, params)
    assert completion.finish_reason == deltas[-1].finish_reason == "length"
    assert "".join(texts) == completion.text
    assert completion.token_ids == [token_id for delta in deltas for token_id in delta.token_ids]
    assert completion.text == llm.tokenizer.decode(completion.token_ids)


@pytest.mark.slow
def test_stream_cut_mid_character_flushes_a_replacement_at_the_end(streaming: StreamingEngine) -> None:
    # Two tokens of an emoji that takes three: the incomplete bytes come out once, with the final delta only.
    prompt = "😀😃😄😁😆😅😂🤣😀😃😄😁😆"
    deltas = streaming.stream(prompt, SamplingParams(temperature=0, max_tokens=2))
    assert [len(delta.token_ids) for delta in deltas] == [1, 1]
    assert [delta.text for delta in deltas] == ["", "\ufffd"]
    assert deltas[-1].finish_reason == "length"


@pytest.mark.slow
def test_prompt_longer_than_the_context_rejected(llm: LLM) -> None:
    context_length = served_model(llm).config.context_length
    assert llm.max_model_len == context_length  # no max_model_len set: a request may use the whole context
    # Refused at submission, and the message names max_tokens and the numbers a client needs to fix it.
    too_long = rf"prompt of {context_length} tokens plus max_tokens=1 is {context_length + 1} tokens, more than "
    with pytest.raises(ValidationError, match=too_long + rf"the model's context length of {context_length}"):
        llm.generate([1] * context_length, SamplingParams(max_tokens=1))
    with pytest.raises(ValidationError, match=r"plus max_tokens=1 is \d+ tokens, more than the model's context length"):
        llm.generate("hi " * context_length, SamplingParams(max_tokens=1))


@pytest.mark.slow
@pytest.mark.parametrize("prompt", ["", []], ids=["text", "ids"])
def test_empty_prompt_rejected(llm: LLM, prompt: str | list[int]) -> None:
    # A batch of one empty prompt: to LLM.generate a bare [] is a batch of no prompts.
    with pytest.raises(ValidationError, match="at least one token"):
        llm.generate([prompt], SamplingParams())


@pytest.mark.slow
def test_stream_validates_at_the_call(streaming: StreamingEngine) -> None:
    # A server validates before it sends response headers: the error must come then, not from the stream.
    with pytest.raises(ValidationError, match="at least one token"):
        streaming.llm.validate([], SamplingParams())
    # A stream opened anyway refuses at its first iteration, before any output.
    with pytest.raises(ValidationError, match="at least one token"):
        streaming.stream([], SamplingParams())
