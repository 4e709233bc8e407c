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

from rocmforge.engine.cuda_graphs import DecodeGraphs
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
    """Runs a DecoderModel over a PagedKVCache it owns; ``release()`` frees the cache's memory.

    With ``cuda_graph_max_batch`` (a GPU model only), steps of up to that many single-token decodes replay
    CUDA graphs, which ``warm_up()`` captures; other steps run eagerly. The cache then has one block more than
    ``num_blocks``, which only the graphs' padding rows write.
    """

    def __init__(
        self,
        model: DecoderModel,
        num_blocks: int,
        block_size: int,
        cuda_graph_max_batch: int | None = None,
        max_model_len: int | None = None,
    ) -> None:
        self.model = model
        self.block_size = block_size
        graph_batch = cuda_graph_max_batch if model.device.type == "cuda" else None
        num_cache_blocks = num_blocks + 1 if graph_batch is not None else num_blocks
        self.kv_cache = PagedKVCache(model.config, num_cache_blocks, block_size, model.dtype, model.device)
        self.graphs: DecodeGraphs | None = None
        self.num_graph_steps = 0
        if graph_batch is not None:
            max_len = max_model_len or model.config.context_length
            self.graphs = DecodeGraphs(model, self.kv_cache, num_blocks, graph_batch, max_len)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @torch.inference_mode()
    def execute(self, output: SchedulerOutput, requests: Mapping[str, Request]) -> StepLogits:
        """Copy forked blocks, run the step's tokens, and return the sampling requests' processed logits."""
        self.kv_cache.copy_blocks(list(output.block_copies))
        if output.is_empty:
            return StepLogits((), torch.empty(0, self.model.config.vocab_size))
        if self.graphs is not None and self.graphs.fits(output.scheduled):
            logits = self.graphs.run(output.scheduled)
            self.num_graph_steps += 1
            sampling_ids = [item.request_id for item in output.scheduled]
            return StepLogits(tuple(sampling_ids), self._process(logits, sampling_ids, requests))
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
        return StepLogits(tuple(sampling_ids), self._process(logits, sampling_ids, requests))

    @staticmethod
    def _process(logits: torch.Tensor, sampling_ids: list[str], requests: Mapping[str, Request]) -> torch.Tensor:
        """Apply each sampling request's logits processors to its row, in place."""
        for row, request_id in enumerate(sampling_ids):
            request = requests.get(request_id)
            if request is None or not request.logits_processors:
                continue
            row_logits = logits[row]
            for processor in request.logits_processors:
                row_logits = processor(list(request.output_token_ids), row_logits)
            logits[row] = row_logits
        return logits

    @torch.inference_mode()
    def warm_up(self) -> None:
        """One small prefill and one decode through block 0, so the first request pays no first-call costs;
        then the decode CUDA graphs are captured, if this runner uses them.

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
        if self.graphs is not None:
            self.graphs.capture()

    def release(self) -> None:
        if self.graphs is not None:
            self.graphs.release()
        self.kv_cache.release()
