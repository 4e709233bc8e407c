"""Token sampling: bias, penalties, temperature and truncation masks over logits rows, then a draw.

Each request carries its own parameters and its own torch.Generator, so a seeded request draws the same
tokens whatever shares its batch. ``sample_token`` is the stateless form the single-sequence generator uses;
``RequestSampler`` keeps a serving request's state (generator, token counts) and ``sample_batch`` runs a
step's rows through their samplers.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

from rocmforge.sampling_params import SamplingParams


def apply_repetition_penalty(logits: torch.Tensor, token_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty (as llama.cpp and HF): seen tokens' positive logits are divided, negative multiplied."""
    if penalty == 1.0 or token_ids.numel() == 0:
        return logits
    return _apply_repetition_penalty_(logits.clone(), token_ids, penalty)


def _apply_repetition_penalty_(logits: torch.Tensor, token_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """In place; token_ids must be distinct (a repeated id would be penalised once per repeat)."""
    seen = logits[token_ids]
    logits[token_ids] = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits


def top_k_mask(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the k largest logits (ties at the k-th value are kept too)."""
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_mask(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches top_p (always at least one)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    drop_sorted = ~_top_p_keeps(sorted_logits.softmax(dim=-1), top_p)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def _top_p_keeps(sorted_probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Which of these probabilities (most likely first) top_p keeps: those the tokens before have not yet
    covered. A leading slice of the sorted vocabulary gives the same answer for its tokens as the whole."""
    return (sorted_probs.cumsum(dim=-1) - sorted_probs) < top_p


def min_p_mask(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the most likely token's."""
    if min_p <= 0.0:
        return logits
    return logits.masked_fill(~_min_p_keeps(logits.softmax(dim=-1), min_p), float("-inf"))


def _min_p_keeps(probs: torch.Tensor, min_p: float) -> torch.Tensor:
    return probs >= probs.max(dim=-1, keepdim=True).values * min_p


def make_generator(seed: int | None) -> torch.Generator:
    generator = torch.Generator()
    if seed is None:
        generator.seed()  # fresh entropy per request
    else:
        generator.manual_seed(seed)
    return generator


def sample_token(
    logits: torch.Tensor,
    params: SamplingParams,
    history_ids: Sequence[int],
    generator: torch.Generator,
) -> int:
    """Pick one token id from float32 logits [vocab]. history_ids (prompt + output) feed the penalty."""
    logits = logits.float()
    if params.repetition_penalty != 1.0:
        history = torch.tensor(sorted(set(history_ids)), dtype=torch.long, device=logits.device)
        logits = apply_repetition_penalty(logits, history, params.repetition_penalty)
    return _pick_token(logits, params, generator)


def _pick_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """The last stage of sampling, once bias and penalties are in: argmax, or temperature, truncation, a draw.

    Each truncation narrows the candidates to the tokens it keeps rather than masking the rest with -inf:
    the distribution is the same (masked tokens have probability 0 either way), and the stages after it,
    the draw included, then work on a few candidates instead of a whole vocabulary, which is what keeps
    sampling cheap next to a decode step.
    """
    if params.greedy:
        return int(torch.argmax(logits))
    # Shift the maximum to 0 before dividing: a tiny temperature (1e-40 is a valid one) would otherwise turn
    # logits into inf and softmax into NaN. Softmax and every truncation are shift-invariant. A temperature
    # below float32's smallest normal would round to 0 (0 / 0 = NaN), so it is raised to that: same draw.
    temperature = max(params.temperature, torch.finfo(torch.float32).tiny)
    logits = (logits - logits.max()) / temperature
    candidates: torch.Tensor | None = None  # vocabulary ids of the entries of logits, once narrowed

    def narrow(keep: torch.Tensor) -> None:
        nonlocal logits, candidates
        logits = logits[keep]
        candidates = keep if candidates is None else candidates[keep]

    if 0 < params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        narrow(torch.nonzero(logits >= kth).squeeze(1))  # ties at the k-th value kept, as top_k_mask does
    if params.top_p < 1.0:
        narrow(_top_p_indices(logits.softmax(dim=-1), params.top_p))
    if params.min_p > 0.0:
        narrow(torch.nonzero(_min_p_keeps(logits.softmax(dim=-1), params.min_p)).squeeze(1))
    choice = _draw(logits.softmax(dim=-1).cpu(), generator)
    return int(candidates[choice]) if candidates is not None else choice


def _top_p_indices(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Indices of the tokens top_p keeps, most likely first, without sorting the whole vocabulary.

    A nucleus usually holds a few dozen tokens: sort a leading slice (topk) and widen it only while the
    slice's mass is below top_p, since then a token outside it might still be kept.
    """
    size = probs.shape[-1]
    k = min(size, 256)
    while True:
        sorted_probs, order = torch.topk(probs, k)
        if k == size or float(sorted_probs.sum()) >= top_p:
            return order[_top_p_keeps(sorted_probs, top_p)]
        k = min(size, k * 16)


def _draw(probs: torch.Tensor, generator: torch.Generator) -> int:
    """Draw an index with these probabilities by inverting their cumulative sum at one uniform number.

    One random number and one pass, where torch.multinomial costs several times more on a large vocabulary.
    The sum runs in float64: its rounding stays below 1e-10 of the total even over a 262k vocabulary.
    """
    cumulative = probs.double().cumsum(dim=0)  # (cumsum(dtype=float64) takes a path ten times slower)
    u = torch.rand(1, dtype=torch.float64, generator=generator) * cumulative[-1]
    index = int(torch.searchsorted(cumulative, u, right=True))
    if index < probs.shape[0]:
        return index
    # u rounded up to the total: the answer is the last token that has any probability.
    return int(torch.nonzero(probs).max())


@dataclass(frozen=True)
class SampleOutput:
    """One sampled token, with logprobs when the request asked for them (params.logprobs not None).

    Logprobs are log_softmax of the logits row as the sampler received it: after the request's logits
    processors, before logit_bias, penalties, temperature and truncation. These are vLLM v1's default "raw"
    logprobs and what OpenAI reports: the model's own belief, not the distribution the token was drawn from,
    so a token that logit_bias forced can come with a low logprob. top_logprobs holds the params.logprobs
    most likely tokens, most likely first, whether or not the sampled token is among them.
    """

    token_id: int
    logprob: float | None = None
    top_logprobs: tuple[tuple[int, float], ...] = ()


class _TokenTally:
    """Distinct token ids in order of first appearance, each with how often it was added.

    The ids and counts live in tensors that grow by doubling, so recording a token costs O(1) and applying a
    penalty costs O(distinct tokens): never a pass over the vocabulary or a Python loop over the history.
    """

    def __init__(self, token_ids: Sequence[int] = ()) -> None:
        ids, counts = torch.unique(torch.tensor(list(token_ids), dtype=torch.long), return_counts=True)
        self._size = int(ids.numel())
        capacity = max(16, 2 * self._size)
        self._ids = torch.empty(capacity, dtype=torch.long)
        # float32 holds every count exactly up to 2**24, far beyond any context length.
        self._counts = torch.empty(capacity, dtype=torch.float32)
        self._ids[: self._size] = ids
        self._counts[: self._size] = counts
        self._position = {token_id: index for index, token_id in enumerate(ids.tolist())}

    @property
    def ids(self) -> torch.Tensor:
        return self._ids[: self._size]

    @property
    def counts(self) -> torch.Tensor:
        return self._counts[: self._size]

    def add(self, token_id: int) -> None:
        index = self._position.get(token_id)
        if index is not None:
            self._counts[index] += 1
            return
        if self._size == self._ids.numel():
            self._ids = torch.cat([self._ids, torch.empty_like(self._ids)])
            self._counts = torch.cat([self._counts, torch.empty_like(self._counts)])
        self._ids[self._size] = token_id
        self._counts[self._size] = 1
        self._position[token_id] = self._size
        self._size += 1


class RequestSampler:
    """One request's sampler for the serving engine: created at admission, fed one logits row per step.

    It owns the request's torch.Generator (from params.seed), the tokens repetition_penalty looks at (prompt
    and outputs, each distinct token penalised once, CTRL-style), the output-token counts presence_penalty
    and frequency_penalty look at (outputs only, as OpenAI and vLLM define them), and the number of outputs
    so far. stop_token_ids_before_min_tokens get probability 0 while fewer than params.min_tokens tokens are
    out: the engine passes the tokenizer's end-of-generation ids (unless ignore_eos) and params.stop_token_ids.
    Every token it samples is recorded as an output: keep the sampler for the request's whole life,
    preemptions included. Sampling runs on the CPU; a row on another device is copied over first.
    """

    def __init__(
        self,
        params: SamplingParams,
        prompt_token_ids: Sequence[int],
        stop_token_ids_before_min_tokens: Collection[int],
    ) -> None:
        self.params = params
        self._generator = make_generator(params.seed)
        self._num_output_tokens = 0
        self._bias_ids = torch.tensor(list(params.logit_bias.keys()), dtype=torch.long)
        self._bias_values = torch.tensor(list(params.logit_bias.values()), dtype=torch.float32)
        stop_ids = sorted(set(stop_token_ids_before_min_tokens)) if params.min_tokens > 0 else []
        self._min_tokens_stop_ids = torch.tensor(stop_ids, dtype=torch.long)
        # Each tally exists only when its penalty is on: an unpenalised request pays nothing per step.
        self._seen = _TokenTally(prompt_token_ids) if params.repetition_penalty != 1.0 else None
        has_output_penalty = params.presence_penalty != 0.0 or params.frequency_penalty != 0.0
        self._output_counts = _TokenTally() if has_output_penalty else None
        # Whether a step can be a bare argmax of the row (sample_batch batches those); the min_tokens mask is
        # checked per step, since it lifts once enough tokens are out.
        self._argmax_unless_masking = (
            params.greedy
            and self._seen is None
            and self._output_counts is None
            and not params.logit_bias
            and params.logprobs is None
        )

    @property
    def num_output_tokens(self) -> int:
        return self._num_output_tokens

    @property
    def _masking_stops(self) -> bool:
        return self._num_output_tokens < self.params.min_tokens and self._min_tokens_stop_ids.numel() > 0

    @property
    def _argmax_only(self) -> bool:
        return self._argmax_unless_masking and not self._masking_stops

    def sample(self, logits: torch.Tensor) -> SampleOutput:
        """Pick the next token from one row of logits [vocab] and record it as this request's next output.

        Order: logit_bias, the min_tokens mask, repetition penalty, presence and frequency penalties (see
        process_logits), then argmax (temperature 0) or temperature, top_k, top_p, min_p and a draw from
        this request's generator.
        """
        params = self.params
        raw = logits.detach().to("cpu", torch.float32)
        row = raw if self._argmax_only else self.process_logits(raw)
        token_id = _pick_token(row, params, self._generator)
        self._record(token_id)
        if params.logprobs is None:
            return SampleOutput(token_id)
        logprobs = raw.log_softmax(dim=-1)
        top: tuple[tuple[int, float], ...] = ()
        if params.logprobs > 0:
            values, ids = torch.topk(logprobs, min(params.logprobs, logprobs.numel()))
            top = tuple(zip(ids.tolist(), values.tolist(), strict=True))
        return SampleOutput(token_id, float(logprobs[token_id]), top)

    def process_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """A float32 CPU copy of the row with logit_bias, the min_tokens mask, the repetition penalty and the
        presence and frequency penalties applied, in that order, for the outputs recorded so far: the logits
        that temperature and truncation then work on. It changes neither the row nor the sampler's state."""
        params = self.params
        row = logits.detach().to("cpu", torch.float32, copy=True)
        if self._bias_ids.numel():
            row.index_add_(0, self._bias_ids, self._bias_values)
        if self._masking_stops:
            # Too early to stop: stopping tokens get no probability at all (vLLM's semantics).
            row.index_fill_(0, self._min_tokens_stop_ids, float("-inf"))
        if self._seen is not None:
            _apply_repetition_penalty_(row, self._seen.ids, params.repetition_penalty)
        if self._output_counts is not None:
            # logit -= presence_penalty * (count > 0) + frequency_penalty * count, over tokens seen in the output
            penalty = self._output_counts.counts * params.frequency_penalty + params.presence_penalty
            row.index_add_(0, self._output_counts.ids, penalty.neg_())
        return row

    def _record(self, token_id: int) -> None:
        self._num_output_tokens += 1
        if self._seen is not None:
            self._seen.add(token_id)
        if self._output_counts is not None:
            self._output_counts.add(token_id)


def sample_batch(logits: torch.Tensor, samplers: Sequence[RequestSampler]) -> list[SampleOutput]:
    """Sample one token per row of logits [B, vocab]; row i belongs to samplers[i].

    Rows that need nothing but an argmax (greedy, no bias, penalty, logprobs or min_tokens mask this step)
    are argmaxed in one batched call where they lie; the others go through their sampler's ``sample`` one by
    one. Either way each result is exactly what that sampler's ``sample`` would give for its row alone.
    """
    if logits.dim() != 2 or logits.shape[0] != len(samplers):
        raise ValueError(f"logits of shape {tuple(logits.shape)} do not match {len(samplers)} samplers")
    outputs: dict[int, SampleOutput] = {}
    fast = [i for i, sampler in enumerate(samplers) if sampler._argmax_only]
    if fast:
        rows = logits if len(fast) == len(samplers) else logits[torch.tensor(fast, device=logits.device)]
        for i, token_id in zip(fast, rows.argmax(dim=-1).tolist(), strict=True):
            samplers[i]._record(token_id)
            outputs[i] = SampleOutput(token_id)
    slow = [i for i in range(len(samplers)) if i not in outputs]
    if slow:
        # One copy to the CPU for all of them, rather than one per row.
        rows = logits[torch.tensor(slow, device=logits.device)].detach().to("cpu", torch.float32)
        for i, row in zip(slow, rows, strict=True):
            outputs[i] = samplers[i].sample(row)
    return [outputs[i] for i in range(len(samplers))]
