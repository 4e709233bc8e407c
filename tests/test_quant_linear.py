"""QuantLinear, its fusion, the quantized embedding, and the loader's quantized path.

The CPU tests check the torch fallback (dequantize with ``rocmforge.gguf.quants`` then matmul), which must equal
what ``Linear`` computes on a weight dequantized at load. The ``triton_`` tests check the Triton paths (fused
decode kernel for M <= 16, row dequantization + torch.matmul above, the embedding row gather): on a GPU they run
there, on a CPU through ``TRITON_INTERPRET=1`` in a fresh process (``test_triton_paths_in_interpreter``),
because Triton picks interpreting or compiling when a kernel is defined, which an earlier test may have done.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from rocmforge.gguf.quants import dequantize
from rocmforge.kernels.triton import interpreter_enabled, triton_available, triton_device
from rocmforge.layers import quant_linear as ql
from rocmforge.layers.linear import ConcatLinear, Linear, matmul_rows
from rocmforge.layers.norm import DeferredRMSNorm
from rocmforge.layers.quant_linear import QuantEmbedding, QuantLinear, embedding_rows
from rocmforge.models.decoder import _fuse_linears
from rocmforge.models.loader import load_model
from tests.gguf.factories import ModelFile, V, write_model
from tests.quant_blocks import random_blocks, uniform_f16_bits

Q = GGMLQuantizationType

FLOAT_DTYPES: dict[GGMLQuantizationType, torch.dtype] = {
    Q.F32: torch.float32,
    Q.F16: torch.float16,
    Q.BF16: torch.bfloat16,
}
MS = (1, 4, 16, 17, 64)
CPU_TYPES = (Q.Q4_0, Q.Q5_1, Q.Q8_0, Q.Q2_K, Q.Q4_K, Q.Q6_K, Q.F16)
# Triton runs here: on a GPU, or on the CPU when this process was started with the interpreter on.
TRITON_HERE = triton_available() and (torch.cuda.is_available() or interpreter_enabled())
needs_triton = pytest.mark.skipif(not TRITON_HERE, reason="Triton runs only on a GPU or under TRITON_INTERPRET=1")


def random_raw(qtype: GGMLQuantizationType, n: int, k: int, seed: int) -> torch.Tensor:
    """Raw bytes (n, row_bytes) of a random (n, k) weight: random blocks with f16 scales in +-0.05, or floats."""
    rng = np.random.default_rng(seed)
    if qtype in FLOAT_DTYPES:
        values = torch.from_numpy(rng.standard_normal((n, k), dtype=np.float32) * 0.05)
        return values.to(FLOAT_DTYPES[qtype]).view(torch.uint8)
    block, _ = GGML_QUANT_SIZES[qtype]
    return torch.from_numpy(random_blocks(rng, qtype, n, k // block, uniform_f16_bits(0.05)))


def k_for(qtype: GGMLQuantizationType) -> int:
    """A small in_features that is a whole number of blocks (and more than one K-quant block)."""
    return 512 if GGML_QUANT_SIZES[qtype][0] == 256 else 96


def reference(
    x: torch.Tensor, raw: torch.Tensor, qtype: GGMLQuantizationType, n: int, dtype: torch.dtype
) -> torch.Tensor:
    """What Linear computes on the weight dequantized at load into ``dtype``."""
    weight = dequantize(raw.cpu(), qtype, (n, x.shape[-1])).to(dtype)
    return matmul_rows(x.cpu().to(dtype), weight).to(x.dtype)


def assert_within(
    actual: torch.Tensor, x: torch.Tensor, raw: torch.Tensor, qtype: GGMLQuantizationType, rtol: float
) -> None:
    """|actual - x @ W.T| <= rtol * (|x| @ |W|.T) elementwise, in float64 (W dequantized exactly)."""
    weight = dequantize(raw.cpu(), qtype, (raw.shape[0], x.shape[-1])).double()
    xd = x.cpu().double()
    bound = rtol * (xd.abs() @ weight.abs().T) + 1e-30
    worst = ((actual.cpu().double() - xd @ weight.T).abs() / bound).max().item()
    assert worst <= 1.0, f"{qtype.name}: error reaches {worst:.3g} x the bound (rtol {rtol})"


# -- CPU fallback ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("qtype", CPU_TYPES)
def test_cpu_matches_dequantize_then_matmul(qtype: GGMLQuantizationType, m: int, dtype: torch.dtype) -> None:
    n, k = 40, k_for(qtype)
    raw = random_raw(qtype, n, k, seed=m + n)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
    layer = QuantLinear(raw, qtype, (n, k), dtype=dtype)
    out = layer(x)
    assert out.shape == (m, n) and out.dtype == x.dtype
    # The same operations as Linear on a weight dequantized at load: bit-identical.
    torch.testing.assert_close(out, reference(x, raw, qtype, n, dtype), rtol=0, atol=0)
    torch.testing.assert_close(out, Linear(dequantize(raw, qtype, (n, k)).to(dtype))(x), rtol=0, atol=0)


def test_cpu_chunks_bias_and_leading_dims(monkeypatch: pytest.MonkeyPatch) -> None:
    n, k = 70, 256
    raw = random_raw(Q.Q4_K, n, k, seed=1)
    bias = torch.randn(n)
    x = torch.randn(2, 5, k, generator=torch.Generator().manual_seed(1))
    whole = QuantLinear(raw, Q.Q4_K, (n, k), bias, torch.float32)(x)
    # 16 rows of float32 per chunk: five chunks, the last one short.
    monkeypatch.setattr(ql, "DEQUANT_CHUNK_BYTES", 16 * k * 4)
    chunked = QuantLinear(raw, Q.Q4_K, (n, k), bias, torch.float32)(x)
    assert chunked.shape == (2, 5, n)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-4)  # BLAS blocks N differently
    expected = x @ dequantize(raw, Q.Q4_K, (n, k)).T + bias
    torch.testing.assert_close(whole, expected, rtol=1e-5, atol=1e-5)
    empty = QuantLinear(raw, Q.Q4_K, (n, k), bias)(torch.zeros(0, k))
    assert empty.shape == (0, n)


def test_rejects_bad_arguments() -> None:
    raw = random_raw(Q.Q8_0, 4, 64, seed=0)
    with pytest.raises(ValueError, match="needs 272 uint8 bytes"):
        QuantLinear(raw[:, :-2], Q.Q8_0, (4, 64))
    with pytest.raises(ValueError, match="not a multiple"):
        QuantLinear(raw, Q.Q8_0, (4, 48))
    with pytest.raises(ValueError, match="bias"):
        QuantLinear(raw, Q.Q8_0, (4, 64), torch.zeros(3))
    with pytest.raises(ValueError, match="input of shape"):
        QuantLinear(raw, Q.Q8_0, (4, 64))(torch.zeros(1, 32))
    a, b = QuantLinear(raw, Q.Q8_0, (4, 64)), QuantLinear(random_raw(Q.Q4_0, 4, 64, 0), Q.Q4_0, (4, 64))
    with pytest.raises(ValueError, match="does not fit"):
        QuantLinear.fuse([a, b])


# -- fusion ---------------------------------------------------------------------------------------------------


def _layers(qtypes: list[GGMLQuantizationType], k: int, sizes: list[int], biased: list[bool]) -> list[QuantLinear]:
    return [
        QuantLinear(random_raw(q, n, k, seed=i), q, (n, k), torch.randn(n) if b else None, torch.float32)
        for i, (q, n, b) in enumerate(zip(qtypes, sizes, biased, strict=True))
    ]


def test_fuse_same_type_is_one_matrix_and_keeps_one_copy() -> None:
    k = 256
    layers = _layers([Q.Q4_K] * 3, k, [64, 32, 32], [True, False, True])
    x = torch.randn(5, k, generator=torch.Generator().manual_seed(2))
    separate = torch.cat([layer(x) for layer in layers], dim=-1)
    fused = _fuse_linears(list(layers))
    assert isinstance(fused, QuantLinear) and fused.shape == (128, k) and fused.out_features == 128
    torch.testing.assert_close(fused(x), separate, rtol=1e-6, atol=1e-6)
    # The originals now view the fused bytes and still compute the same.
    base = fused.raw.data_ptr()
    row_bytes = fused.raw.shape[1]
    assert [layer.raw.data_ptr() - base for layer in layers] == [0, 64 * row_bytes, 96 * row_bytes]
    torch.testing.assert_close(torch.cat([layer(x) for layer in layers], dim=-1), separate, rtol=0, atol=0)
    assert fused.bias is not None and torch.equal(fused.bias[64:96], torch.zeros(32))


def test_fuse_mixed_types_runs_them_in_turn() -> None:
    # Q4_K_M-style: q and k in Q4_K, v in Q6_K -> one stacked Q4_K matrix, then the Q6_K one.
    k = 256
    layers = _layers([Q.Q4_K, Q.Q4_K, Q.Q6_K], k, [64, 32, 32], [False, False, False])
    x = torch.randn(3, k, generator=torch.Generator().manual_seed(3))
    separate = torch.cat([layer(x) for layer in layers], dim=-1)
    fused = _fuse_linears(list(layers))
    assert isinstance(fused, ConcatLinear) and fused.out_features == 128
    assert [type(p).__name__ for p in fused.parts] == ["QuantLinear", "QuantLinear"]
    assert fused.parts[0].out_features == 96 and fused.parts[1] is layers[2]
    torch.testing.assert_close(fused(x), separate, rtol=1e-6, atol=1e-6)
    # A float (Linear) projection between quantized ones stays a part of its own.
    dense = Linear(torch.randn(16, k))
    mixed = _fuse_linears([layers[0], dense, layers[2]])
    assert isinstance(mixed, ConcatLinear) and mixed.parts[1] is dense
    torch.testing.assert_close(mixed(x), torch.cat([layers[0](x), dense(x), layers[2](x)], dim=-1))


def test_fuse_dense_is_unchanged() -> None:
    linears = [Linear(torch.randn(8, 16), torch.randn(8)), Linear(torch.randn(4, 16))]
    x = torch.randn(2, 16)
    separate = torch.cat([linear(x) for linear in linears], dim=-1)
    fused = _fuse_linears(list(linears))
    assert type(fused) is Linear and fused.weight.shape == (12, 16)
    torch.testing.assert_close(fused(x), separate, rtol=0, atol=0)


# -- embedding ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q6_K, Q.Q8_0, Q.Q4_0, Q.F16])
def test_embedding_rows_match_full_dequantize(qtype: GGMLQuantizationType) -> None:
    vocab, k = 50, k_for(qtype)
    raw = random_raw(qtype, vocab, k, seed=4)
    ids = torch.tensor([[3, 0, 49], [7, 7, 12]])
    full = dequantize(raw, qtype, (vocab, k))
    rows = embedding_rows(raw, qtype, k, ids)
    assert rows.shape == (2, 3, k) and rows.dtype == torch.float32
    torch.testing.assert_close(rows, full[ids], rtol=0, atol=0)
    embedding = QuantEmbedding(QuantLinear(raw, qtype, (vocab, k)))
    assert embedding.shape == (vocab, k) and embedding.device == raw.device
    torch.testing.assert_close(embedding[ids[0]], full[ids[0]], rtol=0, atol=0)


# -- loader ---------------------------------------------------------------------------------------------------

# Q4_K_M-like storage: most matrices Q4_K, attn_v / ffn_down / the embedding Q6_K, one projection F16.
MIXED_QTYPES = {"attn_q": Q.Q4_K, "attn_k": Q.Q4_K, "attn_v": Q.Q6_K, "attn_output": Q.Q4_K}
MIXED_QTYPES |= {"ffn_gate": Q.Q4_K, "ffn_up": Q.Q4_K, "ffn_down": Q.Q6_K}


def write_sized_model(
    path: Path,
    *,
    hidden: int = 256,
    ff: int = 512,
    heads: int = 4,
    kv_heads: int = 2,
    num_layers: int = 2,
    qtypes: Mapping[str, GGMLQuantizationType] | None = None,
    embed_qtype: GGMLQuantizationType = Q.Q6_K,
    tied: bool = True,
    seed: int = 0,
) -> ModelFile:
    """A llama model of the given sizes (factories' tokenizer and vocabulary): K-quants need rows of 256."""
    from tests.gguf.factories import VOCAB_SIZE

    head_dim = hidden // heads
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (VOCAB_SIZE, hidden), "output_norm.weight": (hidden,)}
    if not tied:
        shapes["output.weight"] = (VOCAB_SIZE, hidden)
    names: dict[str, GGMLQuantizationType] = {"token_embd.weight": embed_qtype}
    if not tied:
        names["output.weight"] = Q.Q6_K
    for i in range(num_layers):
        p = f"blk.{i}."
        shapes |= {
            p + "attn_norm.weight": (hidden,),
            p + "attn_q.weight": (hidden, hidden),
            p + "attn_k.weight": (kv_heads * head_dim, hidden),
            p + "attn_v.weight": (kv_heads * head_dim, hidden),
            p + "attn_output.weight": (hidden, hidden),
            p + "ffn_norm.weight": (hidden,),
            p + "ffn_gate.weight": (ff, hidden),
            p + "ffn_up.weight": (ff, hidden),
            p + "ffn_down.weight": (hidden, ff),
        }
        names |= {p + name + ".weight": qtype for name, qtype in (qtypes or MIXED_QTYPES).items()}
    metadata = {
        "llama.embedding_length": (hidden, V.UINT32),
        "llama.feed_forward_length": (ff, V.UINT32),
        "llama.attention.head_count": (heads, V.UINT32),
        "llama.attention.head_count_kv": (kv_heads, V.UINT32),
        "llama.rope.dimension_count": (head_dim, V.UINT32),
    }
    return write_model(
        path, num_layers=num_layers, ff=ff, qtypes=names, tied=tied, metadata=metadata, shapes=shapes, seed=seed
    )


