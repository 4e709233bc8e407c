"""The Triton paged attention kernel against the CPU ``paged_attention`` (itself checked against a per-token loop).

Without a GPU these run on the CPU through ``TRITON_INTERPRET=1`` in float32 at small shapes (sequences of up
to a few hundred tokens, so that every program takes several key steps and prefill chunks span several query
tiles); tests marked ``gpu`` run model-sized batches in bf16 on a CUDA/ROCm device against the CPU function
in float32 on the same bf16-rounded inputs.

Every batch mixes decodes, prefills from scratch and prefill chunks after a cached prefix, with block tables
drawn from a shuffled free list, so neighbouring keys live in unrelated blocks.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest
import torch

from rocmforge.kernels.triton import paged_attention as kernels
from rocmforge.kernels.triton.paged_attention import paged_attention_triton
from rocmforge.layers.paged_attention import PagedAttentionMetadata, SequenceSlice, paged_attention, store_kv

CPU = torch.device("cpu")

# (query_len, seq_len) of a decode, a prefill from scratch, and a prefill chunk after a cached prefix.
Shape = tuple[int, int]


@dataclass
class Batch:
    q: torch.Tensor  # [num_tokens, num_heads, head_dim] float32
    key_cache: torch.Tensor  # float32, every slot that no sequence owns holds NaN
    value_cache: torch.Tensor
    sequences: list[SequenceSlice]


def make_batch(
    shapes: list[Shape],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    seed: int,
    q_std: float = 1.0,
) -> Batch:
    """Random K/V for every sequence, written through ``store_kv`` into blocks from a shuffled free list.

    Slots that no sequence owns (the rest of each last block, the spare blocks) stay NaN: a kernel that
    reads a key it must not see fails loudly instead of being diluted by a zero.
    """
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    num_blocks = sum(-(-seq_len // block_size) for _, seq_len in shapes) + 3
    free = list(range(num_blocks))
    rng.shuffle(free)
    key_cache = torch.full((num_blocks, block_size, num_kv_heads, head_dim), float("nan"))
    value_cache = torch.full_like(key_cache, float("nan"))
    sequences: list[SequenceSlice] = []
    start = 0
    for query_len, seq_len in shapes:
        table = tuple(free.pop() for _ in range(-(-seq_len // block_size)))
        whole = SequenceSlice(0, seq_len, seq_len, table)  # all positions, to write the whole context
        slots = PagedAttentionMetadata.build([whole], block_size, [None], CPU).slot_mapping
        keys = torch.randn(seq_len, num_kv_heads, head_dim, generator=gen)
        values = torch.randn(seq_len, num_kv_heads, head_dim, generator=gen)
        store_kv(key_cache, value_cache, keys, values, slots)
        sequences.append(SequenceSlice(start, query_len, seq_len, table))
        start += query_len
    q = q_std * torch.randn(start, num_heads, head_dim, generator=gen)
    return Batch(q, key_cache, value_cache, sequences)


def reference(batch: Batch, window: int | None, scale: float) -> torch.Tensor:
    """The CPU function in float32. Its decode path gathers padded slots (masked, but 0 * NaN = NaN): no NaN."""
    metadata = PagedAttentionMetadata.build(batch.sequences, batch.key_cache.shape[1], [window], CPU)
    keys, values = batch.key_cache.nan_to_num(0.0), batch.value_cache.nan_to_num(0.0)
    return paged_attention(batch.q.float(), keys.float(), values.float(), metadata, window, scale)


def run_kernel(
    batch: Batch, window: int | None, scale: float, device: torch.device, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    metadata = PagedAttentionMetadata.build(batch.sequences, batch.key_cache.shape[1], [window], device)
    q, k, v = (t.to(device=device, dtype=dtype) for t in (batch.q, batch.key_cache, batch.value_cache))
    return paged_attention_triton(q, k, v, metadata, window, scale)


def mixed_shapes(rng: random.Random, max_len: int) -> list[Shape]:
    """Decodes, a prefill from scratch, chunks after a prefix (one spanning several query tiles), shuffled."""
    shapes = [(1, rng.randint(1, max_len)) for _ in range(3)] + [(1, 1)]
    shapes += [(n, n) for n in (rng.randint(2, 40), 1)]
    shapes += [(rng.randint(2, 12), rng.randint(40, max_len)), (70, max_len)]
    rng.shuffle(shapes)
    return shapes


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 2e-5, atol: float = 2e-5) -> None:
    assert actual.shape == expected.shape
    assert not actual.isnan().any(), "NaN in the kernel's output"
    torch.testing.assert_close(actual.cpu().float(), expected, rtol=rtol, atol=atol)


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else CPU


@pytest.fixture
def force_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Split every launch's keys (flash-decoding), one split per 32 keys of the longest sequence."""
    monkeypatch.setattr(kernels, "SPLIT_BELOW_PROGRAMS", 10**9)
    monkeypatch.setattr(kernels, "SPLIT_MIN_KEYS", 32)


