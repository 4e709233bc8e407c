import os, sys
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
sys.path.insert(0, "build/lab"); sys.path.insert(0, "src")
from aot import compile_sm90, sass_stats
from rocmforge.kernels.triton.packed_gemv import _q4_k_gemv_kernel as K
sig = {"x_ptr": "*bf16", "out_ptr": "*fp32", "qs_ptr": "*i32", "sc_ptr": "*u8", "mn_ptr": "*u8", "d_ptr": "*fp16", "dmin_ptr": "*fp16",
       "N": "i32", "K": "i32", "SPLIT_K": "i32", "ONE": "i32", "TQ": "constexpr"}
k = compile_sm90(K, sig, {"TQ": 32}, num_warps=4, num_stages=3,
                 div16=("x_ptr", "out_ptr", "qs_ptr", "sc_ptr", "mn_ptr", "d_ptr", "dmin_ptr", "N", "K"))
open("build/lab/prod_q4k.sass", "w").write(k.asm["sass"])
print(sass_stats(k))
for l in k.asm["ttgir"].splitlines():
    if "convert_layout" in l or l.startswith("#blocked"): print("   ", l.strip()[:170])