@pytest.fixture(scope="module")
def sized_model(tmp_path_factory: pytest.TempPathFactory) -> ModelFile:
    qtypes = dict(MIXED_QTYPES, attn_output=Q.F16)  # one float matrix: it stays a dense Linear
    return write_sized_model(tmp_path_factory.mktemp("quant") / "sized.gguf", qtypes=qtypes)


def _logits(model: object, tokens: list[int]) -> torch.Tensor:
    return model.forward(torch.tensor(tokens), 0, model.new_kv_cache(16), all_logits=True)  # type: ignore[attr-defined]


def test_cpu_loader_default_dequantizes_at_load(sized_model: ModelFile) -> None:
    model = load_model(sized_model.path)
    w = model.weights
    assert isinstance(w.embed_tokens, torch.Tensor) and type(w.lm_head) is Linear
    layer = w.layers[0]
    assert all(type(p) is Linear for p in (layer.q_proj, layer.v_proj, layer.o_proj, layer.down_proj))
    assert type(model._fused[0].qkv_proj) is Linear and type(model._fused[0].gate_up_proj) is Linear


def test_loader_keeps_quantized_matrices(sized_model: ModelFile) -> None:
    model = load_model(sized_model.path, quantized=True)
    w = model.weights
    layer, fused = w.layers[1], model._fused[1]
    assert isinstance(w.embed_tokens, QuantEmbedding) and w.embed_tokens.weight.qtype == Q.Q6_K
    assert w.lm_head is w.embed_tokens.weight  # tied: one copy of the bytes for both uses
    assert isinstance(layer.q_proj, QuantLinear) and layer.q_proj.qtype == Q.Q4_K
    assert isinstance(layer.v_proj, QuantLinear) and layer.v_proj.qtype == Q.Q6_K
    assert type(layer.o_proj) is Linear and layer.o_proj.weight.dtype == torch.float32  # F16 file tensor
    assert layer.attn_norm.dtype == torch.float32 and isinstance(layer.attn_norm, torch.Tensor)
    # q, k (Q4_K) stacked into one matrix, v (Q6_K) after it; gate and up (both Q4_K) one matrix.
    assert isinstance(fused.qkv_proj, ConcatLinear) and [p.out_features for p in fused.qkv_proj.parts] == [384, 128]
    assert isinstance(fused.gate_up_proj, QuantLinear) and fused.gate_up_proj.out_features == 1024
    # Bytes kept are the file's bytes, and the logits those of the model dequantized at load (float32 matmuls).
    for name, proj in (("blk.1.ffn_down.weight", layer.down_proj), ("blk.1.attn_k.weight", layer.k_proj)):
        data, _ = sized_model.tensors[name]
        assert isinstance(proj, QuantLinear) and torch.equal(proj.raw, torch.from_numpy(np.ascontiguousarray(data)))
    tokens = [1, 2, 3, 4, 5, 6]
    torch.testing.assert_close(_logits(model, tokens), _logits(load_model(sized_model.path), tokens))


