"""Random raw GGUF blocks for tests: random quant bytes with controlled f16 scale fields."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

Q = GGMLQuantizationType
# Makes n f16 scale bit patterns from a random generator.
ScaleBits = Callable[[np.random.Generator, int], np.ndarray]

# Byte offsets of the f16 scale fields inside one block of each block-quantized type.
F16_SCALE_OFFSETS: dict[GGMLQuantizationType, tuple[int, ...]] = {
    Q.Q4_0: (0,),
    Q.Q4_1: (0, 2),
    Q.Q5_0: (0,),
    Q.Q5_1: (0, 2),
    Q.Q8_0: (0,),
    Q.Q2_K: (80, 82),
    Q.Q3_K: (108,),
    Q.Q4_K: (0, 2),
    Q.Q5_K: (0, 2),
    Q.Q6_K: (208,),
}
BLOCK_TYPES = sorted(F16_SCALE_OFFSETS, key=lambda t: t.value)


def finite_f16_bits(rng: np.random.Generator, n: int) -> np.ndarray:
    """n random f16 bit patterns covering zeros, subnormals and the full finite range."""
    bits = rng.integers(0, 1 << 16, n, dtype=np.uint16)
    # Exponent all ones means inf/NaN: clearing its top bit keeps the value finite.
    return np.where((bits & 0x7C00) == 0x7C00, bits & 0xBFFF, bits).astype(np.uint16)


def uniform_f16_bits(bound: float) -> ScaleBits:
    """Scales uniform in [-bound, bound]: weights of a realistic magnitude."""
    return lambda rng, n: rng.uniform(-bound, bound, n).astype(np.float16).view(np.uint16)


def constant_f16_bits(value: float) -> ScaleBits:
    return lambda rng, n: np.full(n, value, dtype=np.float16).view(np.uint16)


def random_blocks(
    rng: np.random.Generator,
    qtype: GGMLQuantizationType,
    rows: int,
    blocks_per_row: int,
    scale_bits: ScaleBits = finite_f16_bits,
) -> np.ndarray:
    """Raw bytes (rows, blocks_per_row * bytes per block) uint8, as GGUFReader and GGUFWriter shape them."""
    _, type_size = GGML_QUANT_SIZES[qtype]
    n_blocks = rows * blocks_per_row
    blocks = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)
    # Types without f16 scale fields (IQ types, for unsupported-type tests) stay fully random.
    for offset in F16_SCALE_OFFSETS.get(qtype, ()):
        blocks[:, offset : offset + 2] = scale_bits(rng, n_blocks).view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, blocks_per_row * type_size)
