"""Small builders for scheduler tests: requests, schedulers, and a fake model that needs no weights."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rocmforge.engine.block_manager import BlockManager
from rocmforge.engine.request import Request
from rocmforge.engine.scheduler import Scheduler
from rocmforge.engine.scheduler_output import RequestUpdate, ScheduledRequest, SchedulerOutput
from rocmforge.sampling_params import SamplingParams

BLOCK_SIZE = 4
EOS = 2
# The fake model samples ids in [FAKE_VOCAB_START, FAKE_VOCAB_START + FAKE_VOCAB_SIZE): never EOS by accident.
FAKE_VOCAB_START = 1000
FAKE_VOCAB_SIZE = 97


def make_request(
    request_id: str,
    prompt: Sequence[int] | int = 8,
    max_tokens: int = 4,
    *,
    start: int = 100,
    stop_token_ids: Sequence[int] = (),
    ignore_eos: bool = False,
    eos_token_id: int | None = EOS,
) -> Request:
    """A request with an explicit prompt, or ``prompt`` consecutive token ids from ``start``."""
    prompt_token_ids = list(range(start, start + prompt)) if isinstance(prompt, int) else list(prompt)
    params = SamplingParams(max_tokens=max_tokens, stop_token_ids=tuple(stop_token_ids), ignore_eos=ignore_eos)
    return Request(request_id, prompt_token_ids, params, eos_token_ids=() if eos_token_id is None else (eos_token_id,))


def make_scheduler(
    num_blocks: int = 64,
    *,
    block_size: int = BLOCK_SIZE,
    max_num_batched_tokens: int = 32,
    max_num_seqs: int = 8,
    max_model_len: int = 256,
    enable_prefix_caching: bool = True,
) -> Scheduler:
    manager = BlockManager(num_blocks, block_size=block_size, enable_prefix_caching=enable_prefix_caching)
    return Scheduler(manager, max_num_batched_tokens, max_num_seqs, max_model_len)


def fake_next_token(last_token_id: int, position: int) -> int:
    """A deterministic stand-in for a model: the next token depends only on the last token and its position.

    So a request recomputed after preemption (or served from the prefix cache) samples the same tokens.
    """
    return FAKE_VOCAB_START + (last_token_id * 31 + position * 7) % FAKE_VOCAB_SIZE


def fake_sample(item: ScheduledRequest) -> int:
    return fake_next_token(item.token_ids[-1], item.context_len - 1)


def expected_outputs(
    prompt: Sequence[int], max_tokens: int, stop: Callable[[int], bool] = lambda _: False
) -> list[int]:
    """What the fake model generates for a prompt run alone, to compare batched / preempted runs against."""
    tokens = list(prompt)
    outputs: list[int] = []
    while len(outputs) < max_tokens:
        token = fake_next_token(tokens[-1], len(tokens) - 1)
        tokens.append(token)
        outputs.append(token)
        if stop(token):
            break
    return outputs


def step(
    scheduler: Scheduler, sample: Callable[[ScheduledRequest], int] = fake_sample
) -> tuple[SchedulerOutput, list[RequestUpdate]]:
    """One engine step with the fake model: schedule, sample where the step ends a sequence, update."""
    output = scheduler.schedule()
    sampled = {item.request_id: sample(item) for item in output.scheduled if item.samples_token}
    return output, scheduler.update(output, sampled)


def run_to_completion(scheduler: Scheduler, max_steps: int = 10_000) -> dict[str, list[int]]:
    """Step until nothing is unfinished; the tokens each request got, from the updates alone."""
    tokens: dict[str, list[int]] = {}
    for _ in range(max_steps):
        if not scheduler.has_unfinished_requests():
            return tokens
        _, updates = step(scheduler)
        for update in updates:
            tokens.setdefault(update.request_id, []).extend(update.new_token_ids)
    raise AssertionError(f"requests still unfinished after {max_steps} steps")
