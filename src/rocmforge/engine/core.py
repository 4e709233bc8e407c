"""The engine core: scheduler, model runner and per-request samplers, advanced one step at a time.

It knows nothing of threads, asyncio or text: a loop (engine_loop.py) or a test calls ``add_request``,
``abort`` and ``step`` from one thread, and gets plain EngineCoreOutput messages back.

n > 1: a request's samples are separate scheduler requests ("id", "id#1", "id#2", ...). The first runs the
prompt; once its prefill is done the others fork off its KV blocks (or, if it already finished, are
submitted normally and find the prompt in the prefix cache). A seeded request's sample i uses seed + i.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from rocmforge.engine.block_manager import BlockManager, PrefixCacheStats
from rocmforge.engine.config import EngineConfig
from rocmforge.engine.kv_sizing import num_kv_blocks_for
from rocmforge.engine.model_runner import ModelRunner
from rocmforge.engine.outputs import EngineCoreOutput
from rocmforge.engine.request import LogitsProcessor, Request
from rocmforge.engine.scheduler import Scheduler
from rocmforge.engine.scheduler_output import RequestUpdate
from rocmforge.errors import ValidationError
from rocmforge.layers.sampler import RequestSampler, SampleOutput, sample_batch
from rocmforge.models.decoder import DecoderModel
from rocmforge.sampling_params import SamplingParams


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the core's load, taken after each step (read by metrics from other threads)."""

    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    num_kv_blocks: int = 0
    prefix_cache: PrefixCacheStats = dataclasses.field(default_factory=lambda: PrefixCacheStats(0, 0, 0))
    num_steps: int = 0
    num_cuda_graph_steps: int = 0  # of num_steps, those replayed from a captured CUDA graph


