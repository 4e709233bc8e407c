import os, sys
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
sys.path.insert(0, "build/lab")
from aot import compile_sm90, sass_stats
import q6k_t as T
sig = {"x_ptr": "*bf16", "out_ptr": "*fp32", "ql_ptr": "*i32", "qh_ptr": "*i16", "sc_ptr": "*i8", "d_ptr": "*fp16",
       "N": "i32", "K": "i32", "SPLIT_K": "i32", "ONE": "i32", "TQ": "constexpr"}
for tq, w in [(64, 2), (32, 4)]:
    k = compile_sm90(T.q6k_tile_gemv, sig, {"TQ": tq}, num_warps=w, num_stages=3, div16=("x_ptr", "out_ptr", "ql_ptr", "qh_ptr", "sc_ptr", "d_ptr", "N", "K"))
    open(f"build/lab/q6t_{tq}_{w}.sass", "w").write(k.asm["sass"])
    print(tq, w, sass_stats(k))
    for l in k.asm["ttgir"].splitlines():
        if "convert_layout" in l: print("   CVT", l.strip()[:150])
