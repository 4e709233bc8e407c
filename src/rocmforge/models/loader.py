"""Build a DecoderModel from a GGUF file: check every tensor's shape against the config, then place it.

On the CPU every tensor is dequantized at load into the matmul dtype (the path checked against llama.cpp). On a
GPU the matrices stay in their GGUF blocks (QuantLinear, and a QuantEmbedding for the token embedding): their
bytes stream tensor by tensor from the file's mapping to the device, so the model takes about its file size in
GPU memory and no float copy of it is ever made in host memory.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from gguf.constants import GGMLQuantizationType
from tqdm import tqdm

from rocmforge.config import ModelConfig
from rocmforge.errors import GGUFError, UnsupportedModelError
from rocmforge.gguf.quants import SUPPORTED_QUANT_TYPES, dequantize
from rocmforge.gguf.reader import GGUFFile, TensorInfo
from rocmforge.gguf.tokenizer import Tokenizer
from rocmforge.layers.linear import Linear
from rocmforge.layers.quant_linear import QuantEmbedding, QuantLinear
from rocmforge.models.decoder import DecoderModel, LayerWeights, ModelWeights

# Matrix types that stay dense on the device (as ``Linear`` in the matmul dtype): their bytes are already 2-4 per
# element, so converting them costs no memory over the file (F16/BF16) and cuBLAS is their fastest matmul.
_FLOAT_TYPES: dict[GGMLQuantizationType, torch.dtype] = {
    GGMLQuantizationType.F32: torch.float32,
    GGMLQuantizationType.F16: torch.float16,
    GGMLQuantizationType.BF16: torch.bfloat16,
}


class _TensorLoader:
    """Loads named tensors after checking their shapes; counts bytes for the progress bar.

    With ``quantized`` off (the CPU default) every tensor is dequantized on the host and placed as ``dtype``.
    With it on (the GPU default), matrices of block types are copied byte for byte from the mapping to the device
    and wrapped in QuantLinear, so no float copy of them ever exists on the host; vectors stay float32.
    """

    def __init__(
        self, gguf_file: GGUFFile, dtype: torch.dtype, device: torch.device, progress: tqdm, quantized: bool = False
    ) -> None:
        self.file = gguf_file
        self.dtype = dtype
        self.device = device
        self.progress = progress
        self.quantized = quantized

    def has(self, name: str) -> bool:
        return name in self.file.tensors

    def _info(self, name: str, shape: tuple[int, ...]) -> TensorInfo:
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
        return info

    def __call__(self, name: str, shape: tuple[int, ...], dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensor dequantized on the host, as ``dtype`` (the matmul dtype by default) on the device."""
        info = self._info(name, shape)
        try:
            tensor = dequantize(self.file.raw_tensor(name), info.qtype, info.shape)
        except UnsupportedModelError as exc:
            raise UnsupportedModelError(f"{self.file.path}: tensor {name!r}: {exc}") from None
        self.progress.update(info.n_bytes)
        return tensor.to(device=self.device, dtype=dtype or self.dtype)

    def _raw_on_device(self, info: TensorInfo) -> torch.Tensor:
        """The tensor's file bytes as a (rows, bytes per row) uint8 tensor on the device, copied from the mapping."""
        view = self.file.raw_tensor(info.name)
        with warnings.catch_warnings():
            # The mapping is read-only and torch warns that it cannot mark the tensor so; it is only read, by the
            # copy just below, and never outlives this function. Only this exact message is silenced.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
            host = torch.from_numpy(view)
        # A copy in every case: the mapping is closed once loading ends. To a GPU this is the one host-to-device
        # transfer of the bytes; torch stages pageable memory through small pinned buffers, not a full copy.
        raw = host.clone() if self.device.type == "cpu" else host.to(self.device)
        del host, view
        self.progress.update(info.n_bytes)
        return raw

    def matrix(self, name: str, shape: tuple[int, int], bias: torch.Tensor | None = None) -> Linear | QuantLinear:
        """A projection's weight: dequantized into a Linear, or (quantized loading) kept in its blocks."""
        if not self.quantized:
            return Linear(self(name, shape), bias)
        info = self._info(name, shape)
        raw = self._raw_on_device(info)
        if info.qtype in _FLOAT_TYPES:
            weight = raw.view(_FLOAT_TYPES[info.qtype]).view(shape).to(self.dtype)
            return Linear(weight, bias)
        return QuantLinear(raw, info.qtype, shape, bias, self.dtype)


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
        q_proj=load.matrix(p + "attn_q.weight", (cfg.q_size, hidden), bias("attn_q.bias", cfg.q_size)),
        k_proj=load.matrix(p + "attn_k.weight", (cfg.kv_size, hidden), bias("attn_k.bias", cfg.kv_size)),
        v_proj=load.matrix(p + "attn_v.weight", (v_size, hidden), bias("attn_v.bias", v_size)),
        o_proj=load.matrix(p + "attn_output.weight", (hidden, cfg.num_heads * cfg.v_head_dim)),
        ffn_norm=load(p + "ffn_norm.weight", (hidden,), f32),
        gate_proj=load.matrix(p + "ffn_gate.weight", (inter, hidden)),
        up_proj=load.matrix(p + "ffn_up.weight", (inter, hidden)),
        down_proj=load.matrix(p + "ffn_down.weight", (hidden, inter)),
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
    quantized: bool | None = None,
) -> ModelWeights:
    """Load every tensor the model needs; the file's mapping is no longer referenced afterwards.

    ``quantized`` keeps matrices of block types in their GGUF blocks on ``device`` (QuantLinear); None means
    "on a GPU only", so the CPU keeps dequantizing at load unless asked otherwise.
    """
    if quantized is None:
        quantized = device.type == "cuda"
    total = sum(t.n_bytes for t in gguf_file.tensors.values())
    with tqdm(
        total=total, unit="B", unit_scale=True, desc=f"loading {gguf_file.path.name}", disable=not progress
    ) as bar:
        load = _TensorLoader(gguf_file, dtype, device, bar, quantized)
        embed_shape = (config.vocab_size, config.hidden_size)
        embed_matrix = load.matrix("token_embd.weight", embed_shape) if quantized else None
        # A quantized embedding is looked up row by row and, when tied, is also the output projection.
        embed: torch.Tensor | QuantEmbedding
        if isinstance(embed_matrix, QuantLinear):
            embed = QuantEmbedding(embed_matrix)
        elif isinstance(embed_matrix, Linear):
            embed = embed_matrix.weight
        else:
            embed = load("token_embd.weight", embed_shape)
        layers = [_load_layer(load, config, i) for i in range(config.num_layers)]
        final_norm = load("output_norm.weight", (config.hidden_size,), torch.float32)
        lm_head: Linear | QuantLinear
        if not config.tie_word_embeddings:
            lm_head = load.matrix("output.weight", embed_shape)
        elif isinstance(embed, QuantEmbedding):
            lm_head = embed.weight
        else:
            lm_head = Linear(embed)
        freq_factors = (
            load("rope_freqs.weight", (config.rope_dim // 2,), torch.float32) if load.has("rope_freqs.weight") else None
        )
    # ModelWeights' embed_tokens is indexed by token ids and read for its device: QuantEmbedding provides both.
    return ModelWeights(embed, layers, final_norm, lm_head, freq_factors)


def load_model_and_tokenizer(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    progress: bool = False,
    quantized: bool | None = None,
) -> tuple[DecoderModel, Tokenizer]:
    """Open, validate and load a GGUF model and its tokenizer; the file is closed again before returning.

    dtype is the storage and matmul dtype of the weight matrices. On the CPU, activations and the KV cache stay
    float32 (the reference path); on a GPU they take dtype too (bf16 by default: half the KV cache bytes, and
    tensor-core matmuls), while norms, softmax and accumulations still run in float32 inside the kernels. On a
    GPU the quantized matrices keep their GGUF blocks; ``quantized`` overrides that choice (see
    :func:`load_weights`).
    """
    with GGUFFile(path) as gguf_file:
        config = ModelConfig.from_gguf(gguf_file)
        tokenizer = Tokenizer.from_metadata(gguf_file.metadata, source=str(gguf_file.path))
        weights = load_weights(gguf_file, config, dtype, torch.device(device), progress, quantized)
    return DecoderModel(config, weights, activation_dtype(dtype, device)), tokenizer


def load_model(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    quantized: bool | None = None,
) -> DecoderModel:
    """Load only the model (tests, benchmarks); see load_model_and_tokenizer."""
    with GGUFFile(path) as gguf_file:
        config = ModelConfig.from_gguf(gguf_file)
        weights = load_weights(gguf_file, config, dtype, torch.device(device), quantized=quantized)
    return DecoderModel(config, weights, activation_dtype(dtype, device))


def activation_dtype(dtype: torch.dtype, device: torch.device | str) -> torch.dtype:
    """Activations' (and the KV cache's) dtype: float32 on the CPU, the weights' matmul dtype on a GPU."""
    return torch.float32 if torch.device(device).type == "cpu" else dtype
