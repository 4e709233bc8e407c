import sys; sys.path.insert(0, "build/lab")
from aot import compile_sm90, sass_stats
import q4k_lab as L
name = sys.argv[1]; bn = int(sys.argv[2]); nw = int(sys.argv[3])
fn = getattr(L, name)
sig = {a: "i32" for a in fn.arg_names}
sig.update(part_ptr="*fp32", count_ptr="*i32", x_ptr="*bf16", out_ptr="*fp32", qs_ptr="*i32", sc_ptr="*i64", mn_ptr="*i64", d_ptr="*fp16", dmin_ptr="*fp16", BLOCK_N="constexpr")
sig = {a: v for a, v in sig.items() if a in fn.arg_names}
for extra in getattr(L, "CONST_" + name, {}):
    sig[extra] = "constexpr"
ce = {"BLOCK_N": bn, **getattr(L, "CONST_" + name, {})}
k = compile_sm90(fn, sig, ce, nw, 3, div16=("x_ptr", "out_ptr", "qs_ptr", "sc_ptr", "mn_ptr", "d_ptr", "dmin_ptr", "N", "stride_qs", "stride_sb"))
print(sass_stats(k, f"build/lab/{name}.sass"))
