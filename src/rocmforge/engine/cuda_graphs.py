"""Decode steps replayed from CUDA graphs: one captured forward per batch size, fed through static buffers.

Why: a decode step of a 7B model is several hundred small kernel launches. Launched one by one from Python they
cost more host time than the GPU spends running them (measured: ~40 ms of host time per step, the GPU idle ~80%
of it). A CUDA graph records the launches once and replays the whole step with one call.

How (the scheme of vLLM's CUDA-graph runner):

* Batch sizes 1, 2, 4, 8, then every multiple of 16 up to ``max_batch`` are captured, largest first, all in one
  memory pool. A step of B decodes replays the smallest captured size >= B; the extra rows are padding.
* Every input lives in static device buffers that the graphs read: token ids, positions and KV slots (int64),
  sequence lengths and block tables (int32, one flat buffer so each step is two host-to-device copies from
  pinned memory). Block tables are as wide as ``max_model_len`` needs.
* Padding rows compute a dummy token whose K/V goes to a block reserved for them (``pad_block``, never handed
  to the scheduler), with sequence length 1, so they never touch a real sequence's cache.
* Attention's launch shape is fixed at capture from host-side sizes only: the split-K count is chosen for
  ``max_model_len``-long sequences, and programs of splits past a sequence's real length do nothing.
* Memory: the graphs share one pool for their intermediates, but each keeps its own float32 logits buffer
  (batch x vocab), captured after the KV cache was sized: 175 rows for the default max_num_seqs of 64, i.e.
  106 MB for a 152k vocabulary, within the headroom gpu_memory_utilization leaves.
* Stream discipline: the copies, the replay and the caller's reads of the logits run on the current stream in
  that order; before the pinned staging buffers are overwritten, the host waits for the event recorded after
  the previous step's copies, so a copy still in flight never reads a half-written buffer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch

from rocmforge.engine.checks import cdiv
from rocmforge.engine.scheduler_output import ScheduledRequest
from rocmforge.errors import ConfigError
from rocmforge.layers.paged_attention import PagedAttentionMetadata, SequenceSlice, new_split_counters
from rocmforge.models.decoder import DecoderModel
from rocmforge.models.kv_cache import PagedKVCache

logger = logging.getLogger(__name__)

__all__ = ["DecodeGraphs", "capture_sizes", "replayable"]


def capture_sizes(max_batch: int) -> tuple[int, ...]:
    """Batch sizes to capture: 1, 2, 4, 8, the multiples of 16 below max_batch, and max_batch itself."""
    sizes = {s for s in (1, 2, 4, 8) if s < max_batch} | set(range(16, max_batch, 16)) | {max_batch}
    return tuple(sorted(sizes))


def replayable(scheduled: Sequence[ScheduledRequest], max_batch: int, table_width: int) -> bool:
    """Whether a step's requests fit a decode graph: 1..max_batch of them, each computing one token that it samples
    (a decode, or a prompt's last token) with a block table of at most ``table_width`` blocks.

    A one-token chunk in the middle of a prompt samples nothing, and a graph returns logits for every row.
    """
    return 0 < len(scheduled) <= max_batch and all(
        item.num_tokens == 1 and item.samples_token and len(item.block_table) <= table_width for item in scheduled
    )


class DecodeGraphs:
    """CUDA graphs of ``model.forward_batch`` over batches of single-token decodes.

    Args:
        model: the model, on a CUDA device.
        kv_cache: the engine's cache; block ``pad_block`` of it is reserved for padding rows.
        max_batch: the largest batch captured (the engine's max_num_seqs).
        max_model_len: the longest sequence a step may hold (sizes the block tables and attention's splits).
    """

    def __init__(
        self,
        model: DecoderModel,
        kv_cache: PagedKVCache,
        pad_block: int,
        max_batch: int,
        max_model_len: int,
    ) -> None:
        if model.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA/ROCm device, the model is on {model.device}")
        self.model = model
        self.kv_cache = kv_cache
        self.block_size = kv_cache.block_size
        self.pad_block = pad_block
        self.max_batch = max_batch
        self.max_model_len = max_model_len
        self.table_width = cdiv(max_model_len, self.block_size)
        self.sizes = capture_sizes(max_batch)
        device = model.device
        # int64 rows: token ids, positions, KV slots. int32: seq_lens [max_batch], then block tables.
        self._host_i64 = torch.zeros((3, max_batch), dtype=torch.int64).pin_memory()
        self._host_i32 = torch.zeros(max_batch * (1 + self.table_width), dtype=torch.int32).pin_memory()
        self._dev_i64 = torch.zeros((3, max_batch), dtype=torch.int64, device=device)
        self._dev_i32 = torch.zeros(max_batch * (1 + self.table_width), dtype=torch.int32, device=device)
        self._np_i64 = self._host_i64.numpy()
        self._np_seq_lens = self._host_i32[:max_batch].numpy()
        self._np_tables = self._host_i32[max_batch:].numpy().reshape(max_batch, self.table_width)
        self._copied = torch.cuda.Event()
        self._copied.record()
        # batch size -> (graph, its logits buffer, the metadata whose tensors it reads: kept alive with it)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, PagedAttentionMetadata]] = {}

    def _metadata(self, batch: int) -> PagedAttentionMetadata:
        """Attention metadata over the static buffers' first ``batch`` rows.

        Its host-side ``sequences`` only size the kernel launch: every sequence declared max_model_len long, so
        the split count fits any length a replay will see.
        """
        tables = self._dev_i32[self.max_batch :].view(self.max_batch, self.table_width)
        return PagedAttentionMetadata(
            block_size=self.block_size,
            sequences=tuple(SequenceSlice(i, 1, self.max_model_len, ()) for i in range(batch)),
            slot_mapping=self._dev_i64[2, :batch],
            query_start_loc=torch.arange(batch + 1, dtype=torch.int32, device=self.model.device),
            seq_lens=self._dev_i32[:batch],
            block_tables=tables[:batch],
            split_counters=new_split_counters(self.model.device),
        )

    def _forward(self, batch: int, metadata: PagedAttentionMetadata) -> torch.Tensor:
        return self.model.forward_batch(
            self._dev_i64[0, :batch], self._dev_i64[1, :batch], self.kv_cache, metadata, None
        )

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every size, largest first so that the smaller graphs reuse its memory pool.

        Raises:
            ConfigError: a capture failed (an op that cannot be captured on this platform, or no memory left
                for the graphs); the message says how to run without graphs.
        """
        try:
            self._capture_all()
        except (RuntimeError, torch.cuda.OutOfMemoryError) as exc:
            self._graphs.clear()
            raise ConfigError(
                f"capturing the decode CUDA graphs failed ({type(exc).__name__}: {exc}); run with --enforce-eager "
                "(EngineConfig(enforce_eager=True)) to decode without them, or lower --max-num-seqs"
            ) from exc

    def _capture_all(self) -> None:
        start = time.perf_counter()
        self._stage([])
        self._upload()
        pool = torch.cuda.graph_pool_handle()
        for batch in reversed(self.sizes):
            metadata = self._metadata(batch)
            # One eager run first: Triton compiles each kernel specialization on first launch, which must not
            # happen inside a capture.
            side = torch.cuda.Stream(self.model.device)
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._forward(batch, metadata)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            # thread_local: other threads (the server's event loop, a second engine) may use CUDA meanwhile.
            with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                logits = self._forward(batch, metadata)
            self._graphs[batch] = (graph, logits, metadata)
        torch.cuda.synchronize(self.model.device)
        logger.info(
            "captured CUDA graphs for decode batches %s in %.1f s", list(self.sizes), time.perf_counter() - start
        )

    def fits(self, scheduled: Sequence[ScheduledRequest]) -> bool:
        """Whether this step can replay a captured graph (see :func:`replayable`)."""
        return bool(self._graphs) and replayable(scheduled, self.max_batch, self.table_width)

    def _stage(self, scheduled: Sequence[ScheduledRequest]) -> int:
        """Write the step's inputs (and padding rows up to the graph's size) into the pinned buffers."""
        batch = len(scheduled)
        size = next((s for s in self.sizes if s >= batch), self.max_batch)
        # The previous step's copies read these buffers: wait until they are done before overwriting.
        self._copied.synchronize()
        i64, seq_lens, tables = self._np_i64, self._np_seq_lens, self._np_tables
        bs = self.block_size
        for row, item in enumerate(scheduled):
            i64[0, row] = item.token_ids[0]
            i64[1, row] = item.start_position
            i64[2, row] = item.slot_mapping(bs)[0]
            seq_lens[row] = item.context_len
            tables[row, : len(item.block_table)] = item.block_table
        pad = slice(batch, size)
        i64[0, pad] = 0
        i64[1, pad] = 0
        i64[2, pad] = self.pad_block * bs
        seq_lens[pad] = 1
        tables[pad, 0] = self.pad_block
        return size

    def _upload(self) -> None:
        self._dev_i64.copy_(self._host_i64, non_blocking=True)
        self._dev_i32.copy_(self._host_i32, non_blocking=True)
        self._copied.record()

    def run(self, scheduled: Sequence[ScheduledRequest]) -> torch.Tensor:
        """float32 logits [len(scheduled), vocab] of one decode step (a new tensor, not the graph's buffer)."""
        size = self._stage(scheduled)
        self._upload()
        graph, logits, _ = self._graphs[size]
        graph.replay()
        return logits[: len(scheduled)].clone()

    def release(self) -> None:
        self._graphs.clear()
