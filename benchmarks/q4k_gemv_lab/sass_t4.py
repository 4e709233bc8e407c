import os, sys
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
sys.path.insert(0, "build/lab")
from aot import compile_sm90, sass_stats
import q4k_t as T
sig = {"xw_ptr": "*i32", "xd_ptr": "*fp32", "xs_ptr": "*fp32", "out_ptr": "*fp32", "qs_ptr": "*i32", "sc_ptr": "*u8", "mn_ptr": "*u8", "d_ptr": "*fp16", "dmin_ptr": "*fp16",
       "N": "i32", "N_SB": "i32", "STEPS_PER_SPLIT": "i32", "CS": "i32", "TN": "constexpr", "G": "constexpr", "CPT": "constexpr", "PDL": "constexpr"}
for tn, g, w, cpt in [tuple(int(v) for v in c.split(",")) for c in sys.argv[1:]]:
    k = compile_sm90(T.q4k_t4, sig, {"TN": tn, "G": g, "CPT": cpt, "PDL": 0}, num_warps=w, num_stages=1,
                     div16=("xw_ptr", "xd_ptr", "xs_ptr", "out_ptr", "qs_ptr", "sc_ptr", "mn_ptr", "d_ptr", "dmin_ptr"))
    open(f"build/lab/t4_{tn}_{g}_{w}_{cpt}.sass", "w").write(k.asm["sass"])
    print(tn, g, w, cpt, sass_stats(k))
    for l in k.asm["ttgir"].splitlines():
        if "convert_layout" in l: print("   CVT", l.strip()[:170])
