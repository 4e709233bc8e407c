"""Which program of a split launch finishes an output tile: an arrival counter, shared by the split kernels.

A matmul split over K (``packed_matmul``, ``packed_gemv``) and an attention split over keys (``paged_attention``)
have each program store its partial result, then count itself in on the tile's int32 counter; the program that
arrives last combines the partials and sets the counter back to zero for the next launch. No program waits on
another, so nothing can hang; the combining order is fixed by the kernel, not by which program came last, so
results stay deterministic.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["last_to_arrive"]


@triton.jit
def last_to_arrive(counter_ptr, count):
    """Count this program in on ``counter_ptr``; True for the last of ``count`` programs, after the others'
    partials are visible to it (it then reads them through L2, ``.cg``, and stores 0 to the counter).

    The barrier makes every thread's partial stores happen before one thread publishes the arrival; acq_rel at
    GPU scope releases them to, and acquires the others' for, whichever program arrives last.
    """
    tl.debug_barrier()
    return tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu") == count - 1
