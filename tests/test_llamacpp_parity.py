"""The serving engine on the CPU against llama.cpp (llama-cpp-python) on the three named models.

llama.cpp's CPU path quantizes activations to 8 bits inside its dot products and keeps K/V in f16, so its
logits are close to ours, not equal: we compare greedy tokens and next-token distributions, not floats.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from rocmforge import LLM, EngineConfig, SamplingParams
from tests.generation_helpers import served_model, teacher_forced_logits

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is the test oracle (pip install .[test])")

GREEDY_PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "import numpy as np\n\n# Compute the mean of an array\n",
    "Water boils at a temperature of",
    "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n",
    "The quick brown fox",
    "In 1969, the first humans",
    "List of fruits:\n1. Apple\n2.",
)
NUM_GREEDY_TOKENS = 32
# llama.cpp's numerics are noisy at the scale of a logit: on this suite's passages its own runs with f16 and
# with f32 K/V differ by up to 1.9 (smollm2) and 5.0 (gemma3) in single logits, and pick different top-1
# tokens at 0.7-5% of positions. Our choice differs from llama.cpp's at 1-4% of positions, each time where
# llama.cpp's own top two were within 0.55. A disagreement counts as a near-tie below this margin; a real
# bug (a wrong RoPE layout, norm or mask) moves logits by several units and fails the KL bound as well.
NEAR_TIE_LOGITS = 1.0
MIN_GREEDY_EXACT = 0.95
MIN_TOP1_AGREEMENT = 0.95
PASSAGE_PROMPTS = ("It was the best of times, it was the worst of times,", "def quicksort(arr):")
MIN_PASSAGE_TOKENS = 256
# The engine as users run it on the CPU, in f32. One batch holds every greedy prompt (about 50 tokens each);
# 256 MiB of KV cache holds that batch for all three models with room to spare.
ENGINE_CONFIG = EngineConfig(device="cpu", dtype="f32", max_num_seqs=len(GREEDY_PROMPTS), kv_cache_memory=256 * 2**20)


def _kl(reference: torch.Tensor, ours: torch.Tensor) -> torch.Tensor:
    """KL(reference || ours) per position from raw logits."""
    log_ref, log_ours = reference.log_softmax(-1), ours.log_softmax(-1)
    return (log_ref.exp() * (log_ref - log_ours)).sum(-1)


class Oracle:
    """llama.cpp on one model: greedy decoding and teacher-forced logits for given token ids."""

    def __init__(self, path: Path, **kwargs: object) -> None:
        self.llm = llama_cpp.Llama(
            model_path=str(path), n_ctx=1024, logits_all=True, n_threads=2, seed=0, verbose=False, **kwargs
        )

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode(), add_bos=True, special=True)

    def logits(self, token_ids: list[int]) -> torch.Tensor:
        self.llm.reset()
        self.llm.eval(token_ids)
        return torch.tensor(np.array(self.llm.scores[: len(token_ids)]), dtype=torch.float32)

    def greedy_with_logits(self, token_ids: list[int], num_tokens: int) -> tuple[list[int], torch.Tensor]:
        """llama.cpp's own greedy decode (one token per eval) and the logits it chose each token from."""
        self.llm.reset()
        self.llm.eval(token_ids)
        out: list[int] = []
        rows: list[np.ndarray] = []
        for _ in range(num_tokens):
            row = np.array(self.llm.scores[self.llm.n_tokens - 1], dtype=np.float32)
            out.append(int(np.argmax(row)))
            rows.append(row)
            self.llm.eval([out[-1]])
        return out, torch.from_numpy(np.stack(rows))

    def close(self) -> None:
        self.llm.close()


Pair = tuple[str, LLM, Oracle]


@pytest.fixture(scope="module")
def pair(named_model: tuple[str, Path]) -> Iterator[Pair]:
    """One engine and one llama.cpp per model, shared by the model's tests and freed before the next model's."""
    name, path = named_model
    oracle = Oracle(path)
    ours = LLM(path, ENGINE_CONFIG)
    yield name, ours, oracle
    ours.shutdown()
    oracle.close()


GreedyRuns = dict[str, tuple[list[int], list[int], torch.Tensor]]


@pytest.fixture(scope="module")
def greedy_runs(pair: Pair) -> GreedyRuns:
    """llama.cpp's greedy runs for every prompt, computed once per model: prompt ids, tokens, logits."""
    oracle = pair[2]
    runs: GreedyRuns = {}
    for prompt in GREEDY_PROMPTS:
        prompt_ids = oracle.tokenize(prompt)
        runs[prompt] = (prompt_ids, *oracle.greedy_with_logits(prompt_ids, NUM_GREEDY_TOKENS))
    return runs


