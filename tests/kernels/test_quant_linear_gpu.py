"""QuantLinear, the row dequantization kernel and the quantized loader on a CUDA/ROCm GPU at model sizes.

The CPU and interpreter versions of these checks are in tests/test_quant_linear.py. Here: 7B-sized projections
on both matmul paths, every type through the row kernel, the embedding gather over a 32000-row vocabulary, and a
synthetic Q4_K_M model (written on the spot by ``rocmforge.synth``) loaded onto the GPU: its weights take about
the file's bytes of GPU memory, the host never holds a float copy, and its logits match the CPU path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from rocmforge.gguf.quants import SUPPORTED_QUANT_TYPES, dequantize
from rocmforge.gguf.reader import GGUFFile
from rocmforge.layers.quant_linear import QuantLinear, embedding_rows, fused_max_m
from tests.quant_blocks import random_blocks, uniform_f16_bits

Q = GGMLQuantizationType
pytestmark = pytest.mark.gpu

FLOAT_DTYPES = {Q.F32: torch.float32, Q.F16: torch.float16, Q.BF16: torch.bfloat16}


def gpu_raw(qtype: GGMLQuantizationType, n: int, k: int, seed: int) -> torch.Tensor:
    """Random GGUF bytes (n, row_bytes) on the GPU (f16 scales in +-0.05, as the CPU tests)."""
    rng = np.random.default_rng(seed)
    if qtype in FLOAT_DTYPES:
        values = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 0.05
        return values.to(FLOAT_DTYPES[qtype]).view(torch.uint8).cuda()
    block, _ = GGML_QUANT_SIZES[qtype]
    return torch.from_numpy(random_blocks(rng, qtype, n, k // block, uniform_f16_bits(0.05))).cuda()


def check_within(
    out: torch.Tensor, x: torch.Tensor, raw: torch.Tensor, qtype: GGMLQuantizationType, rtol: float
) -> None:
    """|out - x @ W.T| <= rtol * (|x| @ |W|.T) elementwise, in float64 on the GPU (W from the torch dequantizer)."""
    weight = dequantize(raw, qtype, (raw.shape[0], x.shape[1])).double()
    xd = x.double()
    bound = rtol * (xd.abs() @ weight.abs().T) + 1e-30
    worst = ((out.double() - xd @ weight.T).abs() / bound).max().item()
    assert worst <= 1.0, f"{qtype.name}: error reaches {worst:.3g} x the bound (rtol {rtol})"


@pytest.mark.parametrize("m", [1, 16, 17, 64, 512])
@pytest.mark.parametrize("n,k", [(4096, 4096), (4096, 11008)])
@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q6_K, Q.Q8_0, Q.F16])
def test_gpu_quant_linear_model_shapes(qtype: GGMLQuantizationType, n: int, k: int, m: int) -> None:
    raw = gpu_raw(qtype, n, k, seed=m + n)
    x = torch.randn(m, k, device="cuda", generator=torch.Generator("cuda").manual_seed(m))
    layer = QuantLinear(raw, qtype, (n, k))
    out = layer(x)
    assert out.shape == (m, n) and out.dtype == torch.float32
    # Fused kernel: float32 throughout; otherwise bf16 weight and activations with float32 accumulation.
    check_within(out, x, raw, qtype, 1e-4 if m <= fused_max_m(qtype) else 1.6e-2)
    if m <= 16:  # the fused kernel's range, whatever the dispatch picks
        check_within(layer.fused_matmul(x), x, raw, qtype, 1e-4)


def test_gpu_chunked_vocabulary_projection() -> None:
    # 32000 x 4096 in bf16 is 250 MiB: the large-M path dequantizes it in 64 MiB chunks.
    n, k = 32000, 4096
    raw = gpu_raw(Q.Q6_K, n, k, seed=3)
    x = torch.randn(64, k, device="cuda", generator=torch.Generator("cuda").manual_seed(3))
    layer = QuantLinear(raw, Q.Q6_K, (n, k), dtype=torch.float32)
    check_within(layer(x), x, raw, Q.Q6_K, 1e-4)
    check_within(QuantLinear(raw, Q.Q6_K, (n, k))(x), x, raw, Q.Q6_K, 1.6e-2)


@pytest.mark.parametrize("qtype", sorted(SUPPORTED_QUANT_TYPES, key=lambda t: t.value))
def test_gpu_dequantize_rows_every_type(qtype: GGMLQuantizationType) -> None:
    from rocmforge.kernels.triton.dequant_rows import dequantize_rows

    n, k = 1024, 4096  # as benchmarks/gpu_linear.py --warm compiles it
    raw = gpu_raw(qtype, n, k, seed=4)
    expected = dequantize(raw, qtype, (n, k))  # the torch dequantizer, run on the GPU
    torch.testing.assert_close(dequantize_rows(raw, qtype, k, torch.float32), expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(
        dequantize_rows(raw, qtype, k, torch.bfloat16), expected.to(torch.bfloat16), rtol=0, atol=0
    )


def test_gpu_embedding_rows() -> None:
    vocab, k = 32000, 4096
    raw = gpu_raw(Q.Q6_K, vocab, k, seed=5)
    ids = torch.randint(0, vocab, (3, 40), device="cuda", generator=torch.Generator("cuda").manual_seed(5))
    rows = embedding_rows(raw, Q.Q6_K, k, ids)
    assert rows.shape == (3, 40, k)
    expected = dequantize(raw[ids.reshape(-1)], Q.Q6_K, (120, k)).view(3, 40, k)
    torch.testing.assert_close(rows, expected, rtol=1e-6, atol=0)


# -- a synthetic Q4_K_M model on the GPU ---------------------------------------------------------------------------

_MEASURE = """
import json, re, sys, torch
from rocmforge.models.loader import load_model

