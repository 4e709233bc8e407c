"""How many KV cache blocks an engine gets: from a byte budget on the CPU, from its share of the GPU on a GPU.

On a GPU, ``gpu_memory_utilization`` is this engine's own share of the card, as in vLLM: its weights, the
activations of its largest step and its KV cache together stay within ``utilization x total``, whatever other
engines or processes hold. Two engines on one card therefore coexist when their shares add up to at most 1
(e.g. 0.45 each); an engine whose share is no longer free when it starts refuses to start, with a message that
says so, rather than starting with a cache that no request fits.
"""

from __future__ import annotations

import logging

import torch

from rocmforge.engine.checks import cdiv
from rocmforge.engine.config import EngineConfig
from rocmforge.errors import ConfigError
from rocmforge.layers.paged_attention import PagedAttentionMetadata, SequenceSlice
from rocmforge.models.decoder import DecoderModel
from rocmforge.models.kv_cache import PagedKVCache

logger = logging.getLogger(__name__)


def num_kv_blocks_for(
    model: DecoderModel, config: EngineConfig, max_model_len: int, weights_bytes: int | None = None
) -> int:
    """Blocks for the cache: the explicit count, else what the budget holds, capped by what can be used.

    ``weights_bytes``: the GPU memory the model's load took (what this engine holds besides its cache and
    activations); None counts every tensor this process holds on the device as this engine's.

    Raises:
        ConfigError: the budget holds no block (the message says which setting to change).
    """
    if config.num_kv_blocks is not None:
        return config.num_kv_blocks
    per_block = PagedKVCache.bytes_per_block(model.config, config.block_size, model.dtype)
    useful = config.max_num_seqs * cdiv(max_model_len, config.block_size)
    if model.device.type == "cpu":
        budget = config.kv_cache_memory
    else:
        budget = _gpu_kv_budget(model, config, max_model_len, weights_bytes)
    num_blocks = min(budget // per_block, useful)
    if num_blocks == 0:
        setting = "kv_cache_memory" if model.device.type == "cpu" else "gpu_memory_utilization"
        raise ConfigError(f"the KV cache budget of {budget} bytes holds no block of {per_block} bytes: raise {setting}")
    logger.info(
        "KV cache: %d blocks of %d tokens (%.2f GiB), %.1f sequences of the full %d-token context",
        num_blocks,
        config.block_size,
        num_blocks * per_block / 2**30,
        num_blocks / cdiv(max_model_len, config.block_size),
        max_model_len,
    )
    return num_blocks


def gpu_kv_budget_bytes(total: int, free: int, utilization: float, own_bytes: int, activation_peak: int) -> int:
    """The KV cache's bytes in an engine's share of a card: ``utilization x total`` minus what the engine
    already holds (``own_bytes``, its weights) and its activation peak.

    ``free`` is the card's free memory now, with the weights loaded: the share must have been free when the
    engine started (``free + own_bytes``), or other engines and processes hold part of it.

    Raises:
        ConfigError: the share was not free at start, or the weights and activations leave nothing of it.
    """
    share = int(total * utilization)
    if free + own_bytes < share:
        raise ConfigError(
            f"gpu_memory_utilization={utilization} asks for {share / 2**30:.2f} GiB of the GPU's "
            f"{total / 2**30:.2f} GiB, but only {(free + own_bytes) / 2**30:.2f} GiB were free when this engine "
            "started (other engines or processes hold the rest): lower gpu_memory_utilization, or give each "
            "engine on this GPU its own share (their utilizations adding up to at most 1)"
        )
    budget = share - own_bytes - activation_peak
    if budget <= 0:
        raise ConfigError(
            f"gpu_memory_utilization={utilization} ({share / 2**30:.2f} GiB) leaves no room for a KV cache: the "
            f"weights take {own_bytes / 2**30:.2f} GiB and a full-size step's activations "
            f"{activation_peak / 2**30:.2f} GiB; raise gpu_memory_utilization or lower max_num_batched_tokens"
        )
    return budget


@torch.inference_mode()
def _gpu_kv_budget(model: DecoderModel, config: EngineConfig, max_model_len: int, weights_bytes: int | None) -> int:
    """Bytes of this engine's share left for the cache (:func:`gpu_kv_budget_bytes`), with the activation peak
    of a full-size step measured by running one (vLLM's profile run) over a throwaway cache just large enough
    for it."""
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
    own = torch.cuda.memory_allocated(device) if weights_bytes is None else weights_bytes
    return gpu_kv_budget_bytes(total, free, config.gpu_memory_utilization, own, activation_peak)
