"""The fused RoPE + KV-cache write kernel against the unfused CPU path (``RotaryEmbedding.apply``, ``store_kv``).

Without a GPU it runs through ``TRITON_INTERPRET=1`` in float32 at small shapes; tests marked ``gpu`` run model
shapes in bf16. Inputs are the strided views the decoder passes: qk and v are column ranges of one fused QKV
output. Slots are scattered over the cache; every slot not written must stay as it was.
"""

from __future__ import annotations

import pytest
import torch

from rocmforge.kernels.triton.rope_cache import rope_store_kv_triton
from rocmforge.layers.paged_attention import store_kv
from rocmforge.layers.rotary import RotaryEmbedding

CPU = torch.device("cpu")
KERNEL_DEVICE = torch.device("cuda") if torch.cuda.is_available() else CPU


def _check(
    num_tokens: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    rope_dim: int,
    style: str,
    dtype: torch.dtype,
    block_size: int = 16,
    num_blocks: int = 8,
) -> None:
    gen = torch.Generator().manual_seed(num_tokens * heads + head_dim)
    width = (heads + 2 * kv_heads) * head_dim
    qkv = (torch.randn(num_tokens, width, generator=gen) * 2.0).to(dtype)
    qk = qkv[:, : (heads + kv_heads) * head_dim].view(num_tokens, heads + kv_heads, head_dim)
    v = qkv[:, (heads + kv_heads) * head_dim :].view(num_tokens, kv_heads, head_dim)
    positions = torch.randint(0, 4000, (num_tokens,), generator=gen)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    rope = RotaryEmbedding(rope_dim, 10000.0, style)  # type: ignore[arg-type]
    cos, sin = rope.cos_sin(positions)
    shape = (num_blocks, block_size, kv_heads, head_dim)
    k_init = torch.randn(shape, generator=gen).to(dtype)
    v_init = torch.randn(shape, generator=gen).to(dtype)

    k_expected, v_expected = k_init.clone(), v_init.clone()
    rotated = rope.apply(qk, cos, sin)
    store_kv(k_expected, v_expected, rotated[:, heads:], v, slots)
    q_expected = rotated[:, :heads]

    k_cache, v_cache = k_init.to(KERNEL_DEVICE), v_init.to(KERNEL_DEVICE)
    on_device = qkv.to(KERNEL_DEVICE)
    q = rope_store_kv_triton(
        on_device[:, : (heads + kv_heads) * head_dim].view(num_tokens, heads + kv_heads, head_dim),
        on_device[:, (heads + kv_heads) * head_dim :].view(num_tokens, kv_heads, head_dim),
        cos.to(KERNEL_DEVICE),
        sin.to(KERNEL_DEVICE),
        heads,
        k_cache,
        v_cache,
        slots.to(KERNEL_DEVICE),
        rope_dim,
        style,
    )
    # float32: the same products up to fused multiply-adds; bf16: both round the same float32 values once, so
    # they differ by at most one bf16 step where an FMA moved a value across a rounding boundary.
    rtol, atol = (1e-5, 1e-5) if dtype == torch.float32 else (1e-2, 1e-2)
    torch.testing.assert_close(q.to(CPU), q_expected, rtol=rtol, atol=atol)
    torch.testing.assert_close(k_cache.to(CPU), k_expected, rtol=rtol, atol=atol)
    torch.testing.assert_close(v_cache.to(CPU), v_expected, rtol=0, atol=0)  # a plain copy


@pytest.mark.parametrize("style", ["norm", "neox"])
@pytest.mark.parametrize(
    ("num_tokens", "heads", "kv_heads", "head_dim", "rope_dim"),
    [
        (1, 4, 2, 64, 64),
        (3, 9, 3, 64, 64),
        (2, 4, 1, 128, 64),  # partial rotary: the rest of each head is copied
        (2, 3, 1, 128, 128),
        (1, 2, 2, 256, 256),
        (3, 3, 1, 96, 48),  # head_dim and half not powers of two
        (20, 5, 1, 64, 32),  # a prefill-sized step: one program per token takes all its heads
    ],
)
def test_rope_store_kv(num_tokens: int, heads: int, kv_heads: int, head_dim: int, rope_dim: int, style: str) -> None:
    _check(num_tokens, heads, kv_heads, head_dim, rope_dim, style, torch.float32)


def test_rope_store_kv_rejects_bad_arguments() -> None:
    qk = torch.zeros(1, 3, 64, device=KERNEL_DEVICE)
    v = torch.zeros(1, 1, 64, device=KERNEL_DEVICE)
    cs = torch.zeros(1, 32, device=KERNEL_DEVICE)
    cache = torch.zeros(2, 16, 1, 64, device=KERNEL_DEVICE)
    slots = torch.zeros(1, dtype=torch.long, device=KERNEL_DEVICE)
    with pytest.raises(ValueError, match="rope style"):
        rope_store_kv_triton(qk, v, cs, cs, 2, cache, cache.clone(), slots, 64, "gptj")
    with pytest.raises(ValueError, match="rope_dim"):
        rope_store_kv_triton(qk, v, cs, cs, 2, cache, cache.clone(), slots, 128, "norm")
    with pytest.raises(ValueError, match="q and"):
        rope_store_kv_triton(qk, v, cs, cs, 1, cache, cache.clone(), slots, 64, "norm")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("style", ["norm", "neox"])
@pytest.mark.parametrize(
    ("num_tokens", "heads", "kv_heads", "head_dim"),
    [(1, 32, 32, 128), (64, 32, 8, 128), (256, 14, 2, 64), (16, 8, 4, 256)],
)
def test_gpu_rope_store_kv_model_shapes(
    dtype: torch.dtype, style: str, num_tokens: int, heads: int, kv_heads: int, head_dim: int
) -> None:
    _check(num_tokens, heads, kv_heads, head_dim, head_dim, style, dtype, num_blocks=32)