def status(key):
    return int(re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024

device, quantized = sys.argv[2], sys.argv[3] == "1"
if device == "cuda":
    torch.empty(1, device="cuda")  # the CUDA context first: its host memory is not the loader's
before_rss = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # resets the peak (VmHWM) to the current RSS
before = torch.cuda.memory_allocated() if device == "cuda" else 0
model = load_model(sys.argv[1], dtype=torch.bfloat16, device=device, quantized=quantized)
print(json.dumps({
    "gpu_bytes": torch.cuda.memory_allocated() - before if device == "cuda" else 0,
    "peak_rss_growth": status("VmHWM") - before_rss,
}))
"""


def measure_load(path: Path, device: str, quantized: bool) -> dict[str, int]:
    """GPU bytes allocated by loading ``path`` and the growth of the host's peak RSS, in a fresh process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*sys.path, os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-c", _MEASURE, str(path), device, "1" if quantized else "0"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def q4_k_m_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rocmforge.synth import Preset, write_synthetic_model
    from tests.gguf.factories import write_model

    folder = tmp_path_factory.mktemp("synth")
    tokenizer = write_model(folder / "tokenizer.gguf").path  # the factories' small BPE vocabulary
    # Qwen2-style (Q/K/V biases), 4 layers of a 1.5B-class width (~110 MB): llama.cpp's Q4_K_M rule puts attn_v
    # and ffn_down of layers 2 and 3 in Q6_K, so both a stacked q/k/v matrix and a Q4_K + Q6_K pair occur.
    preset = Preset("qwen2", "gpu-test", "tests only", 2048, 5632, 4, 16, 4, 128, 4096, 1e6, 1e-6, False, True, 0)
    return write_synthetic_model(folder / "q4_k_m.gguf", preset, "q4_k_m", tokenizer_from=tokenizer).path


def test_gpu_loaded_model_memory(q4_k_m_model: Path) -> None:
    with GGUFFile(q4_k_m_model) as f:
        tensor_bytes = sum(t.n_bytes for t in f.tensors.values())
        float_bytes = sum(4 * t.n_elements for t in f.tensors.values())
    measured = measure_load(q4_k_m_model, "cuda", quantized=True)
    mib = {key: f"{value / 2**20:.1f} MiB" for key, value in measured.items()}
    print(f"\ntensor bytes {tensor_bytes / 2**20:.1f} MiB, float32 {float_bytes / 2**20:.1f} MiB, measured {mib}")
    # The weights take the file's bytes on the GPU (plus the caching allocator's unsplit block ends), not their
    # bf16 size (~3.5x here).
    assert 0.99 * tensor_bytes <= measured["gpu_bytes"] <= 1.05 * tensor_bytes
    # The host holds the mapped file pages it copies from and small staging buffers, never a float copy.
    assert measured["peak_rss_growth"] < tensor_bytes + 0.1 * float_bytes


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def test_gpu_loaded_model_matches_cpu(q4_k_m_model: Path) -> None:
    from rocmforge.models.loader import load_model

    cpu = load_model(q4_k_m_model, dtype=torch.float32)
    tokens = [(7 * i + 3) % 200 + 1 for i in range(24)]
    cache = cpu.new_kv_cache(32)
    expected = [cpu.forward(torch.tensor(tokens), 0, cache, all_logits=True)]
    expected += [cpu.forward(torch.tensor([t]), len(tokens) + i, cache) for i, t in enumerate([11, 12])]
    del cpu
    errors: dict[str, list[float]] = {}
    for dtype in (torch.float32, torch.bfloat16):
        gpu = load_model(q4_k_m_model, dtype=dtype, device="cuda")
        cache = gpu.new_kv_cache(32)
        # Prefill of 24 rows: the dequantize + matmul path; the two decode steps: the fused kernel.
        got = [gpu.forward(torch.tensor(tokens), 0, cache, all_logits=True)]
        got += [gpu.forward(torch.tensor([t]), len(tokens) + i, cache) for i, t in enumerate([11, 12])]
        errors[str(dtype)] = [_relative_error(g.cpu(), e) for g, e in zip(got, expected, strict=True)]
        del gpu
    print(f"\nrelative logit error vs CPU float32 (prefill, decode, decode): {errors}")
    assert max(errors["torch.float32"]) < 1e-4  # same math, other summation orders
    assert max(errors["torch.bfloat16"]) < 3e-2  # bf16 prefill matmuls (the KV cache carries them into decode)
