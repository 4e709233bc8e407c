"""What the scheduler decides for one step, and what it reports back after the step: plain frozen messages."""

from __future__ import annotations

from dataclasses import dataclass

from rocmforge.engine.request import LogitsProcessor
from rocmforge.sampling_params import SamplingParams


@dataclass(frozen=True)
class ScheduledRequest:
    """One request's share of a step: compute KV for ``token_ids`` at positions ``start_position`` onwards.

    ``is_prefill`` is False only for a plain decode (the one token sampled last step). ``samples_token``
    says the step reaches the request's last token, so its logits are sampled; a prefill chunk that
    ends mid-prompt samples nothing. ``block_table`` already covers every position computed this step.
    """

    request_id: str
    token_ids: tuple[int, ...]
    start_position: int
    block_table: tuple[int, ...]
    is_prefill: bool
    samples_token: bool
    sampling_params: SamplingParams
    logits_processors: tuple[LogitsProcessor, ...] = ()

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def positions(self) -> range:
        return range(self.start_position, self.start_position + len(self.token_ids))

    @property
    def context_len(self) -> int:
        """Tokens of KV attended to once this step is done: everything before and including these tokens."""
        return self.start_position + len(self.token_ids)

    def slot_mapping(self, block_size: int) -> list[int]:
        """The flat KV-cache slot (block id * block_size + offset) each computed token writes."""
        table = self.block_table
        return [table[position // block_size] * block_size + position % block_size for position in self.positions]


@dataclass(frozen=True)
class SchedulerOutput:
    """One step's plan.

    ``preempted_request_ids`` were preempted while planning this step and ``finished_request_ids`` finished
    or were aborted since the previous step: the model runner drops any per-request state it keeps for
    them. ``block_copies`` are (source, destination) block pairs from forks, copied before the forward.
    """

    scheduled: tuple[ScheduledRequest, ...]
    preempted_request_ids: tuple[str, ...] = ()
    finished_request_ids: tuple[str, ...] = ()
    block_copies: tuple[tuple[int, int], ...] = ()

    @property
    def num_batched_tokens(self) -> int:
        return sum(len(request.token_ids) for request in self.scheduled)

    @property
    def is_empty(self) -> bool:
        """Nothing to compute (bookkeeping fields may still be set)."""
        return not self.scheduled


@dataclass(frozen=True)
class RequestUpdate:
    """Per-request delta after a step: the token(s) sampled, and the finish reason if it finished."""

    request_id: str
    new_token_ids: tuple[int, ...]
    finish_reason: str | None = None
    stop_token_id: int | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None
