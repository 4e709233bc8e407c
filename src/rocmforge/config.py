"""Frozen configuration read from GGUF metadata."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from rocmforge.errors import GGUFError, UnsupportedModelError
from rocmforge.gguf.reader import GGUFFile

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3")

RopeStyle = Literal["norm", "neox"]
Activation = Literal["silu", "gelu_tanh"]

# llama.cpp's converter permutes Q/K rows of llama-family checkpoints so that RoPE rotates adjacent pairs
# ("norm"); the other architectures keep HF's layout and rotate the two halves of each head ("neox").
_ROPE_STYLE: dict[str, RopeStyle] = {"llama": "norm", "qwen2": "neox", "qwen3": "neox", "gemma3": "neox"}
# llama.cpp hard-codes Gemma 3's layer pattern when the file does not carry one: 5 sliding, then 1 global.
_GEMMA3_SWA_PERIOD = 6
_GEMMA3_ROPE_BASE_SWA = 10_000.0
# Far above any real model (the deepest have ~128 layers): the config builds per-layer tuples, so a corrupt
# block_count of 2**32 would otherwise allocate gigabytes before any tensor is checked.
MAX_LAYERS = 1 << 14


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of one decoder-only model, as llama.cpp reads them from GGUF metadata."""

    arch: str
    name: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int  # per-head size of queries and keys
    v_head_dim: int
    rope_dim: int  # leading dims of each head that RoPE rotates
    rope_theta: float
    rope_theta_swa: float  # RoPE base of sliding-window layers (Gemma 3 uses a smaller one)
    rope_style: RopeStyle
    rope_scaling_type: str  # "none" or "linear"
    rope_scaling_factor: float
    rms_norm_eps: float
    context_length: int
    vocab_size: int
    tie_word_embeddings: bool
    sliding_window: int | None
    sliding_window_layers: tuple[bool, ...]  # per layer: True where attention is windowed
    activation: Activation
    qkv_bias: bool
    qk_norm: bool
    post_norms: bool  # Gemma-style norms after attention and FFN, before the residual add
    embedding_scale: float  # token embeddings are multiplied by this (sqrt(hidden) on Gemma)
    attention_scale: float  # query scale applied before the softmax

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def layer_rope_theta(self, layer: int) -> float:
        return self.rope_theta_swa if self.sliding_window_layers[layer] else self.rope_theta

    def layer_window(self, layer: int) -> int | None:
        """How many most recent positions a query may attend to in this layer (None: all)."""
        return self.sliding_window if self.sliding_window_layers[layer] else None

    @classmethod
    def from_gguf(cls, gguf_file: GGUFFile) -> ModelConfig:
        return _parse_config(gguf_file)


