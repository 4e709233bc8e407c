"""Every Triton kernel compiles for AMD and NVIDIA GPUs in the configuration it launches with there (kernel_compile.py).

Nothing here runs on a GPU: this checks that Triton's backends accept each kernel at each launch variant the
wrappers choose, within the architecture's shared memory, for GPUs the project cannot run here (AMD's MI300,
gfx942, with 64-lane wavefronts and Radeon 7900, gfx1100, with 32; NVIDIA's Ampere, sm80) and the Hopper cards
it does run on (sm90). A construct one backend refuses (it caught float32 dots at tf32x3 on AMD) fails here, not
on a user's GPU.
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
    "_gemv_kernel",
    "_quant_matmul_kernel",
    "_paged_attention_kernel",
    "_rope_store_kv_kernel",
    "_rms_norm_kernel",
    "_add_rms_norm_kernel",
    "_gated_activation_kernel",
}
ARCHS = ["gfx942", "gfx1100", "sm80", "sm90"]


def _backends() -> set[str]:
    try:
        from triton.backends import backends
    except ImportError:
        return set()
    return set(backends)


@pytest.mark.timeout(1200)
@pytest.mark.skipif(not {"amd", "nvidia"} <= _backends(), reason="Triton's AMD and NVIDIA backends are not installed")
def test_every_kernel_compiles_for_amd_and_nvidia_gpus() -> None:
    root = Path(__file__).resolve().parents[2]
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    command = [sys.executable, "-m", "tests.kernels.kernel_compile", *ARCHS]
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    kernels = re.search(r"(\d+) kernels \((.*)\)", result.stdout)
    assert kernels is not None, result.stdout[-2000:]
    assert set(kernels.group(2).split(", ")) >= EXPECTED_KERNELS
    summary = re.search(r"compiled for (.*): (\d+) launch variants ok, 0 failed", result.stdout)
    assert summary is not None and summary.group(1) == ", ".join(ARCHS), result.stdout[-2000:]
    assert int(summary.group(2)) >= 60 * len(ARCHS)  # every wrapper's variants, on every architecture
