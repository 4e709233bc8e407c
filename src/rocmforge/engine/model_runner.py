"""The model runner: one batched forward per step over the paged KV cache, then each request's logits out.

It turns a SchedulerOutput (which tokens of which requests run this step) into packed input tensors and
attention metadata, runs the model once over decodes and prefill chunks together, and returns the logits
rows of the requests that sample this step, with each request's logits processors applied. Sampling
itself stays with the engine core, which owns every request's sampler state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from rocmforge.engine.request import Request
from rocmforge.engine.scheduler_output import SchedulerOutput
from rocmforge.layers.paged_attention import PagedAttentionMetadata, SequenceSlice
from rocmforge.models.decoder import DecoderModel
from rocmforge.models.kv_cache import PagedKVCache


@dataclass(frozen=True)
class StepLogits:
    """The float32 logits [len(request_ids), vocab] of the requests that sample this step, in step order."""

    request_ids: tuple[str, ...]
    logits: torch.Tensor


class ModelRunner:
    """Runs a DecoderModel over a PagedKVCache it owns; ``release()`` frees the cache's memory."""

    def __init__(self, model: DecoderModel, num_blocks: int, block_size: int) -> None:
        self.model = model
        self.block_size = block_size
        self.kv_cache = PagedKVCache(model.config, num_blocks, block_size, model.dtype, model.device)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def execute(self, output: SchedulerOutput, requests: Mapping[str, Request]) -> StepLogits:
        """Copy forked blocks, run the step's tokens, and return the sampling requests' processed logits."""
        self.kv_cache.copy_blocks(list(output.block_copies))
        if output.is_empty:
            return StepLogits((), torch.empty(0, self.model.config.vocab_size))
        token_ids: list[int] = []
        positions: list[int] = []
        sequences: list[SequenceSlice] = []
        logits_rows: list[int] = []
        sampling_ids: list[str] = []
        for item in output.scheduled:
            sequences.append(SequenceSlice(len(token_ids), item.num_tokens, item.context_len, item.block_table))
            token_ids.extend(item.token_ids)
            positions.extend(item.positions)
            if item.samples_token:
                logits_rows.append(len(token_ids) - 1)
                sampling_ids.append(item.request_id)
        device = self.device
        metadata = PagedAttentionMetadata.build(sequences, self.block_size, self.model.attention_windows, device)
        logits = self.model.forward_batch(
            torch.tensor(token_ids, dtype=torch.long, device=device),
            torch.tensor(positions, dtype=torch.long, device=device),
            self.kv_cache,
            metadata,
            torch.tensor(logits_rows, dtype=torch.long, device=device),
        )
        for row, request_id in enumerate(sampling_ids):
            request = requests.get(request_id)
            if request is None or not request.logits_processors:
                continue
            row_logits = logits[row]
            for processor in request.logits_processors:
                row_logits = processor(list(request.output_token_ids), row_logits)
            logits[row] = row_logits
        return StepLogits(tuple(sampling_ids), logits)

    @torch.inference_mode()
    def warm_up(self) -> None:
        """One small prefill and one decode through block 0, so the first request pays no first-call costs.

        Runs before any request exists, when every block is free and block 0's content is garbage anyway
        (the table names block 0 for every position, which only overwrites that garbage).
        """
        prompt = [0] * 8
        for start, tokens in ((0, prompt), (len(prompt), [0])):
            end = start + len(tokens)
            table = (0,) * -(-end // self.block_size)
            metadata = PagedAttentionMetadata.build(
                [SequenceSlice(0, len(tokens), end, table)], self.block_size, self.model.attention_windows, self.device
            )
            self.model.forward_batch(
                torch.tensor(tokens, dtype=torch.long, device=self.device),
                torch.arange(start, end, device=self.device),
                self.kv_cache,
                metadata,
                torch.tensor([len(tokens) - 1], device=self.device),
            )

    def release(self) -> None:
        self.kv_cache.release()