def _get_int(f: GGUFFile, key: str, default: int | None = None, *, minimum: int = 1, maximum: int | None = None) -> int:
    value = f.metadata.get(key, default)
    if value is None:
        raise GGUFError(f"{f.path}: missing metadata key {key!r}")
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise GGUFError(f"{f.path}: metadata key {key!r} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise GGUFError(f"{f.path}: metadata key {key!r} is absurdly large: {value} (at most {maximum})")
    return value


def _get_float(f: GGUFFile, key: str, default: float | None = None) -> float:
    value = f.metadata.get(key, default)
    if value is None:
        raise GGUFError(f"{f.path}: missing metadata key {key!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise GGUFError(f"{f.path}: metadata key {key!r} must be a positive number, got {value!r}")
    return float(value)


def _per_layer_int(f: GGUFFile, key: str, num_layers: int) -> int:
    """Head counts may be stored per layer (an array); rocmforge supports only uniform ones."""
    value = f.metadata.get(key)
    if isinstance(value, list):
        # Check item types first: set() below raises TypeError on nested arrays (unhashable lists).
        if any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            raise GGUFError(f"{f.path}: metadata key {key!r} must hold integers, got {value[:8]!r}")
        if len(value) != num_layers or len(set(value)) != 1:
            raise UnsupportedModelError(f"{f.path}: per-layer {key!r} values {value[:8]}... are not supported")
        value = value[0]
    if value is None:
        raise GGUFError(f"{f.path}: missing metadata key {key!r}")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GGUFError(f"{f.path}: metadata key {key!r} must be an integer >= 1, got {value!r}")
    return value


def _sliding_layers(f: GGUFFile, arch: str, num_layers: int, window: int | None) -> tuple[bool, ...]:
    if window is None:
        return (False,) * num_layers
    pattern = f.metadata.get(f"{arch}.attention.sliding_window_pattern")
    if isinstance(pattern, list):
        if len(pattern) != num_layers:
            raise GGUFError(
                f"{f.path}: {arch}.attention.sliding_window_pattern has {len(pattern)} entries for {num_layers} layers"
            )
        return tuple(bool(p) for p in pattern)
    period = pattern if isinstance(pattern, int) and pattern > 0 else None
    if period is None and arch == "gemma3":
        period = _GEMMA3_SWA_PERIOD
    if period is None:
        return (True,) * num_layers  # Mistral-style: every layer windowed
    # As llama.cpp: within each period the last layer is global, the others sliding.
    return tuple((layer + 1) % period != 0 for layer in range(num_layers))


def _parse_config(f: GGUFFile) -> ModelConfig:
    arch = f.architecture
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedModelError(
            f"{f.path}: unsupported architecture {arch!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    num_layers = _get_int(f, f"{arch}.block_count", maximum=MAX_LAYERS)
    hidden_size = _get_int(f, f"{arch}.embedding_length")
    num_heads = _per_layer_int(f, f"{arch}.attention.head_count", num_layers)
    num_kv_heads = (
        _per_layer_int(f, f"{arch}.attention.head_count_kv", num_layers)
        if f"{arch}.attention.head_count_kv" in f.metadata
        else num_heads
    )
    if num_heads % num_kv_heads:
        raise GGUFError(f"{f.path}: {num_heads} attention heads are not a multiple of {num_kv_heads} KV heads")
    if hidden_size % num_heads and f"{arch}.attention.key_length" not in f.metadata:
        raise GGUFError(f"{f.path}: hidden size {hidden_size} is not a multiple of {num_heads} heads")
    head_dim = _get_int(f, f"{arch}.attention.key_length", hidden_size // num_heads)
    v_head_dim = _get_int(f, f"{arch}.attention.value_length", head_dim)
    rope_dim = _get_int(f, f"{arch}.rope.dimension_count", head_dim)
    if rope_dim > head_dim or rope_dim % 2:
        raise GGUFError(f"{f.path}: RoPE dimension {rope_dim} does not fit head size {head_dim}")

    scaling_type = str(f.metadata.get(f"{arch}.rope.scaling.type", "none"))
    scaling_factor = 1.0
    if scaling_type == "linear":
        scaling_factor = _get_float(f, f"{arch}.rope.scaling.factor")
    elif scaling_type not in ("none", ""):
        raise UnsupportedModelError(f"{f.path}: RoPE scaling {scaling_type!r} is not supported (only linear)")
    else:
        scaling_type = "none"

    tokens = f.metadata.get("tokenizer.ggml.tokens")
    default_vocab = len(tokens) if isinstance(tokens, list) else None
    embd = f.tensors.get("token_embd.weight")
    if default_vocab is None and embd is not None:
        default_vocab = embd.shape[0]
    vocab_size = _get_int(f, f"{arch}.vocab_size", default_vocab)

    window = f.metadata.get(f"{arch}.attention.sliding_window")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise GGUFError(f"{f.path}: {arch}.attention.sliding_window must be a positive integer, got {window!r}")
    rope_theta = _get_float(f, f"{arch}.rope.freq_base", 10_000.0)
    default_swa_base = _GEMMA3_ROPE_BASE_SWA if arch == "gemma3" else rope_theta
    is_gemma = arch == "gemma3"
    return ModelConfig(
        arch=arch,
        name=str(f.metadata.get("general.name", f.path.stem)),
        num_layers=num_layers,
        hidden_size=hidden_size,
        intermediate_size=_get_int(f, f"{arch}.feed_forward_length"),
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        v_head_dim=v_head_dim,
        rope_dim=rope_dim,
        rope_theta=rope_theta,
        rope_theta_swa=_get_float(f, f"{arch}.rope.freq_base_swa", default_swa_base),
        rope_style=_ROPE_STYLE[arch],
        rope_scaling_type=scaling_type,
        rope_scaling_factor=scaling_factor,
        rms_norm_eps=_get_float(f, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6),
        context_length=_get_int(f, f"{arch}.context_length", 4096),
        vocab_size=vocab_size,
        tie_word_embeddings="output.weight" not in f.tensors,
        sliding_window=window,
        sliding_window_layers=_sliding_layers(f, arch, num_layers, window),
        activation="gelu_tanh" if is_gemma else "silu",
        qkv_bias="blk.0.attn_q.bias" in f.tensors,
        qk_norm="blk.0.attn_q_norm.weight" in f.tensors,
        post_norms=is_gemma,
        embedding_scale=math.sqrt(hidden_size) if is_gemma else 1.0,
        attention_scale=1.0 / math.sqrt(head_dim),
    )


def describe(config: ModelConfig) -> dict[str, Any]:
    """A flat view for `rocmforge inspect`."""
    return {k: v for k, v in config.__dict__.items() if k != "sliding_window_layers"} | {
        "sliding_window_layers": "".join("S" if s else "G" for s in config.sliding_window_layers)
    }
