"""A request as the engine core sees it: token ids, how far its KV is computed, and where it is in its lifecycle.

One rule drives scheduling: ``num_computed_tokens`` catches up to ``num_tokens``. A prompt being prefilled, a
prefix-cache hit, a decode step and a request recomputing after preemption are all just a gap between the two.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING

from rocmforge.errors import ValidationError
from rocmforge.sampling_params import SamplingParams

if TYPE_CHECKING:
    import torch

    from rocmforge.layers.sampler import RequestSampler

# (output token ids so far, the next token's logits for this request) -> adjusted logits. The model runner
# applies a request's processors in order before its sampler; grammar-constrained decoding plugs in here.
LogitsProcessor = Callable[[list[int], "torch.Tensor"], "torch.Tensor"]


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"  # waiting again, blocks freed; it recomputes prompt and outputs on resume
    FINISHED_STOPPED = "finished_stopped"
    FINISHED_LENGTH = "finished_length"
    FINISHED_ABORTED = "finished_aborted"

    @property
    def is_finished(self) -> bool:
        return self in _FINISH_REASONS

    @property
    def finish_reason(self) -> str | None:
        """The OpenAI finish_reason ("stop", "length", "abort"), or None while the request is unfinished."""
        return _FINISH_REASONS.get(self)


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
}


class Request:
    """One generation request: its prompt, the tokens sampled so far, and its scheduling state.

    ``num_computed_tokens`` counts the leading tokens whose KV is in the cache (prefix hits included);
    ``num_cached_tokens`` how many of those the prefix cache supplied at its latest admission.
    ``eos_token_ids`` (end of generation) come from the tokenizer (the engine fills them in);
    ``logits_processors`` are only carried by the scheduler and applied by the model runner (see ``LogitsProcessor``).
    ``sampler`` is the request's sampling state (generator, penalty counts), set by the engine core.
    ``arrival_index`` is set by the scheduler on submission and orders requests first come, first served.
    """

    def __init__(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        sampling_params: SamplingParams | None = None,
        *,
        eos_token_ids: Collection[int] = (),
        logits_processors: Sequence[LogitsProcessor] = (),
    ) -> None:
        if not isinstance(request_id, str) or not request_id:
            raise ValidationError(f"request_id must be a non-empty string, got {request_id!r}")
        prompt = list(prompt_token_ids)
        if not prompt:
            raise ValidationError(f"request {request_id!r}: the prompt must contain at least one token")
        if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in prompt):
            raise ValidationError(f"request {request_id!r}: prompt token ids must be integers >= 0")
        self.request_id = request_id
        self.prompt_token_ids: tuple[int, ...] = tuple(prompt)
        self.sampling_params = sampling_params if sampling_params is not None else SamplingParams()
        self.eos_token_ids = frozenset(eos_token_ids)
        self.logits_processors: list[LogitsProcessor] = list(logits_processors)
        self.output_token_ids: list[int] = []
        # Prompt then outputs, kept as one list so the block manager can read it without a copy per step.
        self._all_token_ids: list[int] = list(prompt)
        self.num_computed_tokens = 0
        self.num_cached_tokens = 0
        self.num_preemptions = 0
        self.status = RequestStatus.WAITING
        self.stop_token_id: int | None = None  # the EOS / stop token that finished it, if any
        self.arrival_index = -1
        self.sampler: RequestSampler | None = None

    def __repr__(self) -> str:
        return (
            f"Request({self.request_id!r}, status={self.status.name}, num_prompt_tokens={self.num_prompt_tokens}, "
            f"num_output_tokens={len(self.output_token_ids)}, num_computed_tokens={self.num_computed_tokens})"
        )

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        """Prompt plus output tokens: what ``num_computed_tokens`` catches up to."""
        return len(self._all_token_ids)

    @property
    def all_token_ids(self) -> Sequence[int]:
        """Prompt then output token ids (a live view: do not modify)."""
        return self._all_token_ids

    @property
    def max_tokens(self) -> int:
        return self.sampling_params.max_tokens

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    def append_output_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self._all_token_ids.append(token_id)