def test_loader_untied_output_and_float_embedding(tmp_path: Path) -> None:
    path = tmp_path / "untied.gguf"
    write_sized_model(path, num_layers=1, tied=False, embed_qtype=Q.F16)
    model = load_model(path, quantized=True)
    w = model.weights
    assert isinstance(w.embed_tokens, torch.Tensor) and w.embed_tokens.dtype == torch.float32
    assert isinstance(w.lm_head, QuantLinear) and w.lm_head.qtype == Q.Q6_K
    tokens = [7, 8, 9]
    torch.testing.assert_close(_logits(model, tokens), _logits(load_model(path), tokens))


# -- Triton paths (GPU, or the CPU interpreter in a fresh process) -------------------------------------------------


@needs_triton
@pytest.mark.parametrize("qtype", sorted(ql.SUPPORTED_QUANT_TYPES, key=lambda t: t.value))
def test_triton_dequantize_rows_match_cpu(qtype: GGMLQuantizationType) -> None:
    from rocmforge.kernels.triton.dequant_rows import dequantize_rows

    n, k = 19, k_for(qtype) if qtype not in FLOAT_DTYPES else 64
    raw = random_raw(qtype, n, k, seed=5)
    expected = dequantize(raw, qtype, (n, k))
    out = dequantize_rows(raw.to(triton_device()), qtype, k, torch.float32)
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-6, atol=0)
    half = dequantize_rows(raw.to(triton_device()), qtype, k, torch.bfloat16)
    # Compiled kernels round to nearest even like torch; Triton's interpreter truncates to bf16 (one ulp).
    ulp = 0.0 if triton_device().type == "cuda" or qtype in FLOAT_DTYPES else 2.0**-7
    torch.testing.assert_close(half.cpu(), expected.to(torch.bfloat16), rtol=ulp, atol=0)


