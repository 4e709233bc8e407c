"""Instruction mix of loops in a SASS listing (aot.py's format: labels 'LBBn:', branches 'BRA LBBn')."""
import re, sys
from collections import Counter
for path in sys.argv[1:]:
    rows = [l.split("\t", 1)[-1].strip() for l in open(path).read().splitlines()[1:]]
    labels = {}
    ins = []
    for r in rows:
        m = re.match(r"^(LBB\d+):", r)
        if m:
            labels[m.group(1)] = len(ins)
            continue
        if r:
            ins.append(r.rstrip(";"))
    for i, t in enumerate(ins):
        m = re.search(r"BRA\s+(LBB\d+)", t)
        if m and labels.get(m.group(1), 1 << 30) <= i:
            body = ins[labels[m.group(1)]: i + 1]
            ops = Counter(re.sub(r"^@!?U?P\w+\s+", "", x).split()[0].split(".")[0] for x in body)
            print(path.split("/")[-1], "loop", len(body), dict(ops.most_common(16)))