# ---- small shapes, float32: through the interpreter on CPU, compiled on a GPU ------------------------------------


@pytest.mark.parametrize(
    ("num_heads", "num_kv_heads", "head_dim", "block_size", "window"),
    [
        (4, 4, 64, 16, None),  # no grouping
        (8, 2, 64, 16, 7),  # group 4, window shorter than a block
        (6, 2, 128, 16, None),  # group 3: padded group rows
        (8, 1, 64, 32, 40),  # group 8, bigger blocks, window over several key steps
        (14, 2, 64, 16, None),  # qwen2.5-0.5b's grouping (7)
        (2, 1, 80, 16, 5),  # head_dim not a power of two: padded dims
    ],
)
@pytest.mark.parametrize("seed", range(2))
def test_mixed_batch_matches_cpu(
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    window: int | None,
    seed: int,
    device: torch.device,
) -> None:
    rng = random.Random(seed)
    batch = make_batch(mixed_shapes(rng, 150), num_heads, num_kv_heads, head_dim, block_size, seed, q_std=2.0)
    scale = 1.0 / math.sqrt(head_dim)
    out = run_kernel(batch, window, scale, device)
    assert out.dtype == torch.float32 and out.shape == (batch.q.shape[0], num_heads * head_dim)
    assert_matches(out, reference(batch, window, scale))


@pytest.mark.parametrize("window", [None, 9])
def test_decode_only_batch(window: int | None, device: torch.device) -> None:
    # Decode-only batches take the one-token tiles (BLOCK_Q = 1, half of the programs exit at once).
    rng = random.Random(5)
    shapes = [(1, rng.randint(1, 200)) for _ in range(7)]
    batch = make_batch(shapes, 8, 2, 64, 16, seed=5, q_std=2.0)
    assert_matches(run_kernel(batch, window, 0.125, device), reference(batch, window, 0.125))


@pytest.mark.usefixtures("force_splits")
@pytest.mark.parametrize(("num_heads", "num_kv_heads", "window"), [(8, 2, None), (6, 2, 100), (4, 1, 130)])
@pytest.mark.parametrize("kind", ["decode", "mixed"])
def test_split_keys_match_cpu(
    num_heads: int, num_kv_heads: int, window: int | None, kind: str, device: torch.device
) -> None:
    # Split programs and their merge: short sequences leave trailing splits empty, long ones fill them all.
    rng = random.Random(num_heads + len(kind))
    shapes = [(1, rng.randint(1, 230)) for _ in range(5)]
    if kind == "mixed":
        shapes[1:3] = [(rng.randint(2, 9), 150), (40, 230)]
    batch = make_batch(shapes, num_heads, num_kv_heads, 64, 16, seed=num_heads, q_std=2.0)
    metadata = PagedAttentionMetadata.build(batch.sequences, 16, [window], device)
    assert kernels._num_splits(metadata, 1, num_kv_heads, window, device) > 2  # the split path does run
    q, k, v = (t.to(device) for t in (batch.q, batch.key_cache, batch.value_cache))
    out = paged_attention_triton(q, k, v, metadata, window, 0.125)
    assert_matches(out, reference(batch, window, 0.125))
    # Each tile's last split program merged and reset its counter: the next layer's launch (the same metadata)
    # gives the same bits.
    assert int(metadata.split_counters.count_nonzero()) == 0
    assert torch.equal(paged_attention_triton(q, k, v, metadata, window, 0.125), out)


