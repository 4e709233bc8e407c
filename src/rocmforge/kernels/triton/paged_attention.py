"""Attention over a paged KV cache in one Triton kernel for decodes and prefill chunks alike.

Same contract as :func:`rocmforge.layers.paged_attention.paged_attention` (the CPU path): packed queries
``q [num_tokens, num_heads, head_dim]``, the cache of one layer ``key_cache/value_cache [num_blocks,
block_size, num_kv_heads, head_dim]``, and the step's :class:`PagedAttentionMetadata`. Sequence b's query
token i sits at position ``seq_lens[b] - query_len_b + i`` and sees keys at positions ``p <= position``
(and ``position - p < window`` with a sliding window).

Work split ("unified" attention): one program per (tile of ``BLOCK_Q`` query tokens of one sequence, KV
head). The tile's rows are all (token, query head) pairs of the KV head's group, so a grouped-query
model loads each K/V tile once for the whole group and the score matrix ``[BLOCK_Q * group, TILE_N]``
is one ``tl.dot``. The program walks its sequence's keys ``TILE_N`` at a time through the block table
(keys are gathered per position, so any block size works) with an online softmax in float32, starting
at the first key that any of its rows can see (a sliding window skips every block before it) and
stopping after its last row's position. A decode is the one-token case of the same tile.

Few programs cannot keep the GPU's memory system busy (a decode batch of 64 sequences of a model with 2 KV
heads is 128 programs; the first H200 run read 35-42% of the copy roofline there), so when a launch would
have fewer programs than a few per multiprocessor, each program's keys are split across ``num_splits``
programs (flash-decoding): each writes its unnormalized output, running max and sum to a float32 scratch
buffer, and the last of a tile's split programs to finish (``split_arrival``: a counter per tile and KV head in
``metadata.split_counters``) merges them and resets its counter: no second kernel.

Tiles are numbered without a host sync: sequence b's tiles start at ``query_start_loc[b] // BLOCK_Q + b``
(an upper bound of the tiles before it), so ``num_tokens // BLOCK_Q + batch`` programs cover every
sequence; each program finds its sequence by a binary search over ``query_start_loc`` and exits if its
tile lies past the sequence's queries. A launch of decodes only (every CUDA-graph decode step) skips all of
that: tile b is sequence b. The launch shape comes from host-side sizes only (tensor shapes
and ``metadata.sequences``), never from ``.item()`` on device tensors.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from rocmforge.kernels.triton.split_arrival import last_to_arrive
from rocmforge.layers.paged_attention import PagedAttentionMetadata

__all__ = ["MAX_SPLITS", "SPLIT_BELOW_PROGRAMS", "SPLIT_MIN_KEYS", "TILE_CONFIGS", "paged_attention_triton"]

_LOG2_E = 1.4426950408889634

# (query rows per program, keys per step, num_warps, num_stages), keyed by (rows <= 16 ["decode"] or not,
# head_dim padded to a power of two). Rows = BLOCK_Q tokens x the group's query heads (padded to a power
# of two); "decode" programs hold one token's group, prefill programs up to that many rows.
# Tuned on an H200 with benchmarks/gpu_paged_attention.py --sweep: decode at 64 x 4096 tokens for head dims
# 64/128/256, prefill at 4 x 2048 for 64/128; the 16/32 rows copy 64's and prefill 256 is untuned.
TILE_CONFIGS: dict[tuple[bool, int], tuple[int, int, int, int]] = {
    (True, 16): (16, 128, 4, 2),
    (True, 32): (16, 128, 4, 2),
    (True, 64): (16, 128, 4, 2),
    (True, 128): (16, 64, 4, 2),
    (True, 256): (16, 64, 8, 2),
    (False, 16): (128, 64, 4, 2),
    (False, 32): (128, 64, 4, 2),
    (False, 64): (128, 64, 4, 2),
    (False, 128): (64, 32, 4, 2),
    (False, 256): (32, 32, 8, 2),
}


# Split each program's keys when a launch has fewer programs than this (None: 3 per multiprocessor on a GPU;
# the interpreter, which runs programs one after another, never splits unless this is set). Keys per split at
# least SPLIT_MIN_KEYS: shorter splits spend more on the merge than they gain. Both swept on an H200 over five
# decode batches (benchmarks/gpu_paged_attention.py --sweep): 2 and 3 per SM scored within 5% of each other;
# 4 and 8 per SM also split llama-8b 64 x 1024 (512 programs), costing it 23-27%; never splitting cost the
# batches of 64-128 programs 1.4-2.8x.
SPLIT_BELOW_PROGRAMS: int | None = None
SPLIT_MIN_KEYS = 128
MAX_SPLITS = 16


@functools.cache
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _split_below(device: torch.device) -> int:
    if SPLIT_BELOW_PROGRAMS is not None:
        return SPLIT_BELOW_PROGRAMS
    if device.type != "cuda":
        return 0
    index = device.index if device.index is not None else torch.cuda.current_device()
    return 3 * _multiprocessors(index)


@triton.jit
def _find_sequence(query_start_loc_ptr, tile, num_seqs, search_steps, BLOCK_Q: tl.constexpr):
    """The sequence whose tiles contain ``tile``: the last b with ``query_start_loc[b] // BLOCK_Q + b <= tile``.

    Invariant: the answer lies in [lo, hi). ``search_steps`` = ceil(log2(num_seqs)) halvings leave one
    candidate; extra steps would not move ``lo``.
    """
    lo = tl.full([], 0, tl.int32)
    hi = tl.full([], 0, tl.int32) + num_seqs  # a tensor even when Triton specializes num_seqs == 1
    for _ in range(search_steps):
        mid = (lo + hi) // 2
        first_tile = tl.load(query_start_loc_ptr + mid) // BLOCK_Q + mid
        right = first_tile <= tile
        lo = tl.where(right, mid, lo)
        hi = tl.where(right, hi, mid)
    return lo


@triton.jit
def _paged_attention_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    out_ptr,
    query_start_loc_ptr,
    seq_lens_ptr,
    block_tables_ptr,
    part_acc_ptr,
    part_max_ptr,
    part_sum_ptr,
    counter_ptr,
    num_seqs,
    search_steps,
    num_tokens,
    num_splits,
    scale_log2,
    window,
    stride_qt,
    stride_qh,
    stride_qd,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_kd,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_vd,
    stride_ot,
    stride_oh,
    stride_table,
    GROUP: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    HEAD_DIM_PAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr,
    TILE_N: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
    SPLIT: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
    DECODE_ONLY: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    tile = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    if DECODE_ONLY:
        # One query token per sequence (every CUDA-graph decode step): tile b is sequence b's token b. No
        # search and no query_start_loc loads: two fewer dependent memory round trips before the keys.
        seq = tile
        q_begin = tile
        q_len = 1
        first_q = 0
    else:
        seq = _find_sequence(query_start_loc_ptr, tile, num_seqs, search_steps, BLOCK_Q)
        q_begin = tl.load(query_start_loc_ptr + seq)
        q_len = tl.load(query_start_loc_ptr + seq + 1) - q_begin
        first_q = (tile - (q_begin // BLOCK_Q + seq)) * BLOCK_Q  # this tile's first query, counted in its sequence
        if first_q >= q_len:
            return  # one of the spare tiles of the upper-bound numbering
    seq_len = tl.load(seq_lens_ptr + seq)
    context = seq_len - q_len  # keys cached before this step's queries

    # Row r is query token first_q + r // GROUP_PAD, head kv_head * GROUP + r % GROUP_PAD of the group.
    rows = tl.arange(0, BLOCK_M)
    q_local = first_q + rows // GROUP_PAD
    head_in_group = rows % GROUP_PAD
    row_valid = (q_local < q_len) & (head_in_group < GROUP)
    head = kv_head * GROUP + head_in_group
    token = (q_begin + q_local).to(tl.int64)
    q_pos = context + q_local
    dims = tl.arange(0, HEAD_DIM_PAD)
    dim_valid = dims < HEAD_DIM

    q_ptrs = q_ptr + token[:, None] * stride_qt + head[:, None] * stride_qh + dims[None, :] * stride_qd
    q = tl.load(q_ptrs, mask=row_valid[:, None] & dim_valid[None, :], other=0.0)
    q = q.to(k_cache_ptr.dtype.element_ty)  # dot operands share one type; the cache's is what streams

    # Keys this tile needs: up to its last query's position; with a window, from the first key its first
    # query can see. Steps start on a TILE_N boundary so each step's keys stay within whole blocks.
    kv_end = context + tl.minimum(first_q + BLOCK_Q, q_len)
    kv_lo = 0
    if HAS_WINDOW:
        kv_lo = tl.maximum(context + first_q - window + 1, 0)
    kv_start = kv_lo // TILE_N * TILE_N
    kv_stop = kv_end
    if SPLIT:
        # Whole steps per split; trailing splits of a short range get none and leave an empty partial.
        per_split = tl.cdiv(tl.cdiv(kv_end - kv_start, TILE_N), num_splits) * TILE_N
        kv_start += split * per_split
        kv_stop = tl.minimum(kv_end, kv_start + per_split)

    table = block_tables_ptr + seq.to(tl.int64) * stride_table
    k_base = k_cache_ptr + kv_head * stride_kh
    v_base = v_cache_ptr + kv_head * stride_vh
    offs_n = tl.arange(0, TILE_N)

    # Running max (log2 units), sum and unnormalized output per row. A finite initial max keeps rows
    # whose keys are all masked in a step NaN-free: exp2(-inf - m) = 0 and the rescale factor stays 1.
    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM_PAD], tl.float32)
    for start in range(kv_start, kv_stop, TILE_N):
        k_pos = start + offs_n
        # Keys outside [kv_lo, kv_end) are never loaded: slots past seq_len may hold anything (even NaN,
        # and 0 * NaN would poison P @ V), and blocks before the window need not be resident at all.
        k_valid = (k_pos >= kv_lo) & (k_pos < kv_end)
        block = tl.load(table + k_pos // BLOCK_SIZE, mask=k_valid, other=0).to(tl.int64)
        slot = k_pos % BLOCK_SIZE
        k_ptrs = k_base + block[None, :] * stride_kb + slot[None, :] * stride_kt + dims[:, None] * stride_kd
        k = tl.load(k_ptrs, mask=dim_valid[:, None] & k_valid[None, :], other=0.0)  # [HEAD_DIM_PAD, TILE_N]
        v_ptrs = v_base + block[:, None] * stride_vb + slot[:, None] * stride_vt + dims[None, :] * stride_vd
        v = tl.load(v_ptrs, mask=k_valid[:, None] & dim_valid[None, :], other=0.0)  # [TILE_N, HEAD_DIM_PAD]

        s = tl.dot(q, k, input_precision=DOT_PRECISION) * scale_log2
        visible = (k_pos[None, :] <= q_pos[:, None]) & k_valid[None, :]
        if HAS_WINDOW:
            visible &= (q_pos[:, None] - k_pos[None, :]) < window
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    if SPLIT:
        # Partials of (split, token, head) rows; the tile's last split program to finish merges them.
        row_part = token * (tl.num_programs(1) * GROUP) + head
        part = split * num_tokens * (tl.num_programs(1) * GROUP) + row_part
        tl.store(part_max_ptr + part, m_i, mask=row_valid)
        tl.store(part_sum_ptr + part, l_i, mask=row_valid)
        part_ptrs = part_acc_ptr + part[:, None] * HEAD_DIM_PAD + dims[None, :]
        tl.store(part_ptrs, acc, mask=row_valid[:, None])
        counter = counter_ptr + tile * tl.num_programs(1) + kv_head
        if last_to_arrive(counter, num_splits):
            gap = num_tokens * (tl.num_programs(1) * GROUP)  # between splits' partials
            out = _merge_splits(
                part_acc_ptr, part_max_ptr, part_sum_ptr, row_part, row_valid, num_splits, gap, HEAD_DIM_PAD, SPLITS_PAD
            )
            out_ptrs = out_ptr + token[:, None] * stride_ot + head[:, None] * stride_oh + dims[None, :]
            tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=row_valid[:, None] & dim_valid[None, :])
            tl.store(counter, 0)  # ready for the next layer's launch
    else:
        # Every real row sees at least its own key, so l_i > 0 there; padding rows are not stored.
        out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
        out_ptrs = out_ptr + token[:, None] * stride_ot + head[:, None] * stride_oh + dims[None, :]
        tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=row_valid[:, None] & dim_valid[None, :])


@triton.jit
def _merge_splits(
    part_acc_ptr,
    part_max_ptr,
    part_sum_ptr,
    row_part,
    row_valid,
    num_splits,
    split_stride,
    HEAD_DIM_PAD: tl.constexpr,
    SPLITS_PAD: tl.constexpr,
):
    """The rows' attention output from the splits' partials: sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s.

    Loads go through L2 (.cg), where the other programs' partials are, and the split loop is unrolled so that
    they leave together. Empty splits hold (max -1e30, sum 0, acc 0): weight 0 next to any split that saw a key.
    """
    splits = tl.arange(0, SPLITS_PAD)
    dims = tl.arange(0, HEAD_DIM_PAD)
    in_split = (splits[:, None] < num_splits) & row_valid[None, :]
    maxes = tl.load(
        part_max_ptr + splits[:, None] * split_stride + row_part[None, :],
        mask=in_split,
        other=-1.0e30,
        cache_modifier=".cg",
    )
    top = tl.max(maxes, axis=0)  # [BLOCK_M]
    total = tl.zeros_like(top)
    acc = tl.zeros([row_part.shape[0], HEAD_DIM_PAD], tl.float32)
    for s in tl.static_range(SPLITS_PAD):
        valid = row_valid & (tl.full(row_part.shape, s, tl.int32) < num_splits)
        part = s * split_stride + row_part
        m_s = tl.load(part_max_ptr + part, mask=valid, other=-1.0e30, cache_modifier=".cg")
        weight = tl.exp2(m_s - top)
        total += weight * tl.load(part_sum_ptr + part, mask=valid, other=0.0, cache_modifier=".cg")
        acc_ptrs = part_acc_ptr + part[:, None] * HEAD_DIM_PAD + dims[None, :]
        acc += weight[:, None] * tl.load(acc_ptrs, mask=valid[:, None], other=0.0, cache_modifier=".cg")
    # Padding rows (never stored) have total 0: divide by 1 there.
    return acc / tl.where(total > 0.0, total, 1.0)[:, None]


_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    metadata: PagedAttentionMetadata,
    window: int | None,
) -> None:
    if q.dim() != 3 or key_cache.dim() != 4 or value_cache.dim() != 4:
        raise ValueError(
            "paged_attention_triton: expected q [tokens, heads, dim] and caches [blocks, block_size, kv_heads, dim], "
            f"got {tuple(q.shape)}, {tuple(key_cache.shape)}, {tuple(value_cache.shape)}"
        )
    num_tokens, num_heads, head_dim = q.shape
    _, block_size, num_kv_heads, k_dim = key_cache.shape
    if value_cache.shape[:3] != key_cache.shape[:3]:
        raise ValueError(
            f"paged_attention_triton: value cache {tuple(value_cache.shape)} does not match key cache "
            f"{tuple(key_cache.shape)}"
        )
    if k_dim != head_dim:
        raise ValueError(f"paged_attention_triton: q head_dim {head_dim} != key cache head_dim {k_dim}")
    if value_cache.shape[3] != head_dim:
        raise ValueError(
            f"paged_attention_triton: v_head_dim {value_cache.shape[3]} != head_dim {head_dim} is not supported"
        )
    if num_heads % num_kv_heads:
        raise ValueError(f"paged_attention_triton: {num_heads} query heads are not a multiple of {num_kv_heads}")
    if q.dtype not in _DTYPES or key_cache.dtype not in _DTYPES:
        raise ValueError(
            f"paged_attention_triton: q and cache must be float32/float16/bfloat16, got {q.dtype}, {key_cache.dtype}"
        )
    if value_cache.dtype != key_cache.dtype:
        raise ValueError(f"paged_attention_triton: key cache {key_cache.dtype} != value cache {value_cache.dtype}")
    if block_size != metadata.block_size:
        raise ValueError(
            f"paged_attention_triton: cache block size {block_size} != metadata block size {metadata.block_size}"
        )
    if num_tokens != metadata.num_tokens:
        raise ValueError(f"paged_attention_triton: q has {num_tokens} tokens, metadata {metadata.num_tokens}")
    devices = {q.device, key_cache.device, value_cache.device, metadata.query_start_loc.device}
    if len(devices) != 1:
        raise ValueError(f"paged_attention_triton: tensors on several devices: {sorted(map(str, devices))}")
    if window is not None and window < 1:
        raise ValueError(f"paged_attention_triton: window must be None or >= 1, got {window}")


def paged_attention_triton(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    metadata: PagedAttentionMetadata,
    window: int | None,
    scale: float,
) -> torch.Tensor:
    """q [num_tokens, num_heads, head_dim] -> [num_tokens, num_heads * head_dim] in q's dtype.

    Same semantics as the CPU :func:`~rocmforge.layers.paged_attention.paged_attention`: softmax and
    accumulation in float32 (P is rounded to the cache's dtype for the P @ V product, as in every
    flash-attention kernel), grouped-query heads ``h -> h // (num_heads // num_kv_heads)``, optional
    sliding ``window``. All tensors on the kernel device (the GPU, or the CPU under ``TRITON_INTERPRET=1``);
    ``metadata`` built for that device.

    Raises:
        ValueError: shapes, dtypes or devices do not fit, or ``v_head_dim != head_dim``.
    """
    _check(q, key_cache, value_cache, metadata, window)
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = key_cache.shape[2]
    out = torch.empty(num_tokens, num_heads * head_dim, dtype=q.dtype, device=q.device)
    num_seqs = len(metadata.sequences)
    if num_tokens == 0 or num_seqs == 0:
        return out

    group = num_heads // num_kv_heads
    group_pad = triton.next_power_of_2(group)
    head_dim_pad = max(16, triton.next_power_of_2(head_dim))  # tl.dot needs K >= 16
    max_query_len = max(seq.query_len for seq in metadata.sequences)
    decode = max_query_len * group_pad <= 16
    target_rows, tile_n, num_warps, num_stages = TILE_CONFIGS[(decode, head_dim_pad)]
    block_q = min(triton.next_power_of_2(max_query_len), max(1, target_rows // group_pad))
    block_m = max(16, block_q * group_pad)  # tl.dot needs M >= 16
    fp32 = key_cache.dtype == torch.float32
    if fp32:
        # Twice the bytes per tile: halve the keys per step to stay within shared memory.
        tile_n, num_stages = max(16, tile_n // 2), min(num_stages, 2)

    num_splits = _num_splits(metadata, block_q, num_kv_heads, window, q.device)
    decode_only = max_query_len == 1
    # Decodes only: one tile per sequence. Otherwise an upper bound on the tiles (see the module doc).
    grid = (num_seqs if decode_only else num_tokens // block_q + num_seqs, num_kv_heads, num_splits)
    if grid[0] * num_kv_heads > metadata.split_counters.numel():
        # More programs than counters: only with SPLIT_BELOW_PROGRAMS raised far past a few per SM. Unsplit.
        num_splits = 1
        grid = (grid[0], grid[1], 1)
    if num_splits > 1:
        part_acc = torch.empty(num_splits, num_tokens, num_heads, head_dim_pad, dtype=torch.float32, device=q.device)
        part_max = torch.empty(num_splits, num_tokens, num_heads, dtype=torch.float32, device=q.device)
        part_sum = torch.empty_like(part_max)
    else:
        part_acc = part_max = part_sum = out  # not touched without SPLIT

    _paged_attention_kernel[grid](
        q,
        key_cache,
        value_cache,
        out,
        metadata.query_start_loc,
        metadata.seq_lens,
        metadata.block_tables,
        part_acc,
        part_max,
        part_sum,
        metadata.split_counters,
        num_seqs,
        (num_seqs - 1).bit_length(),
        num_tokens,
        num_splits,
        scale * _LOG2_E,
        window if window is not None else 0,
        *q.stride(),
        *key_cache.stride(),
        *value_cache.stride(),
        out.stride(0),
        head_dim,
        metadata.block_tables.stride(0),
        GROUP=group,
        GROUP_PAD=group_pad,
        HEAD_DIM=head_dim,
        HEAD_DIM_PAD=head_dim_pad,
        BLOCK_SIZE=key_cache.shape[1],
        BLOCK_Q=block_q,
        BLOCK_M=block_m,
        TILE_N=tile_n,
        HAS_WINDOW=window is not None,
        SPLIT=num_splits > 1,
        SPLITS_PAD=triton.next_power_of_2(num_splits),
        DECODE_ONLY=decode_only,
        # A float32 dot would otherwise run in TF32 (10-bit mantissa) on NVIDIA tensor cores; half types
        # take the backend's default (the option only concerns float32 operands).
        DOT_PRECISION="ieee" if fp32 else None,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    return out


def _num_splits(
    metadata: PagedAttentionMetadata, block_q: int, num_kv_heads: int, window: int | None, device: torch.device
) -> int:
    """How many programs share each tile's keys: 1 unless the launch has too few programs for the device."""
    programs = sum(-(-seq.query_len // block_q) for seq in metadata.sequences) * num_kv_heads
    below = _split_below(device)
    if programs >= below:
        return 1
    # Keys the busiest tile reads: a window bounds it by window + query tile - 1.
    longest = max(
        seq.seq_len if window is None else min(seq.seq_len, window + min(seq.query_len, block_q) - 1)
        for seq in metadata.sequences
    )
    return max(1, min(-(-below // programs), longest // SPLIT_MIN_KEYS, MAX_SPLITS))
