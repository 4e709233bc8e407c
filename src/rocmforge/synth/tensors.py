"""Random tensor data, drawn chunk by chunk in the tensor's storage type, never through a float copy of the tensor.

Quantized tensors are made of valid random blocks: every quant bit (and the packed 4- or 6-bit sub-block scales of
K-quants) is a random bit, and the f16 scale fields are set so that the dequantized weights have mean ~0 and
standard deviation `WEIGHT_STD` (0.02, as in trained models), whatever the type:

- `d` (the block scale) is `D_UNIT[type] * u` with `u` uniform in [0.5, 1.5] per block, so that blocks differ (a
  kernel reading the wrong block's scale gives wrong numbers) while the spread stays known;
- types with a minimum field get the one that centres the block: `m = -E[q] * d` for Q4_1 / Q5_1 (added), and
  `dmin = E[q] * d` for Q2_K / Q4_K / Q5_K (subtracted, times a random sub-block min of the same mean as the
  sub-block scales);
- Q4_0 / Q5_0 store `q - 8` / `q - 16`, whose mean is -0.5: a random sign on `d` removes that bias, as llama.cpp's
  own quantizer (which picks the sign of the largest weight) produces signed scales too.

`_UNIT_RMS` is the root mean square of the dequantized values for d = 1 under that scheme, worked out from the
uniform distributions of the fields (e.g. Q8_0: E[q^2] = 5461.5 for q uniform in -128..127). Q6_K's and Q5_K's `d`
come out near 1e-5, an f16 subnormal: real files of weights this small have them too (llama.cpp's quantizer gives
the same), so kernels must handle them anyway.

F32 / F16 / BF16 matrices are uniform in [-a, a] with the same standard deviation (uniform because it is several
times cheaper to draw than a normal distribution, which matters for 7B f16 files). Norm weights are 1 +- 0.05 and
biases have the matrices' spread; both stay F32.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from rocmforge.synth.mixes import TensorSpec

Q = GGMLQuantizationType

WEIGHT_STD = 0.02
NORM_SPREAD = 0.05
# Each chunk of a tensor is at most this many bytes in its storage type: peak memory is a few chunks, however
# large the tensor (a 7B f16 output matrix is 1 GB).
CHUNK_BYTES = 32 << 20
# E[u^2] for the per-block scale multiplier u ~ U(0.5, 1.5).
_U_LOW, _U_HIGH = 0.5, 1.5
_U_MEAN_SQUARE = 1.0 + (_U_HIGH - _U_LOW) ** 2 / 12


@dataclass(frozen=True)
class BlockLayout:
    """Where a block type keeps its f16 fields and how its random quants are spread."""

    d_offset: int
    unit_rms: float  # RMS of the dequantized values for d = 1 (and the centring minimum below)
    min_offset: int | None = None
    min_ratio: float = 0.0  # the minimum field's value as a multiple of d
    signed_d: bool = False


def _mean_square(values: range) -> float:
    return sum(v * v for v in values) / len(values)


def _scale_min_rms(scales: range, quants: range) -> tuple[float, float]:
    """(RMS, centring ratio) of x = d*s*q - dmin*m with s, m uniform on `scales`, q on `quants`, dmin = ratio*d."""
    es, eq = sum(scales) / len(scales), sum(quants) / len(quants)
    ratio = eq  # E[s*q] = ratio * E[m] because s and m share a distribution
    ms, mq = _mean_square(scales), _mean_square(quants)
    return math.sqrt(ms * mq - 2 * ratio * es * eq * es + ratio * ratio * ms), ratio


def _layouts() -> dict[GGMLQuantizationType, BlockLayout]:
    q2k_rms, q2k_ratio = _scale_min_rms(range(16), range(4))
    q4k_rms, q4k_ratio = _scale_min_rms(range(64), range(16))
    q5k_rms, q5k_ratio = _scale_min_rms(range(64), range(32))
    return {
        # x = d * (q - 8), q uniform in 0..15
        Q.Q4_0: BlockLayout(0, math.sqrt(_mean_square(range(-8, 8))), signed_d=True),
        # x = d * q + m, m = -7.5 d
        Q.Q4_1: BlockLayout(0, math.sqrt((16**2 - 1) / 12), min_offset=2, min_ratio=-7.5),
        Q.Q5_0: BlockLayout(0, math.sqrt(_mean_square(range(-16, 16))), signed_d=True),
        Q.Q5_1: BlockLayout(0, math.sqrt((32**2 - 1) / 12), min_offset=2, min_ratio=-15.5),
        Q.Q8_0: BlockLayout(0, math.sqrt(_mean_square(range(-128, 128)))),
        # scales[16] | qs[64] | d | dmin; x = d * s * q - dmin * m, s and m 4-bit, q 2-bit
        Q.Q2_K: BlockLayout(80, q2k_rms, min_offset=82, min_ratio=q2k_ratio),
        # hmask[32] | qs[64] | scales[12] | d; x = d * (s - 32) * q, s 6-bit, q in -4..3
        Q.Q3_K: BlockLayout(108, math.sqrt(_mean_square(range(-32, 32)) * _mean_square(range(-4, 4)))),
        # d | dmin | scales[12] | qs[128]; s and m 6-bit, q 4-bit
        Q.Q4_K: BlockLayout(0, q4k_rms, min_offset=2, min_ratio=q4k_ratio),
        # d | dmin | scales[12] | qh[32] | qs[128]; q 5-bit
        Q.Q5_K: BlockLayout(0, q5k_rms, min_offset=2, min_ratio=q5k_ratio),
        # ql[128] | qh[64] | scales int8[16] | d; x = d * s * (q - 32), q 6-bit
        Q.Q6_K: BlockLayout(208, math.sqrt(_mean_square(range(-128, 128)) * _mean_square(range(-32, 32)))),
    }


BLOCK_LAYOUTS = _layouts()
FLOAT_TYPES = (Q.F32, Q.F16, Q.BF16)
SUPPORTED_TYPES = frozenset(BLOCK_LAYOUTS) | frozenset(FLOAT_TYPES)


def d_unit(qtype: GGMLQuantizationType, std: float = WEIGHT_STD) -> float:
    """The mean block scale that gives dequantized weights of standard deviation `std`."""
    return std / (BLOCK_LAYOUTS[qtype].unit_rms * math.sqrt(_U_MEAN_SQUARE))


def _random_bytes(rng: np.random.Generator, n: int) -> np.ndarray:
    # The raw 64-bit output of the bit generator is about 4x faster than integers(0, 256, dtype=uint8).
    return rng.bit_generator.random_raw(-(-n // 8)).view(np.uint8)[:n]


def _put_f16(blocks: np.ndarray, offset: int, values: np.ndarray) -> None:
    blocks[:, offset : offset + 2] = values.astype(np.float16).view(np.uint8).reshape(-1, 2)


def random_blocks(rng: np.random.Generator, qtype: GGMLQuantizationType, n_blocks: int) -> np.ndarray:
    """`n_blocks` valid random blocks of `qtype`, (n_blocks, bytes per block) uint8, weights of std WEIGHT_STD."""
    layout = BLOCK_LAYOUTS[qtype]
    type_size = GGML_QUANT_SIZES[qtype][1]
    blocks = _random_bytes(rng, n_blocks * type_size).reshape(n_blocks, type_size)
    d = rng.uniform(_U_LOW, _U_HIGH, n_blocks) * d_unit(qtype)
    if layout.signed_d:
        d *= rng.integers(0, 2, n_blocks) * 2 - 1
    _put_f16(blocks, layout.d_offset, d)
    if layout.min_offset is not None:
        _put_f16(blocks, layout.min_offset, d * layout.min_ratio)
    return blocks


def random_floats(rng: np.random.Generator, n: int, std: float, mean: float = 0.0) -> np.ndarray:
    """`n` float32 values uniform around `mean` with standard deviation `std`, from 16 random bits each."""
    values = _random_bytes(rng, 2 * n).view(np.int16).astype(np.float32)
    values *= np.float32(std * math.sqrt(3) / 32768)
    if mean:
        values += np.float32(mean)
    return values


def _to_bf16(values: np.ndarray) -> np.ndarray:
    # Round to nearest even on the upper 16 bits; the values are small and finite, so no NaN/overflow handling.
    bits = values.view(np.uint32)
    return ((bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) >> 16).astype(np.uint16)


def _encode_floats(values: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    if qtype == Q.F32:
        return values
    if qtype == Q.F16:
        return values.astype(np.float16)
    return _to_bf16(values)


def tensor_chunks(spec: TensorSpec, rng: np.random.Generator, chunk_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
    """The tensor's bytes in storage order, as contiguous 1-D arrays of whole rows of at most ~`chunk_bytes`.

    The values depend only on `rng` and `chunk_bytes`, so a fixed seed gives the same file on every run.
    """
    rows = spec.shape[0] if len(spec.shape) > 1 else 1
    cols = spec.shape[-1]
    row_bytes = spec.n_bytes // rows
    rows_per_chunk = max(1, chunk_bytes // row_bytes)
    block_size = GGML_QUANT_SIZES[spec.qtype][0]
    for start in range(0, rows, rows_per_chunk):
        n_rows = min(rows_per_chunk, rows - start)
        n = n_rows * cols
        if spec.role == "norm":
            chunk = random_floats(rng, n, NORM_SPREAD / math.sqrt(3), mean=1.0)
        elif spec.role == "bias" or spec.qtype in FLOAT_TYPES:
            chunk = random_floats(rng, n, WEIGHT_STD)
        else:
            chunk = random_blocks(rng, spec.qtype, n // block_size)
        chunk = _encode_floats(chunk, spec.qtype) if spec.qtype in FLOAT_TYPES else chunk
        yield chunk.reshape(-1).view(np.uint8)
