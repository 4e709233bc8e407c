"""The engine end to end on a real model through the offline front end: batching, paging and sampling
change nothing they should not change."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from rocmforge import LLM, EngineConfig, SamplingParams
from rocmforge.engine.outputs import RequestOutput
from rocmforge.errors import ValidationError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

MODEL = "smollm2-135m"
GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
# 32 different prompts: prose, code, lists, and a few long enough to span several 16-token blocks.
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time",
    "1, 2, 3, 4,",
    "The quick brown fox",
    "import numpy as np\n",
    "Q: What is the boiling point of water?\nA:",
    "My favourite colour is",
    "SELECT name FROM users WHERE",
    "In 1969, astronauts",
    "The recipe calls for",
    "Dear Sir or Madam,",
    "for i in range(10):",
    "Photosynthesis is the process",
    "The largest planet in the solar system",
    "class Stack:\n    def __init__(self):",
    "Monday, Tuesday, Wednesday,",
    "The theory of relativity states that",
    "<html>\n<head>",
    "A haiku about autumn:",
    "The stock market today",
    "To install the package, run",
    "Water is made of",
    "The first rule of",
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of",
    "Translate to French: cheese =>",
    "The mitochondria is",
    "git commit -m",
    "Roses are red, violets are blue,",
    "The main causes of the First World War were nationalism, militarism, alliances and",
    "x = [1, 2, 3]\nprint(sum(x))\n# prints",
    "The opposite of hot is",
]


def _texts(outputs: list[RequestOutput]) -> list[list[int]]:
    return [output.outputs[0].token_ids for output in outputs]


@pytest.fixture(scope="module")
def llm() -> Iterator[LLM]:
    engine = LLM(MODEL, EngineConfig(dtype="f32", max_num_seqs=32, max_num_batched_tokens=512))
    yield engine
    engine.shutdown()


def test_batching_does_not_change_greedy_outputs(llm: LLM) -> None:
    together = _texts(llm.generate(PROMPTS, GREEDY))
    alone = [_texts(llm.generate(prompt, GREEDY))[0] for prompt in PROMPTS]
    assert together == alone
    assert all(len(ids) == GREEDY.max_tokens for ids in together)
    assert len({tuple(ids) for ids in together}) == len(PROMPTS)


def test_engine_matches_the_reference_forward(llm: LLM) -> None:
    """Greedy tokens and their logprobs equal a plain full-sequence forward over prompt + output."""
    params = SamplingParams(max_tokens=10, temperature=0, logprobs=3)
    for output in llm.generate(PROMPTS[:4], params):
        sample = output.outputs[0]
        sequence = output.prompt_token_ids + sample.token_ids
        model = llm.engine.core.model  # type: ignore[union-attr]
        logits = model.forward(torch.tensor(sequence), 0, model.new_kv_cache(len(sequence)), all_logits=True)
        reference = logits[len(output.prompt_token_ids) - 1 : -1].log_softmax(-1)
        assert sample.token_ids == reference.argmax(-1).tolist()
        assert sample.logprobs is not None and len(sample.logprobs) == len(sample.token_ids)
        for row, token, logprob in zip(reference, sample.token_ids, sample.logprobs, strict=True):
            assert logprob.token_id == token
            assert logprob.logprob == pytest.approx(float(row[token]), abs=1e-3)
            assert [t for t, _ in logprob.top_logprobs] == row.topk(3).indices.tolist()


def test_chunked_prefill_and_prefix_cache_give_the_same_tokens(llm: LLM) -> None:
    long_prompt = PROMPTS[24] * 3  # about 90 tokens: several blocks
    reference = _texts(llm.generate(long_prompt, GREEDY))
    chunked = LLM(MODEL, EngineConfig(dtype="f32", max_num_batched_tokens=16))
    try:
        first = chunked.generate(long_prompt, GREEDY)[0]
        again = chunked.generate(long_prompt, GREEDY)[0]
    finally:
        chunked.shutdown()
    assert _texts([first]) == reference == _texts([again])
    assert first.metrics.num_cached_tokens == 0
    # Every full block of the prompt but the last token's is served from the cache the second time.
    assert again.metrics.num_cached_tokens == (len(again.prompt_token_ids) - 1) // 16 * 16 > 0


def test_preemption_under_a_tiny_cache_changes_no_output(llm: LLM) -> None:
    params = SamplingParams(max_tokens=24, temperature=0)
    reference = _texts(llm.generate(PROMPTS[:12], params))
    # 12 blocks of 16 slots for 12 requests that each grow past 2 blocks: the scheduler must preempt.
    small = LLM(MODEL, EngineConfig(dtype="f32", num_kv_blocks=12, max_num_seqs=12))
    try:
        assert _texts(small.generate(PROMPTS[:12], params)) == reference
        assert small.stats.kv_cache_usage == 0.0
    finally:
        small.shutdown()


def test_seeded_request_is_the_same_alone_and_in_a_full_batch(llm: LLM) -> None:
    seeded = SamplingParams(max_tokens=16, temperature=1.0, seed=1234)
    alone = _texts(llm.generate(PROMPTS[0], seeded))[0]
    others = [SamplingParams(max_tokens=16, temperature=0.8, top_k=20) for _ in PROMPTS[1:]]
    batch = llm.generate(PROMPTS, [seeded, *others])
    assert batch[0].outputs[0].token_ids == alone


def test_n_samples_are_reproducible_distinct_and_share_the_prompt(llm: LLM) -> None:
    params = SamplingParams(max_tokens=8, temperature=1.0, seed=7, n=4)
    first = llm.generate(PROMPTS[24], params)[0]
    second = llm.generate(PROMPTS[24], params)[0]
    assert [c.index for c in first.outputs] == [0, 1, 2, 3]
    assert [c.token_ids for c in first.outputs] == [c.token_ids for c in second.outputs]
    assert len({tuple(c.token_ids) for c in first.outputs}) > 1
    # Sample i is sample 0 of the same request seeded with seed + i.
    lone = llm.generate(PROMPTS[24], SamplingParams(max_tokens=8, temperature=1.0, seed=9))[0]
    assert lone.outputs[0].token_ids == first.outputs[2].token_ids


def test_stop_string_cuts_the_text_and_ends_the_request(llm: LLM) -> None:
    greedy = llm.generate(PROMPTS[0], SamplingParams(max_tokens=16, temperature=0))[0].outputs[0]
    stop = greedy.text[5:9]  # a piece from the middle of what it would say
    cut = llm.generate(PROMPTS[0], SamplingParams(max_tokens=16, temperature=0, stop=[stop]))[0].outputs[0]
    assert cut.text == greedy.text[: greedy.text.index(stop)]
    assert cut.finish_reason == "stop" and cut.stop_reason == stop
    assert len(cut.token_ids) < len(greedy.token_ids)
    kept = llm.generate(
        PROMPTS[0], SamplingParams(max_tokens=16, temperature=0, stop=[stop], include_stop_str_in_output=True)
    )[0].outputs[0]
    assert kept.text == greedy.text[: greedy.text.index(stop) + len(stop)]


def test_stop_token_and_end_of_text(llm: LLM) -> None:
    greedy = llm.generate(PROMPTS[0], SamplingParams(max_tokens=16, temperature=0))[0].outputs[0]
    stop_id = greedy.token_ids[3]
    first = greedy.token_ids.index(stop_id)
    out = llm.generate(PROMPTS[0], SamplingParams(max_tokens=16, temperature=0, stop_token_ids=[stop_id]))[0]
    sample = out.outputs[0]
    assert sample.token_ids == greedy.token_ids[: first + 1]  # the stop token is reported, as vLLM does...
    assert sample.finish_reason == "stop" and sample.stop_reason == stop_id
    assert llm.tokenizer.decode(greedy.token_ids[:first]) == sample.text  # ...but is not part of the text
    # A chat prompt ends at the model's end-of-turn token rather than at max_tokens.
    chat = "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n"
    ended = llm.generate(chat, SamplingParams(max_tokens=64, temperature=0))[0].outputs[0]
    assert ended.finish_reason == "stop" and ended.token_ids[-1] in llm.tokenizer.eog_token_ids


def test_invalid_requests_are_refused_at_submission(llm: LLM) -> None:
    vocab = llm.engine.core.vocab_size  # type: ignore[union-attr]
    with pytest.raises(ValidationError, match="prompt token ids"):
        llm.generate([[vocab + 5]], GREEDY)
    with pytest.raises(ValidationError, match="logit_bias"):
        llm.generate("hi", SamplingParams(logit_bias={vocab: 1.0}))
    with pytest.raises(ValidationError, match="context length"):
        llm.generate("hi", SamplingParams(max_tokens=10**7))
    assert llm.stats.num_running == llm.stats.num_waiting == 0
    assert _texts(llm.generate(PROMPTS[0], GREEDY))  # the engine is unharmed


def test_bf16_seeded_requests_do_not_depend_on_their_batch_mates() -> None:
    """With bf16 weights every rounding is coarse, so any dependence of a token's numbers on the batch (a GEMV
    path for a lone row, attention reduced over padded keys) shows up as different draws: there must be none."""
    prompts = [f"Story {i}: once upon a time" for i in range(16)]
    params = [SamplingParams(max_tokens=16, temperature=0.8, seed=i, ignore_eos=True) for i in range(16)]
    with LLM(MODEL, EngineConfig(dtype="bf16", max_num_seqs=16)) as llm:
        together = _texts(llm.generate(prompts, params))
        alone = [_texts(llm.generate(prompt, p))[0] for prompt, p in zip(prompts, params, strict=True)]
    assert together == alone