@needs_triton
@pytest.mark.parametrize("m", MS)
@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q6_K, Q.Q8_0, Q.Q5_0, Q.F16])
def test_triton_quant_linear(qtype: GGMLQuantizationType, m: int) -> None:
    n, k = 48, k_for(qtype)
    raw = random_raw(qtype, n, k, seed=m)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
    device = triton_device()
    bias = torch.randn(n)
    layer = QuantLinear(raw.to(device), qtype, (n, k), bias.to(device))
    out = layer(x.to(device))
    assert out.shape == (m, n) and out.dtype == torch.float32 and out.device.type == device.type
    # The fused kernel accumulates in float32; the other path multiplies bf16 weights and activations.
    assert_within(out.cpu() - bias, x, raw, qtype, rtol=1e-4 if m <= ql.fused_max_m(qtype) else 1.6e-2)
    if m <= 16:  # the fused kernel's range, whatever the dispatch picks
        assert_within(layer.fused_matmul(x.to(device)), x, raw, qtype, rtol=1e-4)
    exact = QuantLinear(raw.to(device), qtype, (n, k), dtype=torch.float32).dequant_matmul(x.to(device))
    assert_within(exact, x, raw, qtype, rtol=1e-4)


@needs_triton
@pytest.mark.parametrize(
    ("qtype", "m"),
    [(Q.Q4_K, 1), (Q.Q4_K, 4), (Q.Q6_K, 1), (Q.Q6_K, 4), (Q.Q8_0, 1), (Q.Q8_0, 4), (Q.Q4_0, 1), (Q.F16, 1)],
)
def test_triton_float32_output_from_bf16_activations(qtype: GGMLQuantizationType, m: int) -> None:
    """``out_dtype=float32`` (the logits) makes the Triton kernels write float32: their sums are never rounded to
    bf16. (The torch matmul of the larger-M paths returns the matmul dtype; those M never compute logits in a
    decode step.)"""
    n, k = 48, k_for(qtype)
    raw = random_raw(qtype, n, k, seed=m + 3)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m)).to(torch.bfloat16)
    device = triton_device()
    layer = QuantLinear(raw.to(device), qtype, (n, k), dtype=torch.bfloat16)
    wide = layer(x.to(device), torch.float32)
    assert wide.dtype == torch.float32 and wide.shape == (m, n)
    # The dot kernels (M > 1, the GGUF-block kernel) multiply bf16 weights: 2**-9 relative each.
    assert_within(wide, x.float(), raw, qtype, rtol=1e-4 if m == 1 and qtype in (Q.Q4_K, Q.Q6_K) else 2.0**-8)
    assert (wide != wide.to(torch.bfloat16).float()).any(), "the float32 output holds only bf16 values"
    narrow = layer(x.to(device))
    assert narrow.dtype == torch.bfloat16
    # The same sums, rounded once at the store (the interpreter truncates to bf16: one ulp).
    ulp = 0.0 if device.type == "cuda" else 2.0**-7
    torch.testing.assert_close(narrow.float().cpu(), wide.to(torch.bfloat16).float().cpu(), rtol=ulp, atol=0)


