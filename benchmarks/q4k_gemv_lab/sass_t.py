import sys; sys.path.insert(0, "build/lab")
from aot import compile_sm90, sass_stats
import q4k_lab as L
sig = {"x_ptr": "*bf16", "out_ptr": "*fp32", "buf_ptr": "*i32", "N": "i32", "N_SB": "i32", "SB_SPLIT": "i32", "BLOCK_N": "constexpr", "LOAD_ONLY": "constexpr"}
k = compile_sm90(L.q4k_gemv_v3tp, sig, {"BLOCK_N": 64, "LOAD_ONLY": 0}, 4, 1, div16=("x_ptr", "out_ptr", "buf_ptr", "N"))
print(sass_stats(k, f"build/lab/v3tp.sass"))
