"""Model shapes for `rocmforge synth`: the hyper-parameters of real models, without their weights.

| arch  | preset | shapes of    | hidden | ffn   | layers | heads/kv | head | context | rope theta | tied | own vocab |
|-------|--------|--------------|--------|-------|--------|----------|------|---------|------------|------|-----------|
| llama | 0.5b   | SmolLM2-360M | 960    | 2560  | 32     | 15/5     | 64   | 8192    | 100000     | yes  | 49152     |
| llama | 1.5b   | SmolLM2-1.7B | 2048   | 8192  | 24     | 32/32    | 64   | 8192    | 130000     | yes  | 49152     |
| llama | 7b     | Llama-2-7B   | 4096   | 11008 | 32     | 32/32    | 128  | 4096    | 10000      | no   | 32000     |
| llama | 8b     | Llama-3-8B   | 4096   | 14336 | 32     | 32/8     | 128  | 8192    | 500000     | no   | 128256    |
| qwen2 | 0.5b   | Qwen2.5-0.5B | 896    | 4864  | 24     | 14/2     | 64   | 32768   | 1000000    | yes  | 151936    |
| qwen2 | 1.5b   | Qwen2.5-1.5B | 1536   | 8960  | 28     | 12/2     | 128  | 32768   | 1000000    | yes  | 151936    |
| qwen2 | 7b     | Qwen2.5-7B   | 3584   | 18944 | 28     | 28/4     | 128  | 32768   | 1000000    | no   | 152064    |

llama presets use RMS-norm epsilon 1e-5 and no biases; qwen2 presets use 1e-6 and biases on Q, K and V (as
Qwen2.5). Tied: the output matrix is the token embedding (no `output.weight`), as in the real model.

The vocabulary of a synthetic file is always the tokenizer's it copies (`--tokenizer-from`; by default
smollm2-135m's 49152 tokens for llama and qwen2.5-coder-0.5b's 151936 for qwen2), so the embedding and output
matrices have exactly the real shapes only where that tokenizer is the model's own ("own vocab" above): both llama
approximations (SmolLM2 uses the smollm2 tokenizer) and Qwen2.5 0.5B/1.5B. Llama-2-7B and Llama-3-8B get 49152
rows instead of 32000 / 128256 unless a Llama tokenizer is given; Qwen2.5-7B gets 151936 instead of its padded 152064.

The two llama "approximations" are real llama-architecture models (SmolLM2-360M and -1.7B, 0.36B and 1.7B
parameters): no Llama release has 0.5B or 1.5B parameters, and SmolLM2 shares the default tokenizer, so its file
is shaped exactly like the real one. Hidden 960 is not a multiple of 256, so K-quant mixes fall back to Q5_0/Q8_0
on most of the 0.5b llama tensors, exactly as llama.cpp's quantizer does for SmolLM2-360M (the same holds for
Qwen2.5-0.5B's hidden 896).

A hidden `tiny` preset per architecture (2 layers, hidden 256, ffn 512, 4 heads, 2 KV heads, head 64) exists for
tests: every row length is a multiple of 256, so every quant type applies without fallback. The llama tiny model
has an untied output matrix and the qwen2 one ties it, so that both layouts are exercised.
"""

from __future__ import annotations

from dataclasses import dataclass

from rocmforge.synth.errors import SynthError

ARCHITECTURES = ("llama", "qwen2")


@dataclass(frozen=True)
class Preset:
    """The shapes of one decoder-only model, as the GGUF metadata keys of its architecture describe it."""

    arch: str
    name: str
    reference: str  # the real model these shapes come from
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    context_length: int
    rope_theta: float
    rms_eps: float
    tied_embeddings: bool
    qkv_bias: bool
    reference_vocab: int  # the real model's vocabulary; the file takes the tokenizer's (see the module docstring)

    def __post_init__(self) -> None:
        if self.heads % self.kv_heads:
            raise ValueError(f"preset {self.arch}/{self.name}: {self.heads} heads, {self.kv_heads} KV heads")

    @property
    def q_size(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.kv_heads * self.head_dim

    def parameter_count(self, vocab: int) -> int:
        """Weights of the model with a `vocab`-token embedding (norms and biases included)."""
        attn = self.hidden * (self.q_size + 2 * self.kv_size) + self.q_size * self.hidden
        bias = self.q_size + 2 * self.kv_size if self.qkv_bias else 0
        layer = attn + bias + 3 * self.hidden * self.intermediate + 2 * self.hidden
        embeddings = vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * layer + embeddings + self.hidden


def _llama(name: str, reference: str, hidden: int, ffn: int, layers: int, heads: int, kv: int, head: int,
           ctx: int, theta: float, tied: bool, vocab: int) -> Preset:  # fmt: skip
    return Preset("llama", name, reference, hidden, ffn, layers, heads, kv, head, ctx, theta, 1e-5, tied, False, vocab)


def _qwen2(name: str, reference: str, hidden: int, ffn: int, layers: int, heads: int, kv: int, head: int,
           tied: bool, vocab: int) -> Preset:  # fmt: skip
    # Every Qwen2.5 size shares the context length, RoPE base, norm epsilon and Q/K/V biases.
    return Preset("qwen2", name, reference, hidden, ffn, layers, heads, kv, head, 32768, 1e6, 1e-6, tied, True, vocab)


TINY = "tiny"

PRESETS: dict[str, dict[str, Preset]] = {
    "llama": {
        p.name: p
        for p in (
            _llama("0.5b", "SmolLM2-360M", 960, 2560, 32, 15, 5, 64, 8192, 100_000.0, True, 49152),
            _llama("1.5b", "SmolLM2-1.7B", 2048, 8192, 24, 32, 32, 64, 8192, 130_000.0, True, 49152),
            _llama("7b", "Llama-2-7B", 4096, 11008, 32, 32, 32, 128, 4096, 10_000.0, False, 32000),
            _llama("8b", "Llama-3-8B", 4096, 14336, 32, 32, 8, 128, 8192, 500_000.0, False, 128256),
            _llama(TINY, "tests only", 256, 512, 2, 4, 2, 64, 512, 10_000.0, False, 0),
        )
    },
    "qwen2": {
        p.name: p
        for p in (
            _qwen2("0.5b", "Qwen2.5-0.5B", 896, 4864, 24, 14, 2, 64, True, 151936),
            _qwen2("1.5b", "Qwen2.5-1.5B", 1536, 8960, 28, 12, 2, 128, True, 151936),
            _qwen2("7b", "Qwen2.5-7B", 3584, 18944, 28, 28, 4, 128, False, 152064),
            _qwen2(TINY, "tests only", 256, 512, 2, 4, 2, 64, True, 0),
        )
    },
}


def public_preset_names(arch: str) -> list[str]:
    """The presets `--help` and error messages list (the test-only `tiny` stays unadvertised)."""
    return [name for name in PRESETS.get(arch, {}) if name != TINY]


def get_preset(arch: str, name: str) -> Preset:
    """The preset `name` of `arch`, or a SynthError that lists the valid choices."""
    arch = arch.lower()
    if arch not in PRESETS:
        raise SynthError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
    presets = PRESETS[arch]
    key = name.lower()
    if key not in presets:
        raise SynthError(f"unknown {arch} preset {name!r}; choose from {', '.join(public_preset_names(arch))}")
    return presets[key]