def test_greedy_tokens_match_llamacpp(pair: Pair, greedy_runs: GreedyRuns) -> None:
    """Along llama.cpp's greedy path, our greedy choice is llama.cpp's token, except at llama.cpp's own near-ties.

    Exact equality of whole 32-token greedy runs is not a property llama.cpp has with itself: with K/V in f16
    versus f32 its own greedy runs part ways on most of these prompts at the first near-tie, and
    everything after differs. So we follow llama.cpp's path (teacher forcing) and check every position.
    """
    name, ours, _ = pair
    model = served_model(ours)
    positions = exact = 0
    far_off: list[tuple[str, int, float]] = []
    for prompt, (prompt_ids, expected, reference) in greedy_runs.items():
        logits = teacher_forced_logits(model, prompt_ids + expected)
        chosen = logits[len(prompt_ids) - 1 : -1].argmax(-1).tolist()
        for step, (want, got) in enumerate(zip(expected, chosen, strict=True)):
            positions += 1
            if want == got:
                exact += 1
                continue
            margin = float(reference[step][want] - reference[step][got])
            if margin >= NEAR_TIE_LOGITS:
                far_off.append((prompt, step, margin))
    assert not far_off, f"{name}: we pick a token llama.cpp ranks clearly lower at {far_off}"
    assert exact / positions >= MIN_GREEDY_EXACT, f"{name}: only {exact}/{positions} greedy tokens equal llama.cpp's"


def test_greedy_generation_follows_llamacpp_until_a_near_tie(pair: Pair, greedy_runs: GreedyRuns) -> None:
    """Free-running greedy generation (the engine's scheduler, paged KV cache, sampler and stop logic) equals
    llama.cpp's run token for token up to the first position where llama.cpp's top two logits are within the
    near-tie band.

    All prompts go in one batch: greedy outputs on the CPU do not depend on their batch mates (the engine's own
    tests check that), and one batch costs a fraction of ten runs one after another.
    """
    name, ours, _ = pair
    params = SamplingParams(max_tokens=NUM_GREEDY_TOKENS, temperature=0.0, ignore_eos=True)
    outputs = ours.generate([prompt_ids for prompt_ids, _, _ in greedy_runs.values()], params)
    for (prompt, (prompt_ids, expected, reference)), output in zip(greedy_runs.items(), outputs, strict=True):
        assert output.prompt_token_ids == prompt_ids
        got = output.outputs[0].token_ids
        assert len(got) == NUM_GREEDY_TOKENS
        assert output.outputs[0].finish_reason == "length"
        split = next((i for i, (a, b) in enumerate(zip(expected, got, strict=True)) if a != b), None)
        if split is None:
            continue
        top2 = torch.topk(reference[split], 2).values
        assert float(top2[0] - top2[1]) < NEAR_TIE_LOGITS, (
            f"{name} {prompt!r}: diverged at token {split} where llama.cpp's choice was clear "
            f"(margin {float(top2[0] - top2[1]):.3f}): {expected} vs {got}"
        )


def _passage(oracle: Oracle, prompt: str) -> list[int]:
    """A passage of llama.cpp's own greedy continuation, so that it is text the model finds likely."""
    prompt_ids = oracle.tokenize(prompt)
    return prompt_ids + oracle.greedy_with_logits(prompt_ids, MIN_PASSAGE_TOKENS + 16)[0]


def test_teacher_forced_distribution_matches_llamacpp(pair: Pair) -> None:
    """Next-token distributions over a passage of >= 256 tokens: mean KL(llama.cpp || ours) < 0.01, and top-1
    agrees except where llama.cpp's own top two are within the near-tie band.

    Measured with this suite's passages: top-1 agreement 99-100% on smollm2 and qwen2.5, 96-97% on gemma3,
    where llama.cpp with f16 K/V and with f32 K/V agree with each other at only 97.5% (its 8-bit
    activations leave many near-ties in Gemma's 262k vocabulary).
    """
    name, ours, oracle = pair
    model = served_model(ours)
    for prompt in PASSAGE_PROMPTS:
        token_ids = _passage(oracle, prompt)
        assert len(token_ids) >= MIN_PASSAGE_TOKENS
        reference = oracle.logits(token_ids)
        mine = teacher_forced_logits(model, token_ids)
        kl = _kl(reference, mine).mean().item()
        assert kl < 0.01, f"{name} {prompt!r}: mean KL(llama.cpp || ours) = {kl:.5f}"
        want, got = reference.argmax(-1), mine.argmax(-1)
        agreement = (want == got).float().mean().item()
        positions = torch.arange(len(token_ids))
        margins = reference[positions, want] - reference[positions, got]
        far_off = [(int(i), round(float(margins[i]), 3)) for i in torch.nonzero(margins >= NEAR_TIE_LOGITS)]
        assert not far_off, f"{name} {prompt!r}: top-1 differs where llama.cpp's choice is clear: {far_off}"
        assert agreement >= MIN_TOP1_AGREEMENT, f"{name} {prompt!r}: top-1 agreement {agreement:.4f}"