@needs_triton
def test_triton_dispatch_by_m(monkeypatch: pytest.MonkeyPatch) -> None:
    device = triton_device()
    layer = QuantLinear(random_raw(Q.Q8_0, 32, 64, seed=6).to(device), Q.Q8_0, (32, 64))
    calls: list[str] = []
    monkeypatch.setattr(QuantLinear, "fused_matmul", lambda self, x, out_dtype: calls.append("fused") or x[:, :32])
    monkeypatch.setattr(QuantLinear, "dequant_matmul", lambda self, x, out_dtype: calls.append("dequant") or x[:, :32])
    monkeypatch.setitem(ql.FUSED_MAX_M, Q.Q8_0, 4)
    for m in (1, 4, 5, 16, 17):
        layer(torch.zeros(m, 64, device=device))
    assert calls == ["fused", "fused", "dequant", "dequant", "dequant"]
    # A type without a whole-block decode kernel never takes the fused path.
    monkeypatch.delitem(ql.FUSED_MAX_M, Q.Q8_0)
    calls.clear()
    layer(torch.zeros(1, 64, device=device))
    assert calls == ["dequant"]
    assert ql.fused_max_m(Q.Q5_K) == 0 and 1 <= ql.fused_max_m(Q.Q4_K) <= 16


@needs_triton
def test_triton_fused_and_embedding(sized_model: ModelFile) -> None:
    device = triton_device()
    k = 256
    layers = [
        QuantLinear(random_raw(q, n, k, seed=i).to(device), q, (n, k), dtype=torch.float32)
        for i, (q, n) in enumerate([(Q.Q4_K, 32), (Q.Q4_K, 16), (Q.Q6_K, 16)])
    ]
    x = torch.randn(3, k, device=device)
    separate = torch.cat([layer(x) for layer in layers], dim=-1)
    fused = _fuse_linears(list(layers))
    torch.testing.assert_close(fused(x), separate, rtol=1e-5, atol=1e-6)
    raw = random_raw(Q.Q6_K, 50, k, seed=7)
    ids = torch.tensor([49, 0, 3, 3])
    rows = embedding_rows(raw.to(device), Q.Q6_K, k, ids.to(device))
    torch.testing.assert_close(rows.cpu(), dequantize(raw, Q.Q6_K, (50, k))[ids], rtol=1e-6, atol=0)


