"""Which ggml type each tensor of a synthetic model gets, for every `--quant` choice.

Single types (`f32`, `f16`, `bf16`, `q8_0`, `q4_0`, `q4_1`, `q5_0`, `q5_1`, `q2_k`, `q3_k`, `q4_k`, `q5_k`,
`q6_k`) store every matrix, embedding and output included, in that type, like `llama-quantize --pure`: a benchmark
of one kernel then measures that kernel only. `q8_0` is also exactly llama.cpp's Q8_0 file type.

The mixes `q4_k_m` and `q5_k_m` follow `llama_tensor_get_type` in llama.cpp's `src/llama-quant.cpp`:

- `output.weight`, or `token_embd.weight` when the model ties it to the output: Q6_K (Q8_0 when its rows are not a
  multiple of 256). An untied `token_embd.weight` keeps the base type (Q4_K / Q5_K), as in llama.cpp (so a
  Llama-2-7B Q4_K_M has a Q4_K embedding and a Q6_K output).
- `attn_v.weight` and `ffn_down.weight`: Q6_K in the layers where llama.cpp's `use_more_bits(i, n)` holds (the first
  and last eighth of the layers and every third layer between: half of them), the base type elsewhere. `i` is the
  layer number, as llama.cpp counts now (it sorts tensors by layer); files quantized before that counted layers in
  name order (blk.0, blk.1, blk.10, ...), so they pick another half of the layers, of the same total size.
- every other matrix: the base type.

Row lengths that are not a multiple of a type's block size fall back as in llama.cpp: Q4_K -> Q5_0, Q5_K -> Q5_1,
Q6_K -> Q8_0, and Q2_K / Q3_K -> Q4_0 (llama.cpp picks IQ4_NL, which rocmforge does not load; Q4_0 has the same
4.5 bits per weight), then F16 if even that block does not fit. Norm weights and biases are always F32.
"""

from __future__ import annotations

from dataclasses import dataclass

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

from rocmforge.synth.errors import SynthError
from rocmforge.synth.presets import Preset

Q = GGMLQuantizationType
FT = LlamaFileType

QK_K = 256


@dataclass(frozen=True)
class QuantScheme:
    name: str
    base: GGMLQuantizationType
    file_type: LlamaFileType  # written to general.file_type (what llama.cpp prints as the file's type)
    k_mix: bool = False  # llama.cpp's *_K_M rule (see the module docstring)


# Single K types are labelled with the closest llama.cpp file type: none of them is exactly a pure K file.
QUANT_SCHEMES: dict[str, QuantScheme] = {
    s.name: s
    for s in (
        QuantScheme("f32", Q.F32, FT.ALL_F32),
        QuantScheme("f16", Q.F16, FT.MOSTLY_F16),
        QuantScheme("bf16", Q.BF16, FT.MOSTLY_BF16),
        QuantScheme("q8_0", Q.Q8_0, FT.MOSTLY_Q8_0),
        QuantScheme("q4_0", Q.Q4_0, FT.MOSTLY_Q4_0),
        QuantScheme("q4_1", Q.Q4_1, FT.MOSTLY_Q4_1),
        QuantScheme("q5_0", Q.Q5_0, FT.MOSTLY_Q5_0),
        QuantScheme("q5_1", Q.Q5_1, FT.MOSTLY_Q5_1),
        QuantScheme("q2_k", Q.Q2_K, FT.MOSTLY_Q2_K),
        QuantScheme("q3_k", Q.Q3_K, FT.MOSTLY_Q3_K_S),
        QuantScheme("q4_k", Q.Q4_K, FT.MOSTLY_Q4_K_S),
        QuantScheme("q5_k", Q.Q5_K, FT.MOSTLY_Q5_K_S),
        QuantScheme("q6_k", Q.Q6_K, FT.MOSTLY_Q6_K),
        QuantScheme("q4_k_m", Q.Q4_K, FT.MOSTLY_Q4_K_M, k_mix=True),
        QuantScheme("q5_k_m", Q.Q5_K, FT.MOSTLY_Q5_K_M, k_mix=True),
    )
}

# llama.cpp's fallback when a row is not a multiple of the K block (IQ4_NL replaced by Q4_0, see above).
_FALLBACK: dict[GGMLQuantizationType, GGMLQuantizationType] = {
    Q.Q2_K: Q.Q4_0,
    Q.Q3_K: Q.Q4_0,
    Q.Q4_K: Q.Q5_0,
    Q.Q5_K: Q.Q5_1,
    Q.Q6_K: Q.Q8_0,
}


