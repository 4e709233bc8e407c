"""The paged KV cache's storage: per layer, K and V blocks of ``block_size`` token slots."""

from __future__ import annotations

import torch

from rocmforge.config import ModelConfig


class PagedKVCache:
    """Per-layer key/value tensors [num_blocks, block_size, num_kv_heads, dim] (see layers/paged_attention.py).

    A single sequence's contiguous cache is the special case of one block holding the whole sequence.
    """

    def __init__(
        self, config: ModelConfig, num_blocks: int, block_size: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        shape_k = (num_blocks, block_size, config.num_kv_heads, config.head_dim)
        shape_v = (num_blocks, block_size, config.num_kv_heads, config.v_head_dim)
        self.key_caches = [torch.zeros(shape_k, dtype=dtype, device=device) for _ in range(config.num_layers)]
        self.value_caches = [torch.zeros(shape_v, dtype=dtype, device=device) for _ in range(config.num_layers)]
        self.num_blocks = num_blocks
        self.block_size = block_size

    @staticmethod
    def bytes_per_block(config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
        """Bytes one block takes over all layers: what sizes the cache from a memory budget."""
        per_token = config.num_kv_heads * (config.head_dim + config.v_head_dim) * dtype.itemsize
        return per_token * block_size * config.num_layers

    @property
    def max_len(self) -> int:
        return self.num_blocks * self.block_size

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copy whole blocks (source, destination) in every layer: the partial block a forked sample inherits."""
        if not pairs:
            return
        sources = torch.tensor([src for src, _ in pairs], device=self.key_caches[0].device)
        destinations = torch.tensor([dst for _, dst in pairs], device=self.key_caches[0].device)
        for cache in (*self.key_caches, *self.value_caches):
            cache[destinations] = cache[sources]

    def release(self) -> None:
        """Drop the tensors so that their (device) memory is freed now, not when the last reference goes."""
        self.key_caches.clear()
        self.value_caches.clear()
