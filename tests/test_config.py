"""ModelConfig.from_gguf: what it reads from metadata per architecture, and GGUFError for every bad value."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf.gguf_writer import GGUFWriter

from rocmforge.config import SUPPORTED_ARCHITECTURES, ModelConfig, describe
from rocmforge.errors import GGUFError, UnsupportedModelError
from rocmforge.gguf.reader import GGUFFile
from tests.gguf.factories import HIDDEN, VOCAB_SIZE, V, add_metadata, model_metadata, raises_naming


def config_of(
    tmp_path: Path,
    arch: str = "llama",
    overrides: Mapping[str, tuple[Any, V]] | None = None,
    drop: tuple[str, ...] = (),
    tensors: Mapping[str, tuple[int, ...]] | None = None,
) -> ModelConfig:
    """Write a metadata-only file (plus tiny placeholder tensors that flag optional features) and configure it.

    Config reads only tensor names and the embedding's shape, so the placeholders' data is irrelevant.
    """
    path = tmp_path / f"{arch}.gguf"
    writer = GGUFWriter(path, arch)
    add_metadata(writer, model_metadata(arch) | dict(overrides or {}), drop)
    for name, shape in (tensors or {}).items():
        writer.add_tensor(name, np.zeros(shape, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with GGUFFile(path) as f:
        return ModelConfig.from_gguf(f)


def config_error(tmp_path: Path, *fragments: str, error: type[GGUFError] = GGUFError, **kwargs: Any) -> str:
    return raises_naming(lambda: config_of(tmp_path, **kwargs), tmp_path, *fragments, error=error)


# -- what each architecture gets ----------------------------------------------------------------------------


def test_llama(tmp_path: Path) -> None:
    c = config_of(tmp_path)
    assert (c.arch, c.name, c.num_layers, c.hidden_size, c.intermediate_size) == ("llama", "tiny-test", 2, 64, 128)
    assert (c.num_heads, c.num_kv_heads, c.head_dim, c.v_head_dim, c.rope_dim) == (4, 2, 16, 16, 16)
    assert (c.q_size, c.kv_size) == (64, 32)
    assert c.rope_style == "norm" and c.activation == "silu"
    assert c.rope_theta == c.rope_theta_swa == 10000.0
    assert c.rms_norm_eps == pytest.approx(1e-5)
    assert (c.context_length, c.vocab_size) == (256, VOCAB_SIZE)
    assert c.tie_word_embeddings  # no output.weight
    assert c.sliding_window is None and c.sliding_window_layers == (False, False)
    assert not (c.qkv_bias or c.qk_norm or c.post_norms)
    assert c.embedding_scale == 1.0 and c.attention_scale == pytest.approx(1 / 4)
    assert c.rope_scaling_type == "none" and c.rope_scaling_factor == 1.0
    assert c.layer_window(0) is None and c.layer_rope_theta(1) == 10000.0
    assert describe(c)["sliding_window_layers"] == "GG"


def test_defaults_when_optional_keys_are_absent(tmp_path: Path) -> None:
    optional = (
        "llama.attention.head_count_kv",
        "llama.rope.freq_base",
        "llama.attention.layer_norm_rms_epsilon",
        "llama.rope.dimension_count",
        "llama.context_length",
        "general.name",
    )
    c = config_of(tmp_path, drop=optional)
    assert c.num_kv_heads == c.num_heads == 4
    assert (c.rope_theta, c.rms_norm_eps, c.rope_dim, c.context_length) == (10000.0, 1e-6, 16, 4096)
    assert c.name == "llama"  # the file's stem


def test_qwen2_bias_and_untied_output(tmp_path: Path) -> None:
    c = config_of(tmp_path, "qwen2", tensors={"blk.0.attn_q.bias": (HIDDEN,), "output.weight": (4, HIDDEN)})
    assert c.rope_style == "neox" and c.qkv_bias and not c.tie_word_embeddings and not c.qk_norm


def test_qwen3_qk_norm_and_explicit_head_size(tmp_path: Path) -> None:
    overrides = {
        "qwen3.attention.key_length": (32, V.UINT32),
        "qwen3.attention.value_length": (32, V.UINT32),
        "qwen3.rope.dimension_count": (32, V.UINT32),
    }
    c = config_of(tmp_path, "qwen3", overrides, tensors={"blk.0.attn_q_norm.weight": (32,)})
    assert c.qk_norm and (c.head_dim, c.v_head_dim, c.q_size) == (32, 32, 128)
    assert c.attention_scale == pytest.approx(1 / math.sqrt(32))


def test_gemma3_defaults(tmp_path: Path) -> None:
    overrides = {"gemma3.block_count": (7, V.UINT32), "gemma3.attention.sliding_window": (512, V.UINT32)}
    c = config_of(tmp_path, "gemma3", overrides)
    # llama.cpp's hard-coded pattern: five sliding layers, then one global.
    assert c.sliding_window_layers == (True, True, True, True, True, False, True)
    assert c.layer_window(0) == 512 and c.layer_window(5) is None
    assert c.rope_theta_swa == 10000.0 and c.layer_rope_theta(0) == 10000.0
    assert c.activation == "gelu_tanh" and c.post_norms and c.embedding_scale == pytest.approx(8.0)


def test_sliding_window_pattern_array_and_period(tmp_path: Path) -> None:
    window = {"gemma3.attention.sliding_window": (128, V.UINT32)}
    c = config_of(tmp_path, "gemma3", window | {"gemma3.attention.sliding_window_pattern": ([True, False], V.ARRAY)})
    assert c.sliding_window_layers == (True, False)
    c = config_of(tmp_path, "llama", {"llama.attention.sliding_window": (128, V.UINT32)})
    assert c.sliding_window_layers == (True, True)  # Mistral-style: no pattern means every layer
    config_error(
        tmp_path,
        "sliding_window_pattern has 3 entries for 2 layers",
        arch="gemma3",
        overrides=window | {"gemma3.attention.sliding_window_pattern": ([True, False, True], V.ARRAY)},
    )


def test_vocab_size_fallbacks(tmp_path: Path) -> None:
    assert config_of(tmp_path, overrides={"llama.vocab_size": (300, V.UINT32)}).vocab_size == 300
    no_tokens = ("tokenizer.ggml.tokens",)
    assert config_of(tmp_path, drop=no_tokens, tensors={"token_embd.weight": (7, HIDDEN)}).vocab_size == 7
    config_error(tmp_path, "missing metadata key 'llama.vocab_size'", drop=no_tokens)


def test_rope_scaling(tmp_path: Path) -> None:
    linear = {"llama.rope.scaling.type": ("linear", V.STRING), "llama.rope.scaling.factor": (4.0, V.FLOAT32)}
    c = config_of(tmp_path, overrides=linear)
    assert (c.rope_scaling_type, c.rope_scaling_factor) == ("linear", 4.0)
    assert config_of(tmp_path, overrides={"llama.rope.scaling.type": ("none", V.STRING)}).rope_scaling_type == "none"
    config_error(
        tmp_path,
        "missing metadata key 'llama.rope.scaling.factor'",
        overrides={"llama.rope.scaling.type": ("linear", V.STRING)},
    )
    config_error(
        tmp_path,
        "RoPE scaling 'yarn'",
        error=UnsupportedModelError,
        overrides={"llama.rope.scaling.type": ("yarn", V.STRING)},
    )


def test_uniform_per_layer_head_counts(tmp_path: Path) -> None:
    c = config_of(tmp_path, overrides={"llama.attention.head_count_kv": ([2, 2], V.ARRAY)})
    assert c.num_kv_heads == 2


# -- faults -------------------------------------------------------------------------------------------------


def test_unknown_architecture(tmp_path: Path) -> None:
    message = config_error(tmp_path, "unsupported architecture 'rwkv6'", arch="rwkv6", error=UnsupportedModelError)
    assert "supported: llama, qwen2, qwen3, gemma3" in message
    assert SUPPORTED_ARCHITECTURES == ("llama", "qwen2", "qwen3", "gemma3")


@pytest.mark.parametrize(
    "key",
    ["llama.block_count", "llama.embedding_length", "llama.feed_forward_length", "llama.attention.head_count"],
)
def test_missing_required_key(tmp_path: Path, key: str) -> None:
    config_error(tmp_path, f"missing metadata key {key!r}", drop=(key,))


@pytest.mark.parametrize(
    "value",
    [("2", V.STRING), (2.0, V.FLOAT32), (True, V.BOOL), (0, V.UINT32), (-1, V.INT32), ([2, 2], V.ARRAY)],
    ids=["string", "float", "bool", "zero", "negative", "array"],
)
def test_mistyped_integer(tmp_path: Path, value: tuple[Any, V]) -> None:
    config_error(tmp_path, "'llama.block_count'", "must be an integer >= 1", overrides={"llama.block_count": value})


@pytest.mark.parametrize("layers", [2**32 - 1, 2**63, 2**64 - 1])
def test_absurd_block_count_fails_without_allocating(tmp_path: Path, layers: int) -> None:
    # Found by this suite: block_count 2**32 - 1 built a 4-billion-entry per-layer tuple (MemoryError).
    start = time.perf_counter()
    config_error(tmp_path, "'llama.block_count'", "absurdly large", overrides={"llama.block_count": (layers, V.UINT64)})
    assert time.perf_counter() - start < 2.0


@pytest.mark.parametrize(
    "value",
    [("1e4", V.STRING), (0.0, V.FLOAT32), (-5.0, V.FLOAT32), (math.nan, V.FLOAT32), (math.inf, V.FLOAT64)],
    ids=["string", "zero", "negative", "nan", "inf"],
)
def test_bad_float(tmp_path: Path, value: tuple[Any, V]) -> None:
    config_error(tmp_path, "'llama.rope.freq_base'", "positive number", overrides={"llama.rope.freq_base": value})


def test_per_layer_head_counts(tmp_path: Path) -> None:
    key = "llama.attention.head_count"
    config_error(tmp_path, repr(key), "not supported", error=UnsupportedModelError, overrides={key: ([4, 2], V.ARRAY)})
    config_error(tmp_path, repr(key), "not supported", error=UnsupportedModelError, overrides={key: ([4], V.ARRAY)})
    # Found by this suite: nested arrays reached set() and raised TypeError (unhashable list).
    config_error(tmp_path, repr(key), "must hold integers", overrides={key: ([[4], [4]], V.ARRAY)})
    config_error(tmp_path, repr(key), "must hold integers", overrides={key: (["4", "4"], V.ARRAY)})


def test_inconsistent_heads(tmp_path: Path) -> None:
    config_error(
        tmp_path,
        "4 attention heads are not a multiple of 3 KV heads",
        overrides={"llama.attention.head_count_kv": (3, V.UINT32)},
    )
    config_error(
        tmp_path,
        "hidden size 64 is not a multiple of 5 heads",
        overrides={"llama.attention.head_count": (5, V.UINT32), "llama.attention.head_count_kv": (5, V.UINT32)},
    )


@pytest.mark.parametrize("rope_dim", [15, 32])
def test_bad_rope_dimension(tmp_path: Path, rope_dim: int) -> None:
    config_error(
        tmp_path,
        f"RoPE dimension {rope_dim} does not fit head size 16",
        overrides={"llama.rope.dimension_count": (rope_dim, V.UINT32)},
    )


@pytest.mark.parametrize("window", [(0, V.UINT32), ("big", V.STRING), (True, V.BOOL)], ids=["zero", "string", "bool"])
def test_bad_sliding_window(tmp_path: Path, window: tuple[Any, V]) -> None:
    config_error(
        tmp_path,
        "llama.attention.sliding_window must be a positive integer",
        overrides={"llama.attention.sliding_window": window},
    )