@needs_triton
def test_triton_loaded_model_matches_cpu(sized_model: ModelFile) -> None:
    # The loader's quantized path on the Triton device: prefill of 20 tokens (M > 16: dequantize + matmul in
    # float32 here) and decode steps (M = 1: the fused kernel) against the model dequantized at load.
    device = triton_device()
    quantized = load_model(sized_model.path, device=device, quantized=True)
    dense = load_model(sized_model.path)
    tokens = list(range(1, 21))
    cache_q, cache_d = quantized.new_kv_cache(32), dense.new_kv_cache(32)
    # A GPU sums float32 in other orders (cuBLAS, attention dots at tf32x3: 2**-21 a product): on an H200 one
    # logit of 5220 differed by 1.5e-4 (0.33 +- 1.5e-4). The interpreter keeps the CPU's bound.
    atol = 3e-4 if device.type == "cuda" else 1e-4
    torch.testing.assert_close(
        quantized.forward(torch.tensor(tokens), 0, cache_q, all_logits=True).cpu(),
        dense.forward(torch.tensor(tokens), 0, cache_d, all_logits=True),
        rtol=1e-4,
        atol=atol,
    )
    for pos, token in enumerate([5, 9], start=len(tokens)):
        step_q = quantized.forward(torch.tensor([token]), pos, cache_q).cpu()
        torch.testing.assert_close(step_q, dense.forward(torch.tensor([token]), pos, cache_d), rtol=1e-4, atol=atol)


