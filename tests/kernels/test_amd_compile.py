"""Every Triton kernel compiles for AMD GPUs in the configuration it launches with on ROCm (amd_compile.py).

Nothing here runs on an AMD card: this checks that Triton's AMD backend accepts each kernel at each launch
variant the wrappers choose (on a wavefront of 64 lanes, gfx942 / MI300, and of 32, gfx1100 / Radeon 7900), so
that a construct only NVIDIA's backend takes (it caught float32 dots at tf32x3) fails here, not on a user's GPU.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# The kernels of every wrapper: a wrapper that stopped launching (or a kernel that vanished) fails the test.
EXPECTED_KERNELS = {
    "_packed_matmul_kernel",
    "_dequant_kernel",
    "_q4_k_gemv_kernel",
    "_q6_k_gemv_kernel",
    "_quant_matmul_kernel",
    "_paged_attention_kernel",
    "_rope_store_kv_kernel",
    "_rms_norm_kernel",
    "_add_rms_norm_kernel",
    "_gated_activation_kernel",
}


def _amd_backend() -> bool:
    try:
        from triton.backends import backends
    except ImportError:
        return False
    return "amd" in backends


@pytest.mark.timeout(900)
@pytest.mark.skipif(not _amd_backend(), reason="Triton's AMD backend is not installed")
def test_every_kernel_compiles_for_amd_gpus() -> None:
    root = Path(__file__).resolve().parents[2]
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    command = [sys.executable, "-m", "tests.kernels.amd_compile", "gfx942", "gfx1100"]
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = re.search(r"(\d+) launch variants of (\d+) kernels \((.*)\)", result.stdout)
    assert summary is not None, result.stdout[-2000:]
    assert set(summary.group(3).split(", ")) >= EXPECTED_KERNELS
    assert f"{2 * int(summary.group(1))} ok, 0 failed" in result.stdout
