"""Build a DecoderModel from a GGUF file: check every tensor's shape against the config, dequantize, place."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from rocmforge.config import ModelConfig
from rocmforge.errors import GGUFError, UnsupportedModelError
from rocmforge.gguf.quants import SUPPORTED_QUANT_TYPES, dequantize
from rocmforge.gguf.reader import GGUFFile
from rocmforge.gguf.tokenizer import Tokenizer
from rocmforge.layers.linear import Linear
from rocmforge.models.decoder import DecoderModel, LayerWeights, ModelWeights


class _TensorLoader:
    """Dequantizes named tensors after checking their shapes; counts bytes for the progress bar."""

    def __init__(self, gguf_file: GGUFFile, dtype: torch.dtype, device: torch.device, progress: tqdm) -> None:
        self.file = gguf_file
        self.dtype = dtype
        self.device = device
        self.progress = progress

    def has(self, name: str) -> bool:
        return name in self.file.tensors

    def __call__(self, name: str, shape: tuple[int, ...], dtype: torch.dtype | None = None) -> torch.Tensor:
        info = self.file.tensor_info(name)
        if info.shape != shape:
            raise GGUFError(
                f"{self.file.path}: tensor {name!r} has shape {list(info.shape)}, "
                f"but the model's metadata implies {list(shape)}"
            )
        # Refuse unsupported types before taking a view of the mapping: an exception raised with a view still
        # referenced from its traceback would keep the file mapped after the loader returns.
        if info.qtype not in SUPPORTED_QUANT_TYPES:
            raise UnsupportedModelError(
                f"{self.file.path}: tensor {name!r} has type {info.qtype.name}, which is not supported"
            )
        try:
            tensor = dequantize(self.file.raw_tensor(name), info.qtype, info.shape)
        except UnsupportedModelError as exc:
            raise UnsupportedModelError(f"{self.file.path}: tensor {name!r}: {exc}") from None
        self.progress.update(info.n_bytes)
        return tensor.to(device=self.device, dtype=dtype or self.dtype)


def _load_layer(load: _TensorLoader, cfg: ModelConfig, i: int) -> LayerWeights:
    p = f"blk.{i}."
    hidden, inter = cfg.hidden_size, cfg.intermediate_size
    v_size = cfg.num_kv_heads * cfg.v_head_dim
    f32 = torch.float32

    def bias(name: str, size: int) -> torch.Tensor | None:
        return load(p + name, (size,), f32) if cfg.qkv_bias else None

    def optional_norm(name: str, size: int) -> torch.Tensor | None:
        return load(p + name, (size,), f32) if load.has(p + name) else None

    return LayerWeights(
        attn_norm=load(p + "attn_norm.weight", (hidden,), f32),
        q_proj=Linear(load(p + "attn_q.weight", (cfg.q_size, hidden)), bias("attn_q.bias", cfg.q_size)),
        k_proj=Linear(load(p + "attn_k.weight", (cfg.kv_size, hidden)), bias("attn_k.bias", cfg.kv_size)),
        v_proj=Linear(load(p + "attn_v.weight", (v_size, hidden)), bias("attn_v.bias", v_size)),
        o_proj=Linear(load(p + "attn_output.weight", (hidden, cfg.num_heads * cfg.v_head_dim))),
        ffn_norm=load(p + "ffn_norm.weight", (hidden,), f32),
        gate_proj=Linear(load(p + "ffn_gate.weight", (inter, hidden))),
        up_proj=Linear(load(p + "ffn_up.weight", (inter, hidden))),
        down_proj=Linear(load(p + "ffn_down.weight", (hidden, inter))),
        q_norm=load(p + "attn_q_norm.weight", (cfg.head_dim,), f32) if cfg.qk_norm else None,
        k_norm=load(p + "attn_k_norm.weight", (cfg.head_dim,), f32) if cfg.qk_norm else None,
        post_attn_norm=optional_norm("post_attention_norm.weight", hidden) if cfg.post_norms else None,
        post_ffn_norm=optional_norm("post_ffw_norm.weight", hidden) if cfg.post_norms else None,
    )


def load_weights(
    gguf_file: GGUFFile,
    config: ModelConfig,
    dtype: torch.dtype,
    device: torch.device,
    progress: bool = False,
) -> ModelWeights:
    """Dequantize every tensor the model needs; the file's mapping is no longer referenced afterwards."""
    total = sum(t.n_bytes for t in gguf_file.tensors.values())
    with tqdm(
        total=total, unit="B", unit_scale=True, desc=f"loading {gguf_file.path.name}", disable=not progress
    ) as bar:
        load = _TensorLoader(gguf_file, dtype, device, bar)
        embed = load("token_embd.weight", (config.vocab_size, config.hidden_size))
        layers = [_load_layer(load, config, i) for i in range(config.num_layers)]
        final_norm = load("output_norm.weight", (config.hidden_size,), torch.float32)
        lm_head = Linear(
            embed if config.tie_word_embeddings else load("output.weight", (config.vocab_size, config.hidden_size))
        )
        freq_factors = (
            load("rope_freqs.weight", (config.rope_dim // 2,), torch.float32) if load.has("rope_freqs.weight") else None
        )
    return ModelWeights(embed, layers, final_norm, lm_head, freq_factors)


def load_model_and_tokenizer(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> tuple[DecoderModel, Tokenizer]:
    """Open, validate and load a GGUF model and its tokenizer; the file is closed again before returning.

    dtype is the storage and matmul dtype of the weight matrices; activations and norms stay float32.
    """
    with GGUFFile(path) as gguf_file:
        config = ModelConfig.from_gguf(gguf_file)
        tokenizer = Tokenizer.from_metadata(gguf_file.metadata, source=str(gguf_file.path))
        weights = load_weights(gguf_file, config, dtype, torch.device(device), progress)
    return DecoderModel(config, weights, torch.float32), tokenizer


def load_model(
    path: str | Path, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
) -> DecoderModel:
    """Load only the model (tests, benchmarks); see load_model_and_tokenizer."""
    with GGUFFile(path) as gguf_file:
        config = ModelConfig.from_gguf(gguf_file)
        weights = load_weights(gguf_file, config, dtype, torch.device(device))
    return DecoderModel(config, weights, torch.float32)
