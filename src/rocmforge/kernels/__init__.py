"""Compute kernels: ``reference`` holds the plain torch oracles, ``triton`` the fused GPU versions.

Every Triton kernel is tested for parity against its torch reference (on the CPU through
``TRITON_INTERPRET=1``, on a GPU with the ``gpu`` test marker).
"""
