"""Attention over a paged KV cache for a batch of sequences, each with any number of new query tokens.

Cache layout, per layer: key_cache [num_blocks, block_size, num_kv_heads, head_dim] and value_cache
[num_blocks, block_size, num_kv_heads, v_head_dim]. A token's flat slot is block_id * block_size + offset.

The step's new tokens are packed: q [num_tokens, num_heads, head_dim] holds sequence 0's query tokens, then
sequence 1's, ... (``query_start_loc`` marks the boundaries). Sequence b's KV length after this step is
``seq_lens[b]``, so its i-th query token sits at position seq_lens[b] - query_len_b + i and attends to keys at
positions 0..itself (within the layer's sliding window, if any). One rule covers prefill chunks, prefix-cache
hits and decodes; the Triton kernel implements the same contract on the GPU.

This module is the CPU path: each sequence's attention runs on its own (a decode as one SDPA call over exactly
its keys, a prefill chunk with a causal mask), so no sequence's result depends on what else is in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from rocmforge.layers.attention import attention_mask, reference_attention


@dataclass(frozen=True)
class SequenceSlice:
    """One sequence's share of a step: its query tokens' range in the packed batch and its KV layout."""

    query_start: int
    query_len: int
    seq_len: int
    block_table: tuple[int, ...]


@dataclass
class _PrefillPlan:
    query_rows: slice
    key_slots: torch.Tensor | slice  # flat cache slots of keys 0..seq_len-1 (a slice when the blocks are adjacent)
    masks: dict[int | None, torch.Tensor]  # per sliding window: [query_len, seq_len]


@dataclass
class _DecodePlan:
    query_row: int  # the decode token's row in the packed batch
    key_slots: torch.Tensor | slice  # flat cache slots of keys 0..seq_len-1 (a slice when the blocks are adjacent)
    seq_len: int


@dataclass
class PagedAttentionMetadata:
    """Everything a step's attention needs, built once per step and shared by every layer.

    Device tensors (``slot_mapping``, ``query_start_loc``, ``seq_lens``, ``block_tables``) serve the GPU
    kernels; the plans are the CPU path's precomputed gathers and masks.
    """

    block_size: int
    sequences: tuple[SequenceSlice, ...]
    slot_mapping: torch.Tensor  # [num_tokens] int64: where each new token's K/V is written
    query_start_loc: torch.Tensor  # [batch + 1] int32
    seq_lens: torch.Tensor  # [batch] int32
    block_tables: torch.Tensor  # [batch, max_blocks] int32, padded with 0
    # int32 arrival counters of the GPU kernel's split programs (one per query tile and KV head; zero between
    # launches, each launch's last programs reset theirs): shared by the step's layers, which run one by one.
    split_counters: torch.Tensor
    _prefills: list[_PrefillPlan] = field(default_factory=list)
    _decodes: list[_DecodePlan] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return int(self.slot_mapping.shape[0])

    @classmethod
    def build(
        cls,
        sequences: Sequence[SequenceSlice],
        block_size: int,
        windows: Sequence[int | None],
        device: torch.device,
    ) -> PagedAttentionMetadata:
        """Metadata for packed sequences; ``windows`` lists the distinct sliding windows of the model's layers."""
        slots: list[int] = []
        for seq in sequences:
            first = seq.seq_len - seq.query_len
            table = seq.block_table
            slots.extend(table[p // block_size] * block_size + p % block_size for p in range(first, seq.seq_len))
        max_blocks = max((len(seq.block_table) for seq in sequences), default=0)
        tables = [list(seq.block_table) + [0] * (max_blocks - len(seq.block_table)) for seq in sequences]
        starts = [seq.query_start for seq in sequences] + [sum(seq.query_len for seq in sequences)]
        metadata = cls(
            block_size=block_size,
            sequences=tuple(sequences),
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=device),
            query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
            seq_lens=torch.tensor([seq.seq_len for seq in sequences], dtype=torch.int32, device=device),
            block_tables=torch.tensor(tables, dtype=torch.int32, device=device).reshape(len(sequences), max_blocks),
            split_counters=new_split_counters(device),
        )
        if device.type == "cpu":
            metadata._plan_cpu(set(windows))
        return metadata

    def _plan_cpu(self, windows: set[int | None]) -> None:
        for seq in self.sequences:
            key_slots = _key_slots(seq, self.block_size)
            if seq.query_len == 1:
                self._decodes.append(_DecodePlan(seq.query_start, key_slots, seq.seq_len))
                continue
            positions = torch.arange(seq.seq_len - seq.query_len, seq.seq_len)
            key_positions = torch.arange(seq.seq_len)
            self._prefills.append(
                _PrefillPlan(
                    query_rows=slice(seq.query_start, seq.query_start + seq.query_len),
                    key_slots=key_slots,
                    masks={window: attention_mask(positions, key_positions, window) for window in windows},
                )
            )


# Split counters per metadata: the kernel splits only launches of fewer programs than a few per multiprocessor,
# far fewer than this.
SPLIT_COUNTERS = 4096


def new_split_counters(device: torch.device) -> torch.Tensor:
    """Zeroed arrival counters for a step's split attention launches on ``device``."""
    return torch.zeros(SPLIT_COUNTERS, dtype=torch.int32, device=device)


def _key_slots(seq: SequenceSlice, block_size: int) -> torch.Tensor | slice:
    """Flat slots of keys 0..seq_len-1: a slice (a view, no copy) when its blocks are adjacent and ascending."""
    num_blocks = -(-seq.seq_len // block_size)
    table = seq.block_table[:num_blocks]
    if all(table[i + 1] == table[i] + 1 for i in range(len(table) - 1)):
        start = table[0] * block_size
        return slice(start, start + seq.seq_len)
    blocks = torch.tensor(table, dtype=torch.long)
    return (blocks[:, None] * block_size + torch.arange(block_size)[None, :]).reshape(-1)[: seq.seq_len]


def store_kv(
    key_cache: torch.Tensor, value_cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor, slots: torch.Tensor
) -> None:
    """Write the step's new K/V [num_tokens, num_kv_heads, dim] into their flat cache slots."""
    key_cache.view(-1, *key_cache.shape[2:]).index_copy_(0, slots, key.to(key_cache.dtype))
    value_cache.view(-1, *value_cache.shape[2:]).index_copy_(0, slots, value.to(value_cache.dtype))


def paged_attention(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    metadata: PagedAttentionMetadata,
    window: int | None,
    scale: float,
) -> torch.Tensor:
    """q [num_tokens, num_heads, head_dim] -> [num_tokens, num_heads * v_head_dim], softmax in float32.

    On a GPU this is the Triton kernel (same contract); this module's torch code is the CPU path.
    """
    if q.device.type != "cpu":
        from rocmforge.kernels.triton.paged_attention import paged_attention_triton  # needs triton: GPU only

        return paged_attention_triton(q, key_cache, value_cache, metadata, window, scale)
    num_tokens, num_heads, _ = q.shape
    num_kv_heads, v_dim = value_cache.shape[2], value_cache.shape[3]
    keys = key_cache.view(-1, num_kv_heads, key_cache.shape[3])
    values = value_cache.view(-1, num_kv_heads, v_dim)
    out = torch.empty(num_tokens, num_heads * v_dim, dtype=q.dtype, device=q.device)
    for plan in metadata._prefills:
        out[plan.query_rows] = reference_attention(
            q[plan.query_rows], keys[plan.key_slots], values[plan.key_slots], plan.masks[window], scale
        )
    for plan in metadata._decodes:
        row = slice(plan.query_row, plan.query_row + 1)
        out[row] = _decode_attention(q[row], keys, values, plan, window, scale)
    return out


def _decode_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    plan: _DecodePlan,
    window: int | None,
    scale: float,
) -> torch.Tensor:
    """One decode token over exactly the keys it may see: q [1, H, D] -> [1, H * Dv].

    One SDPA call per sequence, over its own keys and no padding: a batched call over keys padded to the
    longest sequence reduces in an order that depends on the padding, so a request's logits (and with them a
    seeded draw) would change with its batch mates. Per sequence, they cannot. The query heads that share a
    KV head become that head's query rows, so grouped-query attention needs no copy of K/V, and with no mask
    SDPA takes its fused CPU kernel.
    """
    first = 0 if window is None else max(0, plan.seq_len - window)
    slots = plan.key_slots
    if isinstance(slots, slice):
        slots = slice(slots.start + first, slots.stop)
    elif first:
        slots = slots[first:]
    k, v = keys[slots], values[slots]  # [S, KVH, D]
    num_heads, head_dim = q.shape[1], q.shape[2]
    num_kv_heads = k.shape[1]
    out = F.scaled_dot_product_attention(
        q.reshape(1, num_kv_heads, num_heads // num_kv_heads, head_dim).float(),
        k.transpose(0, 1).unsqueeze(0).float(),
        v.transpose(0, 1).unsqueeze(0).float(),
        scale=scale,
    )
    return out.reshape(1, num_heads * v.shape[2]).to(q.dtype)
