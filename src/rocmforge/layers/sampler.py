"""Token sampling: penalties, temperature and truncation masks over a batch of logits rows, then a draw.

Each row carries its own parameters and its own torch.Generator, so a seeded request draws the same
tokens whatever shares its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rocmforge.sampling_params import SamplingParams


def apply_repetition_penalty(logits: torch.Tensor, token_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty (as llama.cpp and HF): seen tokens' positive logits are divided, negative multiplied."""
    if penalty == 1.0 or token_ids.numel() == 0:
        return logits
    seen = logits[token_ids]
    logits = logits.clone()
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
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # A token is dropped when the tokens before it already reach top_p.
    drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def min_p_mask(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens whose probability is below min_p times the most likely token's."""
    if min_p <= 0.0:
        return logits
    probs = logits.softmax(dim=-1)
    threshold = probs.max(dim=-1, keepdim=True).values * min_p
    return logits.masked_fill(probs < threshold, float("-inf"))


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
    if params.greedy:
        return int(torch.argmax(logits))
    # Shift the maximum to 0 before dividing: a tiny temperature (1e-40 is a valid one) would otherwise turn
    # logits into inf and softmax into NaN. Softmax and every mask below are shift-invariant. A temperature
    # below float32's smallest normal would round to 0 (0 / 0 = NaN), so it is raised to that: same draw.
    temperature = max(params.temperature, torch.finfo(torch.float32).tiny)
    logits = (logits - logits.max()) / temperature
    candidates = None
    if 0 < params.top_k < logits.shape[-1]:
        # Narrow to the top-k candidates (ties at the k-th value included, as top_k_mask keeps them) before
        # top-p's sort and the draw: sorting 40 values instead of a whole vocabulary is what keeps sampling
        # cheap next to a decode step. Masked-out tokens have probability 0 either way.
        kth = torch.topk(logits, params.top_k).values[-1]
        candidates = torch.nonzero(logits >= kth).squeeze(1)
        logits = logits[candidates]
    logits = top_p_mask(logits, params.top_p)
    logits = min_p_mask(logits, params.min_p)
    probs = logits.softmax(dim=-1).cpu()
    choice = int(torch.multinomial(probs, 1, generator=generator))
    return int(candidates[choice]) if candidates is not None else choice
