import os, sys, re
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
sys.path.insert(0, "build/lab")
from aot import compile_sm90, sass_stats
import q4k_t as T
KERNEL = os.environ.get("KERNEL", "q4k_t")
sig = {"x_ptr": os.environ.get("XT", "*bf16"), "out_ptr": "*fp32", "qs_ptr": "*i32", "sc_ptr": "*u8", "mn_ptr": "*u8", "d_ptr": "*fp16", "dmin_ptr": "*fp16",
       "N": "i32", "N_SB": "i32", "STEPS_PER_SPLIT": "i32", **({"CS": "i32"} if KERNEL != "q4k_t" else {}), "TN": "constexpr", "G": "constexpr", **({"CPT": "constexpr"} if KERNEL == "q4k_t3" else {}), "LOAD_ONLY": "constexpr"}
for tn, g, w, cpt in [tuple(int(v) for v in (c + ",4").split(",")[:4]) for c in sys.argv[1:]]:
    k = compile_sm90(getattr(T, KERNEL), sig, {"TN": tn, "G": g, "LOAD_ONLY": 0, **({"CPT": cpt} if KERNEL == "q4k_t3" else {})}, num_warps=w, num_stages=1,
                     div16=("x_ptr", "out_ptr", "qs_ptr", "sc_ptr", "mn_ptr", "d_ptr", "dmin_ptr"))
    sass = k.asm["sass"]
    open(f"build/lab/{KERNEL}_{tn}_{g}_{w}_{cpt}.sass", "w").write(sass)
    st = sass_stats(k)
    regs = k.n_regs if hasattr(k, "n_regs") else None
    m = re.findall(r"\.reg|REG", "")
    # loop body: between the backward branch target and BRA
    lines = [l for l in sass.splitlines() if re.match(r"^\s+/\*[0-9a-f]{4}\*/", l)]
    regs = max(int(r) for r in re.findall(r"\bR(\d+)\b", sass)) + 1
    body = sass.split("BRA")[0]
    print(tn, g, w, "regs~", regs, "instr/weight(total)", round(st["n"] / 1, 1), st)
    ir = k.asm["ttgir"]
    for l in ir.splitlines():
        if l.startswith("#blocked"): print("  ", l[:160])
        if "convert_layout" in l: print("   CVT", l.strip()[:160])
