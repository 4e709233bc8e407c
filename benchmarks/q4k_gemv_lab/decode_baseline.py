"""gpu_decode.py with one-row Q4_K matmuls sent back to packed_matmul (the previous kernel): same-run A/B."""
import runpy, sys
from gguf.constants import GGMLQuantizationType as Q
import rocmforge.kernels.triton.packed_gemv as g
g.GEMV_TYPES = frozenset({Q.Q6_K})
sys.argv[0] = "benchmarks/gpu_decode.py"
runpy.run_path("benchmarks/gpu_decode.py", run_name="__main__")
