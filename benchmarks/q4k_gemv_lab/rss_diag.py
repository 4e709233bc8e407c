"""Peak RSS growth of load_model, and the CUDA kernels it launches (names), for the code on PYTHONPATH."""
import json, re, sys, torch
from rocmforge.models.loader import load_model


def status(key):
    return int(re.search(key + r":\s+(\d+) kB", open("/proc/self/status").read()).group(1)) * 1024


torch.empty(1, device="cuda")
before = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")
if sys.argv[2] == "prof":
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        model = load_model(sys.argv[1], dtype=torch.bfloat16, device="cuda", quantized=True)
        torch.cuda.synchronize()
    names = sorted({e.name for e in prof.events() if e.device_type.name == "CUDA"})
    print("\n".join(n[:150] for n in names))
else:
    model = load_model(sys.argv[1], dtype=torch.bfloat16, device="cuda", quantized=True)
    print(json.dumps({"peak_rss_growth_mib": (status("VmHWM") - before) / 2**20, "rss_after_mib": (status("VmRSS") - before) / 2**20}))
