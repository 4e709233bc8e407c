"""AOT-compile a Triton kernel for sm_90 here (no GPU) and report SASS stats."""
import re
from collections import Counter
import triton
from triton.compiler import ASTSource
from triton.backends.compiler import GPUTarget

def compile_sm90(fn, signature, constexprs, num_warps=4, num_stages=3, div16=()):
    names = fn.arg_names
    attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in div16}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": num_stages})

def sass_stats(k, path=None):
    sass = k.asm["sass"]
    if path:
        open(path, "w").write(sass)
    ops = []
    for l in sass.splitlines():
        m = re.match(r"^\S+\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", l)
        if m:
            ops.append(m.group(2))
    c = Counter(o.split(".")[0] for o in ops)
    key = {k2: c[k2] for k2 in ("LDG", "LDS", "STS", "BAR", "SHFL", "FFMA", "FADD", "FMUL", "LOP3", "SHF", "I2F", "PRMT", "F2F", "IMAD", "IADD3", "LDGSTS")}
    return dict(n=len(ops), shared=k.metadata.shared, **key)
