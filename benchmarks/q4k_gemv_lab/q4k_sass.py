import sys; sys.path.insert(0, "build/lab")
from aot import compile_sm90, sass_stats
from rocmforge.kernels.triton import packed_matmul as pm
sig = {"x_ptr": "*bf16", "out_ptr": "*fp32", "p0": "*i32", "p1": "*u8", "p2": "*u8", "p3": "*fp16", "p4": "*fp16",
       "M": "i32", "N": "i32", "K": "i32", "stride_xm": "i32", "SPLIT_K": "i32",
       "QTYPE": "constexpr", "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "KB": "constexpr", "PRECISION": "constexpr", "UPCAST": "constexpr", "REDUCE_EACH_STEP": "constexpr"}
ce = {"QTYPE": 12, "BLOCK_M": 1, "BLOCK_N": 16, "KB": 8, "PRECISION": "tf32x3", "UPCAST": False, "REDUCE_EACH_STEP": False}
k = compile_sm90(pm._packed_matmul_kernel, sig, ce, 4, 3, div16=("x_ptr","out_ptr","p0","p1","p2","p3","p4","N","K","stride_xm"))
print(sass_stats(k, "build/lab/q4k.sass"))
