"""Run the Triton kernel tests on a GPU when there is one, else on the CPU through Triton's interpreter.

Triton decides between compiling and interpreting when a ``@triton.jit`` function is *defined*
(``triton.jit`` reads ``TRITON_INTERPRET`` at decoration time, verified with triton 3.x), and the
interpreter also needs the variable while launching (its first launch imports modules that check
it). So without a GPU this conftest, which pytest imports before the test modules beside it,
(re)imports the kernel modules with the variable set, and an autouse fixture keeps it set while
each kernel test runs. Outside these tests the variable is restored, so other tests never see an
interpreter they did not ask for; the interpreted kernels stay cached in ``sys.modules``, unused
there because ``triton_available()`` is False without a GPU.

One case defeats this: Triton's own standard library (``tl.sum``'s combine function, ...) is
defined with ``@triton.jit`` too, when ``triton`` is first imported. If some earlier test module
imported triton without the variable, the interpreter cannot run in this process; then the kernel
tests here are skipped and ``test_interpreter_in_subprocess`` runs them in a fresh interpreter
process instead (it is skipped otherwise).

Tests marked ``gpu`` are skipped when no CUDA/ROCm device is present.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator

import pytest
import torch

# Defined in this order: quant_matmul's kernel calls helpers from dequant_blocks, the split kernels split_arrival's.
_KERNEL_MODULES = (
    "rocmforge.kernels.triton.split_arrival",
    "rocmforge.kernels.triton.dequant_blocks",
    "rocmforge.kernels.triton.quant_matmul",
    "rocmforge.kernels.triton.packed_matmul",
    "rocmforge.kernels.triton.packed_gemv",
    "rocmforge.kernels.triton.paged_attention",
    "rocmforge.kernels.triton.norm_rope",
    "rocmforge.kernels.triton.rope_cache",
)

HAS_GPU = torch.cuda.is_available()
SUBPROCESS_TEST = "test_interpreter_in_subprocess"


def _triton_imported_compiled() -> bool:
    """True when triton's standard library was already defined for compilation, not interpretation."""
    standard = sys.modules.get("triton.language.standard")
    if standard is None:
        return False
    from triton.runtime.jit import JITFunction

    return isinstance(standard.cdiv, JITFunction)


# Whether the CPU interpreter can run in this process (irrelevant with a GPU).
INTERPRETER_IN_PROCESS = not HAS_GPU and not _triton_imported_compiled()


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


if INTERPRETER_IN_PROCESS:
    # Side effect at import on purpose: it must precede the import of the test modules.
    _import_kernels_interpreted()


@pytest.fixture(autouse=True)
def _triton_interpreter(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if INTERPRETER_IN_PROCESS:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Called with the whole session's items: only those of this directory are ours.
    here = os.path.dirname(__file__)
    no_gpu = pytest.mark.skip(reason="needs a CUDA or ROCm GPU")
    not_needed = pytest.mark.skip(reason="the kernel tests run in this process")
    moved = pytest.mark.skip(reason=f"triton was imported before TRITON_INTERPRET was set; {SUBPROCESS_TEST} runs this")
    for item in items:
        if not str(item.path).startswith(here):
            continue
        if item.name == SUBPROCESS_TEST:
            if HAS_GPU or INTERPRETER_IN_PROCESS:
                item.add_marker(not_needed)
        elif "gpu" in item.keywords:
            if not HAS_GPU:
                item.add_marker(no_gpu)
        elif not HAS_GPU and not INTERPRETER_IN_PROCESS:
            item.add_marker(moved)