@needs_triton
def test_triton_decode_defers_rms_norm_to_the_next_projection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One-token steps over Q4_K/Q6_K projections: o_proj and down_proj end with the residual add and hand the
    next projection a deferred RMSNorm (no add + norm launch); the logits match the unfused ops."""
    device = triton_device()
    path = write_sized_model(tmp_path / "kquants.gguf").path
    deferred: list[DeferredRMSNorm] = []
    fusing = QuantLinear.add_rms_norm

    def counted(self: QuantLinear, *args: object) -> DeferredRMSNorm | None:
        result = fusing(self, *args)  # type: ignore[arg-type]
        if result is not None:
            deferred.append(result)
        return result

    def decode(model: object) -> torch.Tensor:
        cache = model.new_kv_cache(16)  # type: ignore[attr-defined]
        model.forward(torch.tensor([3, 1, 4, 1, 5, 9]), 0, cache)  # type: ignore[attr-defined]  # a prefill
        # all_logits: the output matrix (tied Q6_K) finishes the final norm itself.
        steps = [model.forward(torch.tensor([t]), 6 + i, cache, all_logits=True) for i, t in enumerate([2, 6, 5])]  # type: ignore[attr-defined]
        return torch.cat(steps).float().cpu()

    model = load_model(path, torch.bfloat16, device, quantized=True)
    monkeypatch.setattr(QuantLinear, "add_rms_norm", counted)
    fused = decode(model)
    assert len(deferred) == 3 * 2 * 2  # steps x layers x (o_proj, down_proj); the six-row prefill defers none
    assert not any("normed" in vars(d) for d in deferred)  # every consumer finished the norm in its kernel
    monkeypatch.setattr(QuantLinear, "add_rms_norm", lambda *args: None)
    unfused = decode(model)
    if device.type != "cuda":
        # float32 activations on the CPU (the interpreter): only the order of float32 operations differs.
        torch.testing.assert_close(fused, unfused, rtol=1e-4, atol=1e-4)
        return
    # bf16 activations on a GPU round in different places (the unfused path h * rstd * w, the fused one h * w):
    # neither may stray further from the float32 CPU model than the other does.
    reference = decode(load_model(path))
    errors = [float((logits - reference).norm() / reference.norm()) for logits in (fused, unfused)]
    print(f"bf16 logits' relative error against the float32 CPU model: fused {errors[0]:.3g}, unfused {errors[1]:.3g}")
    assert errors[0] <= 1.5 * errors[1], f"relative error fused {errors[0]:.3g}, unfused {errors[1]:.3g}"


@pytest.mark.skipif(TRITON_HERE, reason="the Triton tests run in this process")
def test_triton_paths_in_interpreter() -> None:
    """Runs this file's ``triton_`` tests on the CPU through Triton's interpreter, in a fresh process."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    root = Path(__file__).resolve().parents[1]
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        __file__,
        "-k",
        "triton_ and not in_interpreter",
    ]
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout.splitlines()[-1], result.stdout[-2000:]
