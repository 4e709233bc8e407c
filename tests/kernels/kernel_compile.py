"""Compile every Triton kernel of the package for AMD and NVIDIA GPUs, ahead of time, on a machine without one.

``python -m tests.kernels.kernel_compile [ARCH ...]`` (default: every architecture of :data:`ARCHS`). For each
architecture, every kernel wrapper runs on small CPU tensors in the configuration it would launch with there
(``kernel_target`` answers "hip" or "cuda"; shared memory is budgeted as on that GPU); the launches are recorded
instead of run, then compiled with Triton's AMD or NVIDIA backend (Triton's wheel carries both, with their
assembler and linker) and checked against the architecture's shared memory. It prints a line per failure and a
summary, and exits 1 if any failed. tests/kernels/test_kernel_compile.py runs it in a subprocess:
TRITON_INTERPRET must be off when the kernels are defined.

The signature follows Triton's documented specialization: tensors as typed pointers, 16-byte aligned ones
and integers divisible by 16 marked so, integers equal to 1 folded into constants (except the parameters a
kernel excludes with ``do_not_specialize``).
"""

from __future__ import annotations

import os
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

if os.environ.get("TRITON_INTERPRET"):
    sys.exit("amd_compile: run without TRITON_INTERPRET (the kernels must be defined for compilation)")

import torch
import triton
from gguf.constants import GGMLQuantizationType
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

from rocmforge.kernels.triton import (
    dequant_rows,
    norm_rope,
    packed_gemv,
    packed_matmul,
    paged_attention,
    quant_matmul,
    rope_cache,
)
from rocmforge.layers.packed_weight import pack
from rocmforge.layers.paged_attention import PagedAttentionMetadata
from rocmforge.layers.rotary import RotaryEmbedding
from tests.kernels.test_packed_matmul import random_raw
from tests.kernels.test_paged_attention import make_batch

Q = GGMLQuantizationType


@dataclass(frozen=True)
class Arch:
    backend: str  # Triton's: "hip" or "cuda"
    arch: str | int  # gfx name, or compute capability as 80 for 8.0
    warp_size: int
    shared_bytes: int  # shared memory (LDS) one program may use, opted in where the GPU allows more


ARCHS = {
    # AMD: CDNA3 (MI300), CDNA2 (MI200) with 64-lane wavefronts; RDNA3 (Radeon 7900) with 32.
    "gfx942": Arch("hip", "gfx942", 64, 64 * 1024),
    "gfx90a": Arch("hip", "gfx90a", 64, 64 * 1024),
    "gfx1100": Arch("hip", "gfx1100", 32, 64 * 1024),
    # NVIDIA: Turing (T4), Ampere (A100), Ada (L4, RTX 4090), Hopper (H100).
    "sm75": Arch("cuda", 75, 32, 64 * 1024),
    "sm80": Arch("cuda", 80, 32, 163 * 1024),
    "sm89": Arch("cuda", 89, 32, 99 * 1024),
    "sm90": Arch("cuda", 90, 32, 227 * 1024),
}
_DTYPES = {
    torch.float32: "fp32",
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.int16: "i16",
    torch.int8: "i8",
    torch.uint8: "u8",
    torch.bool: "i1",
}
_LAUNCH_OPTIONS = ("num_warps", "num_stages")


@dataclass(frozen=True)
class Launch:
    kernel: JITFunction
    signature: dict[str, str]
    constexprs: dict[str, Any]
    attrs: dict[tuple[int, ...], list[list[Any]]]
    options: dict[str, Any]

    def key(self) -> tuple[Any, ...]:
        frozen = (tuple(sorted(self.constexprs.items(), key=str)), tuple(sorted(self.attrs)))
        return (self.kernel.fn.__qualname__, tuple(self.signature.items()), frozen, tuple(self.options.items()))


