"""The token-budget scheduler: each step, every request's num_computed_tokens catches up to its num_tokens.

The scheduler only decides. ``schedule()`` plans a step — decodes and chunked prefills mixed under
``max_num_batched_tokens`` and ``max_num_seqs`` — and ``update()`` folds the sampled tokens back in, checks
stop conditions and frees finished requests' blocks. When blocks run out it preempts by recompute, newest
first, so the oldest request always makes progress and none starves.

Ordering invariant (what makes preemption simple): ``running`` is sorted by arrival, ``waiting`` too, and
every running request arrived before every waiting one. Preemption pops the newest running request and
pushes it on the front of ``waiting``; admission pops the front of ``waiting`` onto the back of ``running``.

n > 1: the front end submits the first sample as an ordinary request and, once it has been prefilled (its
first token came back from ``update``), calls ``fork_request`` for each sibling: the sibling shares the
prompt's full KV blocks and recomputes only the last prompt token, whose logits it samples from.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from rocmforge.engine.block_manager import BlockManager, PrefixCacheStats
from rocmforge.engine.checks import cdiv, check_positive_int
from rocmforge.engine.request import Request, RequestStatus
from rocmforge.engine.scheduler_output import RequestUpdate, ScheduledRequest, SchedulerOutput
from rocmforge.errors import ValidationError


class Scheduler:
    """Plans steps over a ``BlockManager``; see the module docstring for the policy."""

    def __init__(
        self, block_manager: BlockManager, max_num_batched_tokens: int, max_num_seqs: int, max_model_len: int
    ) -> None:
        self.block_manager = block_manager
        self.max_num_batched_tokens = check_positive_int("max_num_batched_tokens", max_num_batched_tokens)
        self.max_num_seqs = check_positive_int("max_num_seqs", max_num_seqs)
        self.max_model_len = check_positive_int("max_model_len", max_model_len)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}  # unfinished requests only
        self._finished_request_ids: list[str] = []  # since the last schedule(), for the model runner
        self._pending_block_copies: list[tuple[int, int]] = []
        self._next_arrival_index = 0

    # ------------------------------------------------------------------ queries

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    @property
    def kv_cache_usage(self) -> float:
        return self.block_manager.usage

    @property
    def prefix_cache_stats(self) -> PrefixCacheStats:
        return self.block_manager.prefix_cache_stats

    # ------------------------------------------------------------------ submission

    def add_request(self, request: Request) -> None:
        """Queue a request, or raise ValidationError if it could never complete (context or KV cache too small)."""
        self._validate(request)
        request.arrival_index = self._next_arrival_index
        self._next_arrival_index += 1
        request.status = RequestStatus.WAITING
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def _validate(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValidationError(f"request id {request.request_id!r} is already in use")
        if request.is_finished or request.num_computed_tokens or request.output_token_ids:
            raise ValidationError(f"request {request.request_id!r} is not new: it has already run")
        self.check_fits(request.request_id, request.num_prompt_tokens, request.max_tokens)

    def check_fits(self, request_id: str, num_prompt: int, max_tokens: int) -> None:
        """Raise ValidationError if such a request could never complete (context or KV cache too small).

        Reads only settings fixed at construction, so a front end may call it from any thread to reject a
        request at submission, before it reaches the engine loop.
        """
        if num_prompt + max_tokens > self.max_model_len:
            raise ValidationError(
                f"request {request_id!r}: prompt of {num_prompt} tokens plus max_tokens={max_tokens} is "
                f"{num_prompt + max_tokens} tokens, more than the model's context length of {self.max_model_len}"
            )
        # KV is never computed for the very last sampled token, hence the - 1.
        block_size = self.block_manager.block_size
        num_blocks_needed = cdiv(num_prompt + max_tokens - 1, block_size)
        if num_blocks_needed > self.block_manager.num_blocks:
            raise ValidationError(
                f"request {request_id!r}: prompt of {num_prompt} tokens plus max_tokens={max_tokens} needs "
                f"{num_blocks_needed} KV cache blocks of {block_size} tokens, but the cache has only "
                f"{self.block_manager.num_blocks}; lower max_tokens or enlarge the cache"
            )

    def fork_request(self, parent_request_id: str, child: Request) -> bool:
        """Start ``child`` (a sibling sample, n > 1) on the running parent's prompt KV; False if it cannot now.

        The child must have the parent's prompt, and the parent must have computed at least all but its last
        prompt token. The child shares the full blocks, gets a copy of a partial one (emitted as
        ``block_copies`` in the next step) and recomputes the last prompt token. On False, nothing changed:
        submit the child with ``add_request`` instead (prefix caching then shares the blocks anyway).
        """
        parent = self.requests.get(parent_request_id)
        if parent is None or parent.status is not RequestStatus.RUNNING:
            return False
        if child.prompt_token_ids != parent.prompt_token_ids:
            raise ValidationError(f"cannot fork {child.request_id!r}: its prompt differs from {parent_request_id!r}")
        self._validate(child)
        num_shared = child.num_prompt_tokens - 1
        if num_shared == 0 or parent.num_computed_tokens < num_shared or len(self.running) >= self.max_num_seqs:
            return False
        copies = self.block_manager.fork(parent_request_id, child.request_id, num_shared)
        if copies is None:
            return False
        self._pending_block_copies.extend(copies)
        # Same arrival as the parent and placed right after it (and its earlier siblings): the ordering
        # invariant holds, and preemption treats the family as one arrival.
        child.arrival_index = parent.arrival_index
        child.num_computed_tokens = child.num_cached_tokens = num_shared
        child.status = RequestStatus.RUNNING
        index = self.running.index(parent) + 1
        while index < len(self.running) and self.running[index].arrival_index == parent.arrival_index:
            index += 1
        self.running.insert(index, child)
        self.requests[child.request_id] = child
        return True

    def abort(self, request_id: str) -> bool:
        """Finish a waiting or running request with reason "abort" and free its blocks; False if unknown."""
        request = self.requests.get(request_id)
        if request is None:
            return False  # already finished or never known: aborts race with completion
        if request.status is RequestStatus.RUNNING:
            self.running.remove(request)
        else:
            self.waiting.remove(request)
        self._finish(request, RequestStatus.FINISHED_ABORTED)
        return True

    # ------------------------------------------------------------------ one step

    def schedule(self) -> SchedulerOutput:
        """Plan one step: running requests first (in arrival order), then waiting ones, first come first served."""
        budget = self.max_num_batched_tokens
        scheduled: list[ScheduledRequest] = []
        preempted: list[str] = []

        index = 0
        while index < len(self.running) and budget > 0:
            request = self.running[index]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            block_table = self._allocate_or_preempt(request, request.num_computed_tokens + num_new, preempted)
            if block_table is None:
                break  # it preempted itself: everyone after it is gone already
            scheduled.append(self._scheduled(request, num_new, block_table))
            budget -= num_new
            index += 1

        # After a preemption, admitting new work would only evict it again.
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs and not preempted:
            request = self.waiting[0]
            token_ids = request.all_token_ids
            # Back to back with allocate: the lookup is only valid until the cache changes.
            _, num_hit = self.block_manager.find_cached_prefix(token_ids)
            num_new = min(request.num_tokens - num_hit, budget)
            block_table = self.block_manager.allocate(request.request_id, token_ids, num_hit + num_new)
            if block_table is None:
                break  # first come first served: nobody overtakes the head of the queue
            self.waiting.popleft()
            request.num_computed_tokens = request.num_cached_tokens = self.block_manager.num_cached_tokens(
                request.request_id
            )
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            scheduled.append(self._scheduled(request, num_new, block_table))
            budget -= num_new

        output = SchedulerOutput(
            scheduled=tuple(scheduled),
            preempted_request_ids=tuple(preempted),
            finished_request_ids=tuple(self._finished_request_ids),
            block_copies=tuple(self._pending_block_copies),
        )
        self._finished_request_ids.clear()
        self._pending_block_copies.clear()
        return output

    def _allocate_or_preempt(self, request: Request, num_tokens: int, preempted: list[str]) -> list[int] | None:
        while True:
            block_table = self.block_manager.allocate(request.request_id, request.all_token_ids, num_tokens)
            if block_table is not None:
                return block_table
            victim = self.running.pop()  # the newest arrival; never one scheduled earlier in this step
            self._preempt(victim)
            preempted.append(victim.request_id)
            if victim is request:
                return None

    def _preempt(self, request: Request) -> None:
        # Recompute, not swap: free everything; the outputs stay and are recomputed with the prompt on resume
        # (often largely from the prefix cache, since its committed blocks linger in the free queue).
        self.block_manager.free(request.request_id)
        request.num_computed_tokens = request.num_cached_tokens = 0
        request.num_preemptions += 1
        request.status = RequestStatus.PREEMPTED
        self.waiting.appendleft(request)  # resumes before anything that arrived later

    def _scheduled(self, request: Request, num_new: int, block_table: list[int]) -> ScheduledRequest:
        start = request.num_computed_tokens
        end = start + num_new
        samples_token = end == request.num_tokens
        is_decode = num_new == 1 and samples_token and start >= request.num_prompt_tokens
        return ScheduledRequest(
            request_id=request.request_id,
            token_ids=tuple(request.all_token_ids[start:end]),
            start_position=start,
            block_table=tuple(block_table),
            is_prefill=not is_decode,
            samples_token=samples_token,
            sampling_params=request.sampling_params,
            logits_processors=tuple(request.logits_processors),
        )

    # ------------------------------------------------------------------ after the step

    def update(self, output: SchedulerOutput, sampled_token_ids: Mapping[str, int]) -> list[RequestUpdate]:
        """Fold a step's results in: advance num_computed_tokens, append sampled tokens, finish what stops.

        ``sampled_token_ids`` maps each request whose ``samples_token`` was set to its sampled token.
        Requests aborted between ``schedule`` and ``update`` are skipped. Returns one update per sampled token.
        """
        # Checked before anything changes, so a runner bug cannot leave the scheduler half-updated.
        missing = [
            item.request_id
            for item in output.scheduled
            if item.samples_token and item.request_id not in sampled_token_ids and item.request_id in self.requests
        ]
        if missing:
            raise ValidationError(f"no sampled token for scheduled requests {missing}")
        updates: list[RequestUpdate] = []
        for item in output.scheduled:
            request = self.requests.get(item.request_id)
            if request is None or request.status is not RequestStatus.RUNNING:
                continue  # aborted after this step was planned
            request.num_computed_tokens += item.num_tokens
            if not item.samples_token:
                self.block_manager.commit_full_blocks(
                    request.request_id, request.all_token_ids, request.num_computed_tokens
                )
                continue
            token_id = sampled_token_ids[item.request_id]
            request.append_output_token(token_id)
            # The new token's KV is not computed yet, so it lands in no committed block.
            self.block_manager.commit_full_blocks(
                request.request_id, request.all_token_ids, request.num_computed_tokens
            )
            status = self._stop_status(request, token_id)
            if status is not None:
                self.running.remove(request)
                self._finish(request, status)
            finish_reason = status.finish_reason if status is not None else None
            updates.append(RequestUpdate(request.request_id, (token_id,), finish_reason, request.stop_token_id))
        return updates

    def _stop_status(self, request: Request, token_id: int) -> RequestStatus | None:
        params = request.sampling_params
        # The sampler keeps stopping tokens out before min_tokens; this guard keeps the rule whatever sampled.
        if len(request.output_token_ids) < params.min_tokens:
            return None
        # ignore_eos only silences EOS: explicit stop_token_ids still stop (as in vLLM).
        if (not params.ignore_eos and token_id in request.eos_token_ids) or token_id in params.stop_token_ids:
            request.stop_token_id = token_id
            return RequestStatus.FINISHED_STOPPED
        if len(request.output_token_ids) >= params.max_tokens or request.num_tokens >= self.max_model_len:
            return RequestStatus.FINISHED_LENGTH
        return None

    def _finish(self, request: Request, status: RequestStatus) -> None:
        request.status = status
        if request.request_id in self.block_manager:
            self.block_manager.free(request.request_id)
        del self.requests[request.request_id]
        self._finished_request_ids.append(request.request_id)
