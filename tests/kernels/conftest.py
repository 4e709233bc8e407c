"""Run the Triton kernel tests on a GPU when there is one, else on the CPU through Triton's interpreter.

Triton decides between compiling and interpreting when a ``@triton.jit`` function is *defined*
(``triton.jit`` reads ``TRITON_INTERPRET`` at decoration time, verified with triton 3.x), and the
interpreter also needs the variable while launching (its first launch imports modules that check
it). So without a GPU this conftest, which pytest imports before the test modules beside it,
(re)imports the kernel modules with the variable set, and an autouse fixture keeps it set while
each kernel test runs. Outside these tests the variable is restored, so other tests never see an
interpreter they did not ask for; the interpreted kernels stay cached in ``sys.modules``, unused
there because ``triton_available()`` is False without a GPU.

Tests marked ``gpu`` are skipped when no CUDA/ROCm device is present.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator

import pytest
import torch

# Defined in this order: quant_matmul's kernel calls helpers from dequant_blocks.
_KERNEL_MODULES = ("rocmforge.kernels.triton.dequant_blocks", "rocmforge.kernels.triton.quant_matmul")

HAS_GPU = torch.cuda.is_available()


def _import_kernels_interpreted() -> None:
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        for name in _KERNEL_MODULES:
            if name in sys.modules:
                # An earlier test module imported them compiled: define them again, interpreted.
                importlib.reload(sys.modules[name])
            else:
                importlib.import_module(name)
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


if not HAS_GPU:
    # Side effect at import on purpose: it must precede the import of the test modules.
    _import_kernels_interpreted()


@pytest.fixture(autouse=True)
def _triton_interpreter(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if not HAS_GPU:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA or ROCm GPU")
    here = os.path.dirname(__file__)
    for item in items:
        if "gpu" in item.keywords and str(item.path).startswith(here):
            item.add_marker(skip)
