import os, sys
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
sys.path.insert(0, "build/lab")
from aot import compile_sm90, sass_stats
import q4k_v5 as V
sig = {"x_ptr": "*bf16", "out_ptr": "*fp32", "qs_ptr": "*i32", "sc_ptr": "*i64", "mn_ptr": "*i64", "d_ptr": "*fp16", "dmin_ptr": "*fp16",
       "N": "i32", "stride_qs": "i32", "stride_sc": "i32", "stride_sb": "i32", "SB_SPLIT": "i32", "N_SB": "i32", "BLOCK_N": "constexpr", "PREFETCH": "constexpr", "NO_X": "constexpr", "NO_SC": "constexpr", "LOAD_ONLY": "constexpr"}
for bn, w in [(int(a), int(b)) for a, b in (c.split(",") for c in sys.argv[1:])]:
    k = compile_sm90(V.q4k_v5, sig, {"BLOCK_N": bn, "PREFETCH": 1, "NO_X": 0, "NO_SC": 0, "LOAD_ONLY": 0}, num_warps=w, num_stages=1,
                     div16=("x_ptr", "out_ptr", "qs_ptr", "sc_ptr", "mn_ptr", "d_ptr", "dmin_ptr", "stride_qs", "stride_sc", "stride_sb"))
    st = sass_stats(k, f"build/lab/v5_{bn}_{w}.sass")
    print(bn, w, k.metadata.shared if False else "", st)
import re as _re
ir = k.asm["ttgir"]
open("build/lab/v5.ttgir", "w").write(ir)
for l in ir.splitlines():
    if "#blocked" in l and l.startswith("#"): print(l[:200])
    if "tt.load" in l or "convert_layout" in l: print("   ", l.strip()[:220])
