"""Triton kernels (one code base for ROCm and CUDA); the torch oracles live in ``rocmforge.kernels.reference``.

Import :mod:`rocmforge.kernels.triton.quant_matmul` only where :func:`triton_available` says so: this
package itself does not import Triton, so callers can check availability without it installed.
"""

from rocmforge.kernels.triton.availability import interpreter_enabled, triton_available, triton_device

__all__ = ["interpreter_enabled", "triton_available", "triton_device"]
