"""How many KV cache blocks an engine gets: from a byte budget on the CPU, from free memory on a GPU."""

from __future__ import annotations

import logging

import torch

from rocmforge.engine.checks import cdiv
from rocmforge.engine.config import EngineConfig
from rocmforge.layers.paged_attention import PagedAttentionMetadata, SequenceSlice
from rocmforge.models.decoder import DecoderModel
from rocmforge.models.kv_cache import PagedKVCache

logger = logging.getLogger(__name__)


def num_kv_blocks_for(model: DecoderModel, config: EngineConfig, max_model_len: int) -> int:
    """Blocks for the cache: the explicit count, else what the budget holds, capped by what can be used."""
    if config.num_kv_blocks is not None:
        return config.num_kv_blocks
    per_block = PagedKVCache.bytes_per_block(model.config, config.block_size, model.dtype)
    useful = config.max_num_seqs * cdiv(max_model_len, config.block_size)
    budget = config.kv_cache_memory if model.device.type == "cpu" else _gpu_kv_budget(model, config, max_model_len)
    num_blocks = max(1, min(budget // per_block, useful))
    logger.info(
        "KV cache: %d blocks of %d tokens (%.2f GiB), %.1f sequences of the full %d-token context",
        num_blocks,
        config.block_size,
        num_blocks * per_block / 2**30,
        num_blocks / cdiv(max_model_len, config.block_size),
        max_model_len,
    )
    return num_blocks


@torch.inference_mode()
def _gpu_kv_budget(model: DecoderModel, config: EngineConfig, max_model_len: int) -> int:
    """Bytes left for the cache: gpu_memory_utilization of the card, minus what is in use (weights, the
    runtime, other processes) and the activation peak of a full-size step, measured by running one (vLLM's
    profile run) over a throwaway cache just large enough for it."""
    device = model.device
    num_tokens = min(config.max_num_batched_tokens, max_model_len)
    scratch = PagedKVCache(model.config, cdiv(num_tokens, config.block_size), config.block_size, model.dtype, device)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    baseline = torch.cuda.memory_allocated(device)
    table = tuple(range(scratch.num_blocks))
    metadata = PagedAttentionMetadata.build(
        [SequenceSlice(0, num_tokens, num_tokens, table)], config.block_size, model.attention_windows, device
    )
    model.forward_batch(
        torch.zeros(num_tokens, dtype=torch.long, device=device),
        torch.arange(num_tokens, device=device),
        scratch,
        metadata,
        torch.arange(min(num_tokens, config.max_num_seqs), device=device),
    )
    torch.cuda.synchronize(device)
    activation_peak = torch.cuda.max_memory_allocated(device) - baseline
    del scratch, metadata
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info(device)
    budget = int(total * config.gpu_memory_utilization) - (total - free) - activation_peak
    if budget <= 0:
        utilization = config.gpu_memory_utilization
        logger.warning("no GPU memory left for the KV cache at gpu_memory_utilization=%s", utilization)
    return max(0, budget)