def _specialize(kernel: JITFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Launch:
    """The signature, constants and alignment hints Triton would derive from one launch's arguments."""
    values = dict(zip(kernel.arg_names, args, strict=False))
    values |= {name: value for name, value in kwargs.items() if name in kernel.arg_names}
    signature: dict[str, str] = {}
    constexprs: dict[str, Any] = {}
    attrs: dict[tuple[int, ...], list[list[Any]]] = {}
    for index, param in enumerate(kernel.params):
        value = values.get(param.name, param.default)
        if param.is_constexpr or value is None:
            signature[param.name], constexprs[param.name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = "*" + _DTYPES[value.dtype]
            if value.data_ptr() % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, bool):
            signature[param.name] = "i1"
        elif isinstance(value, int):
            if value == 1 and not param.do_not_specialize:
                signature[param.name], constexprs[param.name] = "constexpr", 1
                continue
            signature[param.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
            if value % 16 == 0 and not param.do_not_specialize:
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif isinstance(value, float):
            signature[param.name] = "fp32"
        else:
            raise TypeError(f"{kernel.fn.__name__}: cannot type argument {param.name}={value!r}")
    options = {name: kwargs[name] for name in _LAUNCH_OPTIONS if name in kwargs}
    return Launch(kernel, signature, constexprs, attrs, options)


def record_launches(calls: list[Callable[[], object]]) -> list[Launch]:
    """Run the wrappers with every kernel launch recorded instead of run (nothing executes on the CPU)."""
    recorded: list[Launch] = []

    def record(self: JITFunction, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> None:
        recorded.append(_specialize(self, args, kwargs))

    original = JITFunction.run
    JITFunction.run = record  # type: ignore[method-assign]
    try:
        for call in calls:
            call()
    finally:
        JITFunction.run = original  # type: ignore[method-assign]
    return list({launch.key(): launch for launch in recorded}.values())


def launches_for(arch: Arch) -> list[Launch]:
    """The launches of every wrapper at small shapes, in their configuration on ``arch``."""
    for module in (packed_matmul, packed_gemv, paged_attention, quant_matmul, dequant_rows, norm_rope, rope_cache):
        if hasattr(module, "kernel_target"):
            module.kernel_target = lambda device: arch.backend
    # packed_matmul fits its stages to the device's shared memory (the same 0.85 margin as on a GPU).
    packed_matmul._shared_budget = lambda device: int(0.85 * arch.shared_bytes)
    # Split the attention keys as a large GPU would for few sequences, so that the split variant compiles too.
    paged_attention.SPLIT_BELOW_PROGRAMS = 10**9
    paged_attention.SPLIT_MIN_KEYS = 32
    gen = torch.Generator().manual_seed(0)
    calls: list[Callable[[], object]] = []
    for qtype in (Q.Q4_K, Q.Q6_K, Q.Q8_0):
        packed = pack(random_raw(qtype, 128, 512, seed=1), qtype, (128, 512))
        calls.append(lambda p=packed: packed_matmul.dequantize_packed(p, torch.bfloat16))
        for m, dtype in ((1, torch.bfloat16), (1, torch.float32), (4, torch.bfloat16), (64, torch.bfloat16)):
            calls.append(lambda p=packed, m=m, d=dtype: packed_matmul.packed_matmul(torch.randn(m, 512, dtype=d), p))
        calls.append(lambda p=packed: packed_matmul.packed_matmul(torch.randn(8, 512), p))  # float32 x: dot precision
        if qtype in packed_gemv.GEMV_TYPES:
            for dtype in (torch.bfloat16, torch.float32):
                calls.append(lambda p=packed, d=dtype: packed_gemv.packed_gemv(torch.randn(1, 512, dtype=d), p))
            # The epilogues: the residual add + norm sums, and the norm's factor on the next projection.
            residual, norm = torch.randn(1, 128, dtype=torch.bfloat16), torch.randn(128)
            x = torch.randn(1, 512, dtype=torch.bfloat16)
            calls.append(lambda p=packed, x=x, r=residual, w=norm: packed_gemv.packed_gemv_add_rms_norm(x, p, r, w))
            scale = packed_gemv.RmsScale(torch.rand(8), 512, 1e-6)
            calls.append(lambda p=packed, x=x, s=scale: packed_gemv.packed_gemv(x, p, rms_scale=s))
    for qtype in sorted(quant_matmul.TRITON_QUANT_TYPES, key=lambda t: t.value):
        raw = random_raw(qtype, 64, 512, seed=2)
        x = torch.randn(4, 512, dtype=torch.bfloat16)
        calls.append(lambda x=x, r=raw, t=qtype: quant_matmul.quant_matmul(x, r, t, (64, 512)))
    for qtype in sorted(dequant_rows.DEQUANT_ROW_TYPES, key=lambda t: t.value):
        raw = random_raw(qtype, 16, 512, seed=3)
        calls.append(lambda r=raw, t=qtype: dequant_rows.dequantize_rows(r, t, 512, torch.bfloat16))
    calls += _layer_kernel_calls(gen)
    return record_launches(calls)


def _layer_kernel_calls(gen: torch.Generator) -> list[Callable[[], object]]:
    """Attention, RoPE + cache write, the norms and the gated activation, at a decode and a prefill size."""
    calls: list[Callable[[], object]] = []
    for num_heads, num_kv_heads, head_dim, window in ((8, 2, 64, None), (4, 4, 128, 40), (14, 2, 64, None)):
        for shapes in ([(1, 70), (1, 33)], [(1, 20), (12, 12), (5, 90)]):
            batch = make_batch(shapes, num_heads, num_kv_heads, head_dim, 16, seed=head_dim)
            metadata = PagedAttentionMetadata.build(batch.sequences, 16, [window], torch.device("cpu"))
            q, k, v = (t.to(torch.bfloat16) for t in (batch.q, batch.key_cache, batch.value_cache))
            calls.append(
                lambda q=q, k=k, v=v, md=metadata, w=window: paged_attention.paged_attention_triton(q, k, v, md, w, 0.1)
            )
            calls.append(
                lambda b=batch, md=metadata, w=window: paged_attention.paged_attention_triton(
                    b.q, b.key_cache, b.value_cache, md, w, 0.1
                )
            )
    for tokens in (1, 5):
        for dtype in (torch.bfloat16, torch.float32):
            x = torch.randn(tokens, 256, generator=gen).to(dtype)
            weight = torch.randn(256, generator=gen)
            calls.append(lambda x=x, w=weight: norm_rope.rms_norm_triton(x, w, 1e-6))
            calls.append(lambda x=x, w=weight: norm_rope.add_rms_norm_triton(x, x.clone(), w, 1e-6))
            for activation in ("silu", "gelu_tanh"):
                calls.append(lambda x=x, a=activation: norm_rope.gated_activation_triton(x, x.clone(), a))
            for style in ("neox", "norm"):
                calls.append(lambda t=tokens, d=dtype, s=style: _rope_store_kv(t, d, s))
    return calls


def _rope_store_kv(tokens: int, dtype: torch.dtype, style: str) -> torch.Tensor:
    heads, kv_heads, head_dim = 4, 2, 64
    qk = torch.randn(tokens, heads + kv_heads, head_dim).to(dtype)
    v = torch.randn(tokens, kv_heads, head_dim).to(dtype)
    cos, sin = RotaryEmbedding(head_dim, 10000.0, style).cos_sin(torch.arange(tokens))  # type: ignore[arg-type]
    caches = [torch.zeros(4, 16, kv_heads, head_dim, dtype=dtype) for _ in range(2)]
    slots = torch.tensor(random.Random(tokens).sample(range(64), tokens))
    return rope_cache.rope_store_kv_triton(qk, v, cos, sin, heads, *caches, slots, head_dim, style)


def compile_for(launch: Launch, arch: Arch) -> int:
    """Compile for ``arch``: the registers spilled to scratch memory (AMD's code object says; 0 for NVIDIA).

    Raises if Triton refuses or the kernel needs more shared memory than a program gets.
    """
    source = ASTSource(launch.kernel, launch.signature, launch.constexprs, launch.attrs)
    target = GPUTarget(arch.backend, arch.arch, arch.warp_size)
    compiled = triton.compile(source, target=target, options=launch.options)
    if compiled.metadata.shared > arch.shared_bytes:
        raise RuntimeError(f"needs {compiled.metadata.shared} bytes of shared memory, more than {arch.shared_bytes}")
    spills = re.search(r"\.vgpr_spill_count:\s+(\d+)", compiled.asm.get("amdgcn", ""))
    return int(spills.group(1)) if spills else 0


def main(names: list[str]) -> int:
    failures = total = 0
    kernels: set[str] = set()
    spilled: dict[tuple[str, str], int] = {}  # (arch, kernel) -> most registers one of its variants spills
    for name in names:
        launches = launches_for(ARCHS[name])
        kernels |= {launch.kernel.fn.__name__ for launch in launches}
        for launch in launches:
            total += 1
            try:
                spills = compile_for(launch, ARCHS[name])
            except Exception as exc:  # every failure is reported, then counted
                failures += 1
                print(f"FAIL {name} {launch.kernel.fn.__name__} {launch.constexprs}: {type(exc).__name__}: {exc}")
                continue
            if spills:
                key = (name, launch.kernel.fn.__name__)
                spilled[key] = max(spilled.get(key, 0), spills)
    # Not a failure: a speed hint for tuning that architecture's launch configurations.
    for (name, kernel), spills in sorted(spilled.items()):
        print(f"spills {name} {kernel}: up to {spills} registers")
    print(f"{len(kernels)} kernels ({', '.join(sorted(kernels))})")
    print(f"compiled for {', '.join(names)}: {total - failures} launch variants ok, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or list(ARCHS)))
