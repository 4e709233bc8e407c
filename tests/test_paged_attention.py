"""The CPU paged attention against a plain per-token loop over contiguous K/V, on shuffled block tables."""

from __future__ import annotations

import random

import pytest
import torch

from rocmforge.layers.attention import attention_mask, reference_attention
from rocmforge.layers.paged_attention import PagedAttentionMetadata, SequenceSlice, paged_attention, store_kv

BLOCK_SIZE = 4


def _naive(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, first: int, window: int | None) -> torch.Tensor:
    """Each query token alone over the contiguous keys it may see."""
    rows = []
    for i in range(q.shape[0]):
        position = first + i
        mask = attention_mask(torch.tensor([position]), torch.arange(keys.shape[0]), window)
        rows.append(reference_attention(q[i : i + 1], keys, values, mask, 0.125))
    return torch.cat(rows)


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("num_heads, num_kv_heads", [(4, 4), (6, 2)])
@pytest.mark.parametrize("seed", range(3))
def test_paged_attention_matches_per_token_reference(
    window: int | None, num_heads: int, num_kv_heads: int, seed: int
) -> None:
    rng = random.Random(seed)
    torch.manual_seed(seed)
    head_dim, v_dim, num_blocks = 8, 6, 64
    # Decodes, prefills from scratch and prefill chunks after a cached prefix, in a random order.
    shapes = [(1, rng.randint(1, 20)) for _ in range(3)] + [(n, n) for n in (1, 7)] + [(3, 11), (9, 9)]
    rng.shuffle(shapes)
    free_blocks = list(range(num_blocks))
    rng.shuffle(free_blocks)
    key_cache = torch.zeros(num_blocks, BLOCK_SIZE, num_kv_heads, head_dim)
    value_cache = torch.zeros(num_blocks, BLOCK_SIZE, num_kv_heads, v_dim)
    sequences, contexts, queries = [], [], []
    start = 0
    for query_len, seq_len in shapes:
        table = tuple(free_blocks.pop() for _ in range(-(-seq_len // BLOCK_SIZE)))
        keys, values = torch.randn(seq_len, num_kv_heads, head_dim), torch.randn(seq_len, num_kv_heads, v_dim)
        cached = seq_len - query_len
        # The cached prefix is already in the cache; the new tokens' K/V go through store_kv below.
        prefix = SequenceSlice(0, cached, cached, table)
        if cached:
            meta = PagedAttentionMetadata.build([prefix], BLOCK_SIZE, [window], torch.device("cpu"))
            store_kv(key_cache, value_cache, keys[:cached], values[:cached], meta.slot_mapping)
        sequences.append(SequenceSlice(start, query_len, seq_len, table))
        contexts.append((keys, values))
        queries.append(torch.randn(query_len, num_heads, head_dim))
        start += query_len
    metadata = PagedAttentionMetadata.build(sequences, BLOCK_SIZE, [window], torch.device("cpu"))
    new_keys = torch.cat([k[s.seq_len - s.query_len :] for (k, _), s in zip(contexts, sequences, strict=True)])
    new_values = torch.cat([v[s.seq_len - s.query_len :] for (_, v), s in zip(contexts, sequences, strict=True)])
    store_kv(key_cache, value_cache, new_keys, new_values, metadata.slot_mapping)

    out = paged_attention(torch.cat(queries), key_cache, value_cache, metadata, window, 0.125)

    for seq, (keys, values), q in zip(sequences, contexts, queries, strict=True):
        expected = _naive(q, keys, values, seq.seq_len - seq.query_len, window)
        got = out[seq.query_start : seq.query_start + seq.query_len]
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_metadata_tensors_describe_the_batch() -> None:
    sequences = [SequenceSlice(0, 3, 5, (7, 2)), SequenceSlice(3, 1, 9, (4, 0, 6))]
    meta = PagedAttentionMetadata.build(sequences, BLOCK_SIZE, [None], torch.device("cpu"))
    # positions 2, 3, 4 of the first (block 7 slots 2, 3; block 2 slot 0) and position 8 of the second (block 6).
    assert meta.slot_mapping.tolist() == [7 * 4 + 2, 7 * 4 + 3, 2 * 4 + 0, 6 * 4 + 0]
    assert meta.query_start_loc.tolist() == [0, 3, 4]
    assert meta.seq_lens.tolist() == [5, 9]
    assert meta.block_tables.tolist() == [[7, 2, 0], [4, 0, 6]]