def get_scheme(name: str) -> QuantScheme:
    key = name.lower()
    if key not in QUANT_SCHEMES:
        raise SynthError(f"unknown quant type {name!r}; choose from {', '.join(QUANT_SCHEMES)}")
    return QUANT_SCHEMES[key]


@dataclass(frozen=True)
class TensorSpec:
    """One tensor to write: its GGUF name, torch-order shape (rows, cols), storage type and role."""

    name: str
    shape: tuple[int, ...]
    qtype: GGMLQuantizationType
    role: str  # "matrix", "norm" or "bias": decides how its random values are drawn

    @property
    def n_bytes(self) -> int:
        block_size, type_size = GGML_QUANT_SIZES[self.qtype]
        n = 1
        for d in self.shape:
            n *= d
        return n // block_size * type_size


def use_more_bits(layer: int, n_layers: int) -> bool:
    """llama.cpp's choice of the layers whose attn_v / ffn_down get more bits in *_K_M files."""
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


def _fit(qtype: GGMLQuantizationType, cols: int) -> GGMLQuantizationType:
    """`qtype`, or llama.cpp's fallback when `cols` is not a multiple of its block size."""
    if cols % GGML_QUANT_SIZES[qtype][0] == 0:
        return qtype
    fallback = _FALLBACK.get(qtype, Q.F16)
    return fallback if cols % GGML_QUANT_SIZES[fallback][0] == 0 else Q.F16


def matrix_type(
    scheme: QuantScheme, name: str, cols: int, layer: int | None, n_layers: int, tied: bool
) -> GGMLQuantizationType:
    """The storage type of the 2-D tensor `name` (layer index `layer`, None outside the blocks)."""
    if not scheme.k_mix:
        return _fit(scheme.base, cols)
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        # llama.cpp skips the generic fallback here and goes straight to Q8_0.
        return Q.Q6_K if cols % QK_K == 0 else Q.Q8_0
    qtype = scheme.base
    if layer is not None and name.endswith(("attn_v.weight", "ffn_down.weight")) and use_more_bits(layer, n_layers):
        qtype = Q.Q6_K
    return _fit(qtype, cols)


def plan_tensors(preset: Preset, vocab: int, scheme: QuantScheme) -> list[TensorSpec]:
    """Every tensor of the model in llama.cpp's converter order: embedding, blocks, final norm, output."""
    h, tied, n = preset.hidden, preset.tied_embeddings, preset.layers

    def matrix(name: str, rows: int, cols: int, layer: int | None = None) -> TensorSpec:
        return TensorSpec(name, (rows, cols), matrix_type(scheme, name, cols, layer, n, tied), "matrix")

    specs = [matrix("token_embd.weight", vocab, h)]
    for i in range(n):
        p = f"blk.{i}."
        specs.append(TensorSpec(p + "attn_norm.weight", (h,), Q.F32, "norm"))
        specs.append(matrix(p + "attn_q.weight", preset.q_size, h, i))
        specs.append(matrix(p + "attn_k.weight", preset.kv_size, h, i))
        specs.append(matrix(p + "attn_v.weight", preset.kv_size, h, i))
        if preset.qkv_bias:
            specs += [
                TensorSpec(p + "attn_q.bias", (preset.q_size,), Q.F32, "bias"),
                TensorSpec(p + "attn_k.bias", (preset.kv_size,), Q.F32, "bias"),
                TensorSpec(p + "attn_v.bias", (preset.kv_size,), Q.F32, "bias"),
            ]
        specs.append(matrix(p + "attn_output.weight", h, preset.q_size, i))
        specs.append(TensorSpec(p + "ffn_norm.weight", (h,), Q.F32, "norm"))
        specs.append(matrix(p + "ffn_gate.weight", preset.intermediate, h, i))
        specs.append(matrix(p + "ffn_up.weight", preset.intermediate, h, i))
        specs.append(matrix(p + "ffn_down.weight", h, preset.intermediate, i))
    specs.append(TensorSpec("output_norm.weight", (h,), Q.F32, "norm"))
    if not tied:
        specs.append(matrix("output.weight", vocab, h))
    return specs