def test_split_count(monkeypatch: pytest.MonkeyPatch) -> None:
    # 4 decodes x 2 KV heads = 8 programs. Below 64 programs: split to reach 64, bounded by keys and MAX_SPLITS.
    sequences = [SequenceSlice(i, 1, n, tuple(range(-(-n // 16)))) for i, n in enumerate((100, 3000, 20, 1))]
    metadata = PagedAttentionMetadata.build(sequences, 16, [None], CPU)
    assert kernels._num_splits(metadata, 1, 2, None, CPU) == 1  # the interpreter does not split by itself
    monkeypatch.setattr(kernels, "SPLIT_BELOW_PROGRAMS", 64)
    monkeypatch.setattr(kernels, "SPLIT_MIN_KEYS", 128)
    assert kernels._num_splits(metadata, 1, 2, None, CPU) == 8  # 64 / 8 programs
    assert kernels._num_splits(metadata, 1, 2, 300, CPU) == 2  # a 300-key window: 300 // 128 keys
    assert kernels._num_splits(metadata, 1, 8, None, CPU) == 2  # 32 programs
    assert kernels._num_splits(metadata, 1, 16, None, CPU) == 1  # 64 programs: enough
    monkeypatch.setattr(kernels, "SPLIT_BELOW_PROGRAMS", 10**6)
    assert kernels._num_splits(metadata, 1, 2, None, CPU) == kernels.MAX_SPLITS


@pytest.mark.parametrize("window", [None, 33])
def test_single_long_chunk(window: int | None, device: torch.device) -> None:
    # One sequence (the binary search has nothing to search) whose chunk spans several query tiles that start
    # and end inside blocks, after a cached prefix that is not a whole number of blocks.
    batch = make_batch([(150, 187)], 4, 2, 64, 16, seed=3)
    assert_matches(run_kernel(batch, window, 0.125, device), reference(batch, window, 0.125))


# The unwindowed call below reduces rows of NaN scores on purpose; numpy (the interpreter) warns about it.
@pytest.mark.filterwarnings("ignore:All-NaN slice encountered:RuntimeWarning")
@pytest.mark.parametrize("split", [False, True])
def test_window_skips_blocks_before_it(split: bool, device: torch.device, monkeypatch: pytest.MonkeyPatch) -> None:
    # Keys a window hides may be gone (a cache can recycle them): poison every key older than the window.
    if split:
        monkeypatch.setattr(kernels, "SPLIT_BELOW_PROGRAMS", 10**9)
        monkeypatch.setattr(kernels, "SPLIT_MIN_KEYS", 8)
    window = 20
    batch = make_batch([(1, 190), (4, 130), (1, 300)], 4, 1, 64, 16, seed=8)
    expected = reference(batch, window, 0.125)
    for seq in batch.sequences:
        oldest_visible = seq.seq_len - seq.query_len - window + 1
        for position in range(oldest_visible):
            block, offset = seq.block_table[position // 16], position % 16
            batch.key_cache[block, offset] = float("nan")
            batch.value_cache[block, offset] = float("nan")
    assert_matches(run_kernel(batch, window, 0.125, device), expected)
    # The same batch without a window must see the poison, or the test above proves nothing.
    assert run_kernel(batch, None, 0.125, device).isnan().any()


def test_strided_query(device: torch.device) -> None:
    # q as a view into a fused qkv projection: token stride 3x the heads, not contiguous.
    batch = make_batch([(1, 50), (9, 60)], 4, 2, 64, 16, seed=4)
    qkv = torch.randn(batch.q.shape[0], 3, 4, 64)
    qkv[:, 0] = batch.q
    metadata = PagedAttentionMetadata.build(batch.sequences, 16, [None], device)
    k, v = batch.key_cache.to(device), batch.value_cache.to(device)
    out = paged_attention_triton(qkv.to(device)[:, 0], k, v, metadata, None, 0.125)
    assert_matches(out, reference(batch, None, 0.125))


def test_half_precision_output_dtype(device: torch.device) -> None:
    batch = make_batch([(1, 40), (5, 21)], 4, 2, 64, 16, seed=6)
    out = run_kernel(batch, None, 0.125, device, dtype=torch.float16)
    assert out.dtype == torch.float16
    # Inputs rounded to fp16 (2**-11) and P rounded to fp16 for P @ V: ~1e-3 of the output's scale.
    assert_matches(out, reference(batch, None, 0.125), rtol=1e-2, atol=4e-3)


def test_cache_dtype_differs_from_query(device: torch.device) -> None:
    # float32 activations over an fp16 cache: q meets the cache in fp16, the output stays float32.
    batch = make_batch([(1, 70), (6, 30)], 4, 2, 64, 16, seed=7)
    metadata = PagedAttentionMetadata.build(batch.sequences, 16, [None], device)
    k, v = (t.to(device=device, dtype=torch.float16) for t in (batch.key_cache, batch.value_cache))
    out = paged_attention_triton(batch.q.to(device), k, v, metadata, None, 0.125)
    assert out.dtype == torch.float32
    rounded = Batch(batch.q.half().float(), k.float().cpu(), v.float().cpu(), batch.sequences)
    assert_matches(out, reference(rounded, None, 0.125), rtol=1e-2, atol=4e-3)


def test_empty_batch(device: torch.device) -> None:
    metadata = PagedAttentionMetadata.build([], 16, [None], device)
    cache = torch.zeros(2, 16, 1, 64, device=device)
    out = paged_attention_triton(torch.zeros(0, 2, 64, device=device), cache, cache, metadata, None, 0.125)
    assert out.shape == (0, 128)


@pytest.mark.parametrize(
    ("q_shape", "k_shape", "v_shape", "dtype", "window", "match"),
    [
        ((3, 4, 64), (4, 16, 2, 64), (4, 16, 2, 32), torch.float32, None, "v_head_dim"),
        ((3, 4, 64), (4, 16, 2, 128), (4, 16, 2, 128), torch.float32, None, "head_dim"),
        ((3, 6, 64), (4, 16, 4, 64), (4, 16, 4, 64), torch.float32, None, "multiple"),
        ((3, 4, 64), (4, 32, 2, 64), (4, 32, 2, 64), torch.float32, None, "block size"),
        ((3, 4, 64), (4, 16, 2, 64), (4, 16, 2, 64), torch.float64, None, "float32"),
        ((3, 4, 64), (4, 16, 2, 64), (4, 16, 2, 64), torch.float32, 0, "window"),
        ((2, 4, 64), (4, 16, 2, 64), (4, 16, 2, 64), torch.float32, None, "tokens"),
    ],
)
def test_rejects_bad_arguments(
    q_shape: tuple[int, ...],
    k_shape: tuple[int, ...],
    v_shape: tuple[int, ...],
    dtype: torch.dtype,
    window: int | None,
    match: str,
    device: torch.device,
) -> None:
    metadata = PagedAttentionMetadata.build([SequenceSlice(0, 3, 5, (1,))], 16, [window], device)
    q = torch.zeros(q_shape, dtype=dtype, device=device)
    k, v = torch.zeros(k_shape, dtype=dtype, device=device), torch.zeros(v_shape, dtype=dtype, device=device)
    with pytest.raises(ValueError, match=match):
        paged_attention_triton(q, k, v, metadata, window, 0.125)


# ---- model-sized batches on a real GPU, bf16 against the CPU in float32 -----------------------------------------


def assert_bf16_close(actual: torch.Tensor, expected: torch.Tensor, batch: Batch) -> None:
    """bf16 output (2**-9 relative rounding) and P rounded to bf16 for P @ V: ~3e-3 relative, per sequence."""
    actual = actual.cpu().float()
    assert not actual.isnan().any(), "NaN in the kernel's output"
    for seq in batch.sequences:
        rows = slice(seq.query_start, seq.query_start + seq.query_len)
        error = (actual[rows] - expected[rows]).norm() / expected[rows].norm()
        assert error < 1e-2, f"sequence {seq.query_len}/{seq.seq_len}: relative error {error:.2e}"
    torch.testing.assert_close(actual, expected, rtol=2e-2, atol=2e-2)


def gpu_check(batch: Batch, window: int | None, dtype: torch.dtype = torch.bfloat16) -> None:
    scale = 1.0 / math.sqrt(batch.q.shape[2])
    # Round the inputs to the GPU dtype first so that both sides attend over the same numbers.
    rounded = Batch(
        batch.q.to(dtype).float(),
        batch.key_cache.to(dtype).float(),
        batch.value_cache.to(dtype).float(),
        batch.sequences,
    )
    out = run_kernel(rounded, window, scale, torch.device("cuda"), dtype)
    torch.cuda.synchronize()
    assert out.dtype == dtype
    expected = reference(rounded, window, scale)
    if dtype == torch.float32:
        assert_matches(out, expected, rtol=1e-4, atol=1e-4)
    else:
        assert_bf16_close(out, expected, rounded)


# Model shapes: (num_heads, num_kv_heads, head_dim, window).
QWEN_05B = (14, 2, 64, None)
LLAMA_8B = (32, 8, 128, None)
GEMMA3_270M = (4, 1, 256, 512)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [QWEN_05B, LLAMA_8B, GEMMA3_270M], ids=["qwen0.5b", "llama8b", "gemma3"])
def test_gpu_64_decodes(shape: tuple[int, int, int, int | None]) -> None:
    num_heads, num_kv_heads, head_dim, window = shape
    rng = random.Random(11)
    shapes = [(1, rng.randint(100, 2000)) for _ in range(64)]
    gpu_check(make_batch(shapes, num_heads, num_kv_heads, head_dim, 16, seed=11, q_std=2.0), window)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [QWEN_05B, LLAMA_8B, GEMMA3_270M], ids=["qwen0.5b", "llama8b", "gemma3"])
def test_gpu_prefill_chunk_after_prefix(shape: tuple[int, int, int, int | None]) -> None:
    # A 512-token chunk after a 1000-token prefix, next to decodes and a short prefill from scratch.
    num_heads, num_kv_heads, head_dim, window = shape
    shapes = [(1, 700), (512, 1512), (1, 1900), (37, 37), (1, 5)]
    gpu_check(make_batch(shapes, num_heads, num_kv_heads, head_dim, 16, seed=12, q_std=2.0), window)


@pytest.mark.gpu
@pytest.mark.parametrize("block_size", [32, 64])
@pytest.mark.parametrize("window", [None, 100])
def test_gpu_block_sizes(block_size: int, window: int | None) -> None:
    rng = random.Random(block_size)
    batch = make_batch(mixed_shapes(rng, 900), 16, 4, 128, block_size, seed=block_size, q_std=2.0)
    gpu_check(batch, window)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("head_dim", [64, 256])
def test_gpu_other_dtypes(dtype: torch.dtype, head_dim: int) -> None:
    rng = random.Random(head_dim)
    batch = make_batch(mixed_shapes(rng, 700), 8, 2, head_dim, 16, seed=head_dim, q_std=2.0)
    gpu_check(batch, 64, dtype)


@pytest.mark.gpu
@pytest.mark.usefixtures("force_splits")
@pytest.mark.parametrize("shape", [QWEN_05B, GEMMA3_270M], ids=["qwen0.5b", "gemma3"])
def test_gpu_forced_splits(shape: tuple[int, int, int, int | None]) -> None:
    # Every launch split 16 ways, prefill chunk included.
    num_heads, num_kv_heads, head_dim, window = shape
    shapes = [(1, 700), (300, 1300), (1, 1900), (37, 37), (1, 5)]
    gpu_check(make_batch(shapes, num_heads, num_kv_heads, head_dim, 16, seed=14, q_std=2.0), window)


@pytest.mark.gpu
def test_gpu_no_host_sync() -> None:
    # A decode step must not wait on the GPU: CUDA's sync debug mode turns any synchronizing call into an error.
    batch = make_batch([(1, 300), (1, 40), (20, 90)], 8, 2, 64, 16, seed=13)
    metadata = PagedAttentionMetadata.build(batch.sequences, 16, [None], torch.device("cuda"))
    q, k, v = (t.to(device="cuda", dtype=torch.bfloat16) for t in (batch.q, batch.key_cache, batch.value_cache))
    paged_attention_triton(q, k, v, metadata, None, 0.125)  # compile outside the checked call
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        paged_attention_triton(q, k, v, metadata, 16, 0.125)
        paged_attention_triton(q, k, v, metadata, None, 0.125)  # 3 sequences: split on any GPU
    finally:
        torch.cuda.set_sync_debug_mode("default")