class EngineCore:
    def __init__(
        self,
        model: DecoderModel,
        eos_token_ids: Collection[int],
        config: EngineConfig,
        weights_bytes: int | None = None,
    ) -> None:
        """``weights_bytes``: GPU memory the model's load took, so that the KV cache fills this engine's own
        share of the card (``kv_sizing``); None counts all of this process's GPU tensors as the engine's."""
        self.model = model
        self.config = config
        self.eos_token_ids = frozenset(eos_token_ids)
        self.vocab_size = model.config.vocab_size
        self.max_model_len = min(config.max_model_len or model.config.context_length, model.config.context_length)
        num_blocks = num_kv_blocks_for(model, config, self.max_model_len, weights_bytes)
        block_manager = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(
            block_manager, config.max_num_batched_tokens, config.max_num_seqs, self.max_model_len
        )
        graph_batch = None if config.enforce_eager else config.max_num_seqs
        self.runner = ModelRunner(model, num_blocks, config.block_size, graph_batch, self.max_model_len)
        # request id -> its samples' scheduler ids, unfinished only; scheduler id -> (request id, index, sample)
        self._families: dict[str, list[str]] = {}
        self._samples: dict[str, tuple[str, int, Request]] = {}
        # first sample's scheduler id -> siblings waiting for its prefill to finish
        self._pending_siblings: dict[str, list[Request]] = {}
        self.num_steps = 0

    # ------------------------------------------------------------------ submission

    def validate(self, request_id: str, prompt_token_ids: Sequence[int], params: SamplingParams) -> None:
        """Raise ValidationError if the request is malformed or could never run here.

        Reads only settings fixed at construction: safe to call from any thread, before submitting.
        """
        if not prompt_token_ids:
            raise ValidationError(f"request {request_id!r}: the prompt must contain at least one token")
        bad = [
            t for t in prompt_token_ids if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < self.vocab_size
        ]
        if bad:
            raise ValidationError(
                f"request {request_id!r}: prompt token ids must be integers in [0, {self.vocab_size}), got {bad[:5]}"
            )
        params.check_token_ids(self.vocab_size)
        self.scheduler.check_fits(request_id, len(prompt_token_ids), params.max_tokens)

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        logits_processors: Sequence[LogitsProcessor] = (),
    ) -> None:
        """Queue a request (all n samples); raises ValidationError, leaving nothing behind, if it can't run."""
        if request_id in self._families:
            raise ValidationError(f"request id {request_id!r} is already in use")
        self.validate(request_id, prompt_token_ids, params)
        samples = [
            self._new_sample(request_id, index, prompt_token_ids, params, logits_processors)
            for index in range(params.n)
        ]
        self.scheduler.add_request(samples[0])
        self._families[request_id] = [sample.request_id for sample in samples]
        for index, sample in enumerate(samples):
            self._samples[sample.request_id] = (request_id, index, sample)
        if len(samples) > 1:
            self._pending_siblings[samples[0].request_id] = samples[1:]

    def _new_sample(
        self,
        request_id: str,
        index: int,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        logits_processors: Sequence[LogitsProcessor],
    ) -> Request:
        params = params.for_sample(index)
        sample_id = request_id if index == 0 else f"{request_id}#{index}"
        request = Request(
            sample_id, prompt_token_ids, params, eos_token_ids=self.eos_token_ids, logits_processors=logits_processors
        )
        # Before min_tokens, end-of-generation (unless ignored) and the stop tokens get no probability.
        stopping = set(params.stop_token_ids) | (set() if params.ignore_eos else set(self.eos_token_ids))
        request.sampler = RequestSampler(params, prompt_token_ids, stopping)
        return request

    def abort(self, request_id: str, index: int | None = None) -> list[EngineCoreOutput]:
        """Abort a request's unfinished samples (all, or just sample ``index``); returns their "abort" outputs.

        Unknown or finished requests give no outputs: aborts race with completion.
        """
        family = self._families.get(request_id)
        if family is None:
            return []
        outputs = []
        for sample_id in list(family):
            _, sample_index, _ = self._samples[sample_id]
            if index is not None and sample_index != index:
                continue
            self.scheduler.abort(sample_id)  # False for a sibling not yet submitted: nothing to free
            for siblings in self._pending_siblings.values():
                siblings[:] = [sibling for sibling in siblings if sibling.request_id != sample_id]
            # The first sample aborted before its prefill finished: its siblings cannot fork, so they start on
            # their own (the prefix cache still shares whatever of the prompt got computed).
            for sibling in self._pending_siblings.pop(sample_id, []):
                if index is not None:
                    self.scheduler.add_request(sibling)
            del self._samples[sample_id]
            family.remove(sample_id)
            outputs.append(EngineCoreOutput(request_id, sample_index, finish_reason="abort"))
        if not family:
            del self._families[request_id]
        return outputs

    # ------------------------------------------------------------------ stepping

    def has_request(self, request_id: str) -> bool:
        """Whether any sample of this request is still unfinished."""
        return request_id in self._families

    def has_unfinished_requests(self) -> bool:
        return bool(self._families)

    def step(self) -> list[EngineCoreOutput]:
        """Schedule, run the model, sample and update: one step. Returns the step's per-sample deltas."""
        scheduler_output = self.scheduler.schedule()
        if scheduler_output.is_empty:
            self.runner.execute(scheduler_output, {})  # still performs any pending block copies
            return []
        requests = self.scheduler.requests
        step_logits = self.runner.execute(scheduler_output, requests)
        samplers = [requests[request_id].sampler for request_id in step_logits.request_ids]
        samples = sample_batch(step_logits.logits, samplers)  # type: ignore[arg-type]
        by_id = dict(zip(step_logits.request_ids, samples, strict=True))
        updates = self.scheduler.update(scheduler_output, {key: sample.token_id for key, sample in by_id.items()})
        self.num_steps += 1
        outputs = [self._output(update, by_id[update.request_id]) for update in updates]
        for update in updates:
            self._start_siblings(update.request_id)
        return outputs

    def _output(self, update: RequestUpdate, sample: SampleOutput) -> EngineCoreOutput:
        request_id, index, request = self._samples[update.request_id]
        wants_logprobs = sample.logprob is not None
        if update.finished:
            del self._samples[update.request_id]
            family = self._families[request_id]
            family.remove(update.request_id)
            if not family:
                del self._families[request_id]
        return EngineCoreOutput(
            request_id,
            index,
            update.new_token_ids,
            (sample,) if wants_logprobs else (),
            update.finish_reason,
            update.stop_token_id,
            request.num_cached_tokens,
        )

    def _start_siblings(self, first_sample_id: str) -> None:
        siblings = self._pending_siblings.pop(first_sample_id, None)
        for sibling in siblings or ():
            if not self.scheduler.fork_request(first_sample_id, sibling):
                self.scheduler.add_request(sibling)

    # ------------------------------------------------------------------ state

    def stats(self) -> EngineStats:
        scheduler = self.scheduler
        return EngineStats(
            num_running=scheduler.num_running,
            num_waiting=scheduler.num_waiting + sum(len(s) for s in self._pending_siblings.values()),
            kv_cache_usage=scheduler.kv_cache_usage,
            num_kv_blocks=scheduler.block_manager.num_blocks,
            prefix_cache=scheduler.prefix_cache_stats,
            num_steps=self.num_steps,
            num_cuda_graph_steps=self.runner.num_graph_steps,
        )

    def abort_all(self) -> list[EngineCoreOutput]:
        outputs: list[EngineCoreOutput] = []
        for request_id in list(self._families):
            outputs.extend(self.abort(request_id))
        return outputs

    def release(self) -> None:
        """Free the KV cache and drop the model's weights (the engine is unusable afterwards)."""
        self.runner.release()
