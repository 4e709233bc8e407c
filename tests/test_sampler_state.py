"""The serving engine's per-request sampler: bias, penalties, the min_tokens mask, logprobs, the batched entry point,
and that the draw follows the softmax of a real model's logits."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection, Sequence
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rocmforge.layers.sampler import (
    RequestSampler,
    SampleOutput,
    _top_p_indices,
    make_generator,
    sample_batch,
    top_p_mask,
)
from rocmforge.models.loader import load_model_and_tokenizer
from rocmforge.sampling_params import SamplingParams
from tests.generation_helpers import teacher_forced_logits

NEG_INF = float("-inf")


def sampler_for(prompt: Sequence[int] = (0,), stops: Collection[int] = (), **params: object) -> RequestSampler:
    return RequestSampler(SamplingParams(**params), prompt, stops)  # type: ignore[arg-type]


def one_hot(vocab: int, token_id: int, height: float = 50.0) -> torch.Tensor:
    """A row whose argmax (and, at temperature 1, whose draw in all but e^-50 of cases) is token_id."""
    row = torch.zeros(vocab)
    row[token_id] = height
    return row


def feed(sampler: RequestSampler, vocab: int, token_ids: Sequence[int]) -> None:
    """Make the sampler record these outputs, as if it had sampled them."""
    for token_id in token_ids:
        assert sampler.sample(one_hot(vocab, token_id)).token_id == token_id


# --- logit_bias ----------------------------------------------------------------------------------------------


def test_logit_bias_forces_and_forbids_tokens() -> None:
    logits = torch.tensor([4.0, 1.0, 0.0, 3.0])
    assert sampler_for(temperature=0).sample(logits).token_id == 0
    assert sampler_for(temperature=0, logit_bias={0: -100}).sample(logits).token_id == 3
    assert sampler_for(temperature=0, logit_bias={"2": 100}).sample(logits).token_id == 2
    # Drawn at temperature 1: +100 makes a token certain (others e^-97 as likely), -100 makes it impossible.
    forced = sampler_for(logit_bias={2: 100}, seed=1)
    assert {forced.sample(logits).token_id for _ in range(200)} == {2}
    forbidden = sampler_for(logit_bias={0: -100}, seed=1)
    drawn = Counter(forbidden.sample(logits).token_id for _ in range(2000))
    assert 0 not in drawn
    assert set(drawn) == {1, 2, 3}


def test_logit_bias_is_added_exactly() -> None:
    logits = torch.tensor([1.0, 2.0, -1.0, 0.5])
    processed = sampler_for(logit_bias={1: -0.5, "3": 2.25}).process_logits(logits)
    assert torch.equal(processed, torch.tensor([1.0, 1.5, -1.0, 2.75]))
    assert torch.equal(logits, torch.tensor([1.0, 2.0, -1.0, 0.5])), "the caller's row must not change"


# --- presence, frequency and repetition penalties ------------------------------------------------------------


def test_presence_and_frequency_penalties_exact() -> None:
    vocab = 5
    logits = torch.tensor([1.0, 2.0, -1.0, 0.5, 3.0])
    # Outputs: token 1 three times, token 2 once; token 3 only in the prompt.
    presence = sampler_for(prompt=[3, 3], presence_penalty=0.5)
    frequency = sampler_for(prompt=[3, 3], frequency_penalty=0.25)
    both = sampler_for(prompt=[3, 3], presence_penalty=0.5, frequency_penalty=0.25)
    for sampler in (presence, frequency, both):
        feed(sampler, vocab, [1, 2, 1, 1])
    # Presence: a flat 0.5 once a token is out, however often.
    assert torch.equal(presence.process_logits(logits), torch.tensor([1.0, 1.5, -1.5, 0.5, 3.0]))
    # Frequency: 0.25 per occurrence.
    assert torch.equal(frequency.process_logits(logits), torch.tensor([1.0, 1.25, -1.25, 0.5, 3.0]))
    # Both: logit -= 0.5 * (count > 0) + 0.25 * count.
    assert torch.equal(both.process_logits(logits), torch.tensor([1.0, 0.75, -1.75, 0.5, 3.0]))


def test_negative_output_penalties_encourage_repeats() -> None:
    sampler = sampler_for(presence_penalty=-2, frequency_penalty=-1)
    feed(sampler, 3, [2, 2])
    assert torch.equal(sampler.process_logits(torch.zeros(3)), torch.tensor([0.0, 0.0, 4.0]))


def test_output_penalties_change_the_greedy_choice_once_a_token_repeats() -> None:
    logits = torch.tensor([2.0, 1.5, 0.0])
    # Presence 0.75 drops token 0 to 1.25 once it is out: token 1 wins from then on.
    presence = sampler_for(prompt=[0, 0, 0], temperature=0, presence_penalty=0.75)
    assert [presence.sample(logits).token_id for _ in range(3)] == [0, 1, 0]
    # Frequency 0.3 per occurrence: 2.0, then 1.7 (> 1.5), then 1.4 (< 1.5) for token 0; token 1 then falls to 1.2.
    frequency = sampler_for(temperature=0, frequency_penalty=0.3)
    assert [frequency.sample(logits).token_id for _ in range(4)] == [0, 0, 1, 0]


def test_repetition_penalty_counts_prompt_and_outputs_once_each() -> None:
    logits = torch.tensor([4.0, -4.0, 4.0, 4.0, -4.0])
    sampler = sampler_for(prompt=[0, 0, 0, 1], repetition_penalty=2.0, presence_penalty=1.0)
    # Prompt tokens: divided (positive) or multiplied (negative) once, however often they appear; the presence
    # penalty ignores the prompt.
    assert torch.equal(sampler.process_logits(logits), torch.tensor([2.0, -8.0, 4.0, 4.0, -4.0]))
    feed(sampler, 5, [2, 2, 0])
    # Token 2 is out twice: repetition divides it once, presence subtracts 1. Token 0, in prompt and output,
    # is still divided once only, then pays the presence penalty.
    assert torch.equal(sampler.process_logits(logits), torch.tensor([1.0, -8.0, 1.0, 4.0, -4.0]))


def test_penalties_follow_a_long_history() -> None:
    # More distinct tokens than the tallies' first capacity: they must grow without losing any.
    vocab = 100
    sampler = sampler_for(prompt=list(range(50, 100)), repetition_penalty=2.0, frequency_penalty=0.5)
    outputs = [i % 40 for i in range(120)]  # tokens 0..39, three times each
    feed(sampler, vocab, outputs)
    processed = sampler.process_logits(torch.full((vocab,), 4.0))
    expected = torch.full((vocab,), 4.0)
    expected[:40] = 2.0 - 1.5  # seen in the output: halved once, then 0.5 per occurrence
    expected[50:] = 2.0  # seen in the prompt only
    assert torch.equal(processed, expected)
    assert sampler.num_output_tokens == 120


# --- min_tokens ----------------------------------------------------------------------------------------------


def test_min_tokens_masks_stopping_tokens_then_releases_them() -> None:
    logits = torch.tensor([5.0, 1.0, 4.0, 0.0])  # token 0 (an end-of-generation id) is the argmax
    greedy = sampler_for(stops={0, 3}, temperature=0, min_tokens=2)
    assert [greedy.sample(logits).token_id for _ in range(4)] == [2, 2, 0, 0]
    # Drawn: token 0 holds 73% of the mass, yet never comes before two tokens are out, and often after.
    first_two: Counter[int] = Counter()
    after: Counter[int] = Counter()
    for seed in range(200):
        drawn = sampler_for(stops={0}, min_tokens=2, seed=seed)
        first_two.update(drawn.sample(logits).token_id for _ in range(2))
        after.update(drawn.sample(logits).token_id for _ in range(3))
    assert 0 not in first_two
    assert set(first_two) == {1, 2, 3}
    assert after[0] > 300  # 600 draws at 73%


def test_min_tokens_mask_is_exactly_minus_infinity_on_the_stop_ids() -> None:
    sampler = sampler_for(stops=[3, 1], min_tokens=1)
    assert torch.equal(sampler.process_logits(torch.ones(4)), torch.tensor([1.0, NEG_INF, 1.0, NEG_INF]))
    feed(sampler, 4, [2])
    assert torch.equal(sampler.process_logits(torch.ones(4)), torch.ones(4))


# --- logprobs ------------------------------------------------------------------------------------------------


def test_logprobs_are_the_raw_log_softmax() -> None:
    logits = torch.randn(1000, generator=make_generator(5)) * 3
    reference = logits.log_softmax(dim=-1)
    # logit_bias, penalties and temperature shape the draw, not the logprobs reported.
    sampler = sampler_for(
        logprobs=5, temperature=0.3, top_k=50, logit_bias={7: 100}, presence_penalty=1.0, repetition_penalty=1.3
    )
    for _ in range(3):
        output = sampler.sample(logits)
        assert output.token_id == 7
        assert output.logprob == float(reference[7])
        assert len(output.top_logprobs) == 5
        values, ids = reference.topk(5)
        assert output.top_logprobs == tuple(zip(ids.tolist(), values.tolist(), strict=True))
        assert [lp for _, lp in output.top_logprobs] == sorted((lp for _, lp in output.top_logprobs), reverse=True)


def test_logprobs_zero_gives_the_sampled_token_only_and_none_gives_nothing() -> None:
    logits = torch.tensor([0.0, 2.0, 1.0])
    output = sampler_for(temperature=0, logprobs=0).sample(logits)
    assert output.token_id == 1
    assert output.logprob == pytest.approx(2.0 - math.log(1 + math.exp(2) + math.e), abs=1e-6)
    assert output.top_logprobs == ()
    assert sampler_for(temperature=0).sample(logits) == SampleOutput(1, None, ())


def test_top_logprobs_of_a_vocabulary_smaller_than_asked() -> None:
    output = sampler_for(temperature=0, logprobs=20).sample(torch.tensor([0.0, 1.0]))
    assert [token_id for token_id, _ in output.top_logprobs] == [1, 0]


# --- the batched entry point ---------------------------------------------------------------------------------

MIXED_PARAMS = [
    SamplingParams(temperature=0),
    SamplingParams(temperature=0, min_tokens=2),  # slow while masking, fast afterwards
    SamplingParams(temperature=0, logprobs=3),
    SamplingParams(temperature=0, repetition_penalty=1.5, presence_penalty=0.5),
    SamplingParams(temperature=1.0, seed=11),
    SamplingParams(temperature=0.7, top_k=20, top_p=0.9, min_p=0.05, seed=12, logprobs=2),
    SamplingParams(temperature=1.3, top_p=0.5, frequency_penalty=1.0, logit_bias={3: 2.0}, seed=13),
    SamplingParams(temperature=0.8, min_tokens=3, seed=14, repetition_penalty=0.8),
    SamplingParams(temperature=0, logit_bias={5: 4.0}),
    SamplingParams(temperature=0),
]
STOPS = {0, 1}


def make_samplers() -> list[RequestSampler]:
    return [RequestSampler(params, [2, 3, 4, 2], STOPS) for params in MIXED_PARAMS]


def test_sample_batch_equals_each_sampler_alone() -> None:
    vocab, steps = 300, 6
    rows = torch.randn(steps, len(MIXED_PARAMS), vocab, generator=make_generator(0)) * 2
    # Ties and stop tokens on top in some rows: the batched argmax must break ties as the single one does.
    rows[:, :, 0] = rows.amax(dim=-1) + 1
    rows[::2, :, 9] = rows[::2, :, 0]
    batched, alone = make_samplers(), make_samplers()
    for step in range(steps):
        got = sample_batch(rows[step], batched)
        expected = [sampler.sample(row) for sampler, row in zip(alone, rows[step], strict=True)]
        assert got == expected
    assert [s.num_output_tokens for s in batched] == [steps] * len(MIXED_PARAMS)


def test_sample_batch_keeps_a_seeded_request_independent_of_its_batch_mates() -> None:
    vocab, steps = 500, 20
    seeded = SamplingParams(temperature=0.9, top_k=100, seed=2024, presence_penalty=0.3)
    rows = torch.randn(steps, vocab, generator=make_generator(1))
    solo = RequestSampler(seeded, [1, 2], STOPS)
    solo_tokens = [solo.sample(row).token_id for row in rows]
    # The same request amid eight others, unseeded ones included, at a different place in the batch.
    mates = [RequestSampler(params, [7], STOPS) for params in MIXED_PARAMS[:8]]
    in_batch = RequestSampler(seeded, [1, 2], STOPS)
    batch = [*mates[:5], in_batch, *mates[5:]]
    noise = torch.randn(steps, len(batch), vocab, generator=make_generator(2))
    noise[:, 5] = rows
    batch_tokens = [sample_batch(noise[step], batch)[5].token_id for step in range(steps)]
    assert batch_tokens == solo_tokens
    assert len(set(solo_tokens)) > 5, "a seeded draw over 500 tokens should vary from step to step"


def test_sample_batch_all_greedy_is_the_row_argmax() -> None:
    logits = torch.randn(7, 50, generator=make_generator(3))
    samplers = [sampler_for(temperature=0) for _ in range(7)]
    assert [o.token_id for o in sample_batch(logits, samplers)] == logits.argmax(dim=-1).tolist()


def test_sample_batch_rejects_a_row_count_mismatch() -> None:
    with pytest.raises(ValueError, match="samplers"):
        sample_batch(torch.zeros(3, 10), [sampler_for() for _ in range(2)])


def test_sample_accepts_half_precision_rows() -> None:
    logits = torch.tensor([0.0, 3.0, 1.0], dtype=torch.bfloat16)
    assert sampler_for(temperature=0, logprobs=1).sample(logits).token_id == 1
    assert sample_batch(logits[None], [sampler_for(temperature=0)])[0].token_id == 1


# --- truncation without a full sort --------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    size=st.sampled_from([3, 40, 300, 5000]),
    scale=st.sampled_from([0.01, 1.0, 5.0]),
    top_p=st.floats(min_value=1e-3, max_value=0.999),
    seed=st.integers(min_value=0, max_value=2**31),
)
def test_top_p_slice_keeps_what_a_full_sort_keeps(size: int, scale: float, top_p: float, seed: int) -> None:
    # Near-flat rows (scale 0.01) make the nucleus exceed the first slice, so the widening is exercised.
    logits = torch.randn(size, generator=make_generator(seed)) * scale
    full = {int(i) for i in torch.nonzero(torch.isfinite(top_p_mask(logits, top_p))).flatten()}
    sliced = _top_p_indices(logits.softmax(dim=-1), top_p)
    assert set(sliced.tolist()) == full


# --- the draw follows the model's distribution ---------------------------------------------------------------

DEGREES_OF_FREEDOM = 20  # 20 most likely tokens + one bin for the rest = 21 bins
P_VALUE_FLOOR = 1e-3


def chi_square_survival(statistic: float, degrees_of_freedom: int) -> float:
    """P(X > statistic) for X ~ chi-square with an even number of degrees of freedom (closed form: the Poisson
    sum e^-x * sum_{i < k/2} x^i / i! at x = statistic / 2), so no scipy is needed."""
    assert degrees_of_freedom % 2 == 0
    half = statistic / 2
    term, total = 1.0, 1.0
    for i in range(1, degrees_of_freedom // 2):
        term *= half / i
        total += term
    return math.exp(-half) * total


def test_chi_square_survival_known_values() -> None:
    # Reference values of the chi-square distribution's upper tail.
    assert chi_square_survival(2.0, 2) == pytest.approx(math.exp(-1))
    assert chi_square_survival(31.410, 20) == pytest.approx(0.05, rel=1e-3)
    assert chi_square_survival(45.315, 20) == pytest.approx(0.001, rel=1e-3)


def binned_chi_square(counts: Counter[int], probs: torch.Tensor, top: torch.Tensor, draws: int) -> float:
    expected = [float(probs[token_id]) * draws for token_id in top.tolist()]
    observed = [counts[token_id] for token_id in top.tolist()]
    expected.append(draws - sum(expected))
    observed.append(draws - sum(observed))
    assert min(expected) >= 5, "too few expected draws per bin for the chi-square approximation"
    return sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))


@pytest.fixture(scope="module")
def story_logits(model_paths: dict[str, Path]) -> torch.Tensor:
    """smollm2-135m's next-token logits after a story opening: a broad distribution (top 20 tokens ~47%)."""
    model, tokenizer = load_model_and_tokenizer(model_paths["smollm2-135m"])
    prompt_ids = tokenizer.encode("Once upon a time, there was a", add_special=True, parse_special=True)
    with torch.no_grad():
        logits = teacher_forced_logits(model, prompt_ids)
    return logits[-1].float()


@pytest.mark.slow
def test_draws_match_the_softmax_of_real_logits(story_logits: torch.Tensor) -> None:
    draws = 10_000
    sampler = RequestSampler(SamplingParams(temperature=1.0, seed=1234), [1], ())
    counts = Counter(sampler.sample(story_logits).token_id for _ in range(draws))
    probs = story_logits.double().softmax(dim=-1)
    top = probs.topk(DEGREES_OF_FREEDOM).indices
    statistic = binned_chi_square(counts, probs, top, draws)
    assert chi_square_survival(statistic, DEGREES_OF_FREEDOM) > P_VALUE_FLOOR
    # The same counts against a slightly sharper distribution (temperature 0.9) fail: the test has the power
    # to tell a draw that ignores or misapplies the temperature.
    sharper = (story_logits.double() / 0.9).softmax(dim=-1)
    assert chi_square_survival(binned_chi_square(counts, sharper, top, draws), DEGREES_OF_FREEDOM) < P_VALUE_FLOOR
