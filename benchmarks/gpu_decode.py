"""Single-stream GPU decode and prefill of synthetic 7B models against the card's memory roofline.

For each weight scheme (Q4_K_M, Q8_0, F16 by default) the script writes a synthetic model with ``rocmforge synth``
(random weights, real Llama-2-7B shapes), loads it onto the GPU and measures, in this order:

* ``load``: GPU memory the weights take (``torch.cuda.memory_allocated`` after the load minus before) against the
  file size, and the load's peak.
* ``direct``: the engine's ModelRunner without scheduler or sampler. Prefill = one eager step over a
  ``--prompt-len``-token prompt (median of ``--prefill-reps``); decode = ``--decode-steps`` greedy single-token
  steps after it, each replaying the runner's CUDA graph for batch 1 (``--eager``: op by op), the argmax read
  back on the host as the engine's sampler does. A warm-up (one prefill, a few decode steps) runs first so that
  Triton's JIT compiles are excluded; its wall time is reported as ``warmup_s``, the graph capture's beside it.
* ``engine``: the same through ``LLM(..., EngineConfig(device="cuda", max_num_seqs=1))`` — one warm-up request,
  then one timed request of the same prompt length (another prompt: no prefix-cache hit), greedy, ignore_eos.
  Prefill tok/s = prompt tokens / TTFT; decode tok/s = (output tokens - 1) / (finish - first token).
* ``roofline``: bytes per decoded token = the bytes of every weight matrix a step reads (all layers' projections plus
  the output matrix, counted from the loaded model's tensors; the embedding row and norms are negligible and left
  out); roofline tok/s = the device-to-device copy bandwidth measured in the same run (1 GiB, (read + written) /
  time, ``benchmarks/gpu_common.py``'s helper) / those bytes. Decode tok/s is printed as a fraction of it.
  The KV cache a step also reads (in the activation dtype, at the mean decode position) is printed beside it,
  not counted in.

One profiling pass (``--profile-quant``, Q4_K_M by default), last and on a fresh load of the model (a profiler
leaves CUPTI hooked into the process and slows what runs after it), records ``--profile-steps`` decode steps with
``torch.profiler`` (CPU + CUDA) and prints the top ops by device and by CPU time, the launches and host syncs per
step, and the GPU-idle fraction of a step (1 - summed device time per step / wall time per step).

Each row records which synth processes were still running beside it (``--parallel-synth`` writes the models in
the background while the first ones are timed; the default writes them all first). Results print as each part
ends and ``--json`` is rewritten after each, so a run cut short keeps what it measured.

Run (GPU machine, models written under /tmp; ``--tokenizer-from`` takes any GGUF with a tokenizer):

    PYTHONPATH=src:<gguf> python3 benchmarks/gpu_decode.py --tokenizer-from build/gpu_models/smollm2-8l.gguf \\
        --json out.json

A quick CPU check of the logic: ``--device cpu --preset tiny --prompt-len 32 --decode-steps 4``.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for benchmarks.gpu_common

from rocmforge.bench.workload import random_prompts, sampleable_token_ids
from rocmforge.engine.config import EngineConfig
from rocmforge.engine.llm import LLM
from rocmforge.engine.model_runner import ModelRunner
from rocmforge.engine.scheduler_output import ScheduledRequest, SchedulerOutput
from rocmforge.gguf.quants import quant_block_info
from rocmforge.layers.linear import Linear
from rocmforge.layers.quant_linear import QuantLinear
from rocmforge.models.decoder import DecoderModel
from rocmforge.models.loader import load_model_and_tokenizer
from rocmforge.sampling_params import SamplingParams

QUANTS = ("q4_k_m", "q8_0", "f16")
GREEDY = SamplingParams(temperature=0.0)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Profiler event names that block the host until the device catches up (or copy through pageable memory, which
# waits for the stream before it starts).
SYNC_EVENTS = (
    "cudaStreamSynchronize",
    "cudaDeviceSynchronize",
    "cudaEventSynchronize",
    "cudaMemcpy",
    "cudaMemcpyAsync",
    "aten::_local_scalar_dense",
)
LAUNCH_EVENTS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx")


def log(message: str) -> None:
    print(message, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------- models


def synth_command(out: Path, arch: str, preset: str, quant: str, tokenizer_from: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "rocmforge", "synth", "--arch", arch, "--preset", preset, "--quant", quant, "-q"]
    if tokenizer_from:
        cmd += ["--tokenizer-from", tokenizer_from]
    return [*cmd, "--force", str(out)]


class Synthesizer:
    """Writes the models up front, one after another, or (``--parallel-synth``) all at once in the background.

    In the background, later models are ready sooner, but the synth processes share the CPU with the timed runs,
    whose decode is bound by the host (Python and kernel launches): each row records which synths were running.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.dir = Path(args.model_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, tuple[subprocess.Popen[bytes], float, Path]] = {}
        self.times: dict[str, float] = {}
        for quant in args.quants:
            path = self.dir / f"{args.arch}-{args.preset}-{quant}.gguf"
            if path.exists() and not args.resynth:
                continue
            cmd = synth_command(path, args.arch, args.preset, quant, args.tokenizer_from)
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            self.procs[quant] = (proc, time.perf_counter(), path)
            if not args.parallel_synth:
                self.wait(quant)

    def running(self) -> list[str]:
        return [quant for quant, (proc, _, _) in self.procs.items() if proc.poll() is None]

    def wait(self, quant: str) -> float | None:
        """Block until ``quant``'s file is written; its synth wall time (None if it existed already)."""
        if quant not in self.procs or quant in self.times:
            return self.times.get(quant)
        proc, start, _ = self.procs[quant]
        output, _ = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"synth {quant} failed ({proc.returncode}): {output.decode(errors='replace')}")
        self.times[quant] = time.perf_counter() - start
        return self.times[quant]

    def path(self, args: argparse.Namespace, quant: str) -> Path:
        return self.dir / f"{args.arch}-{args.preset}-{quant}.gguf"


def matrix_bytes(linear: object) -> int:
    """The weight's bytes in the GGUF file (a QuantLinear), or of its float tensor (a Linear).

    For a QuantLinear the file's size, not the (up to ~3% larger) repacked planes that the kernel reads: the
    roofline is what the model's bytes allow, and reading more than them counts against us.
    """
    if isinstance(linear, QuantLinear):
        n, k = linear.shape
        block, type_size = quant_block_info(linear.qtype)
        return n * (k // block) * type_size
    if isinstance(linear, Linear):
        return linear.weight.numel() * linear.weight.element_size()
    raise TypeError(f"unexpected projection {type(linear).__name__}")


def weight_bytes_per_token(model: DecoderModel) -> int:
    """Weight bytes one decode step reads: every layer projection plus the output matrix."""
    total = sum(matrix_bytes(getattr(layer, name)) for layer in model.weights.layers for name in PROJECTIONS)
    return total + matrix_bytes(model.weights.lm_head)


def kv_bytes_per_token(model: DecoderModel, position: int) -> int:
    """KV-cache bytes one decode step's attention reads at ``position`` (every layer, keys and values)."""
    cfg = model.config
    per_position = cfg.num_kv_heads * (cfg.head_dim + cfg.v_head_dim) * model.dtype.itemsize
    return cfg.num_layers * position * per_position


def copy_bandwidth(device: torch.device) -> float:
    """Device-to-device copy bandwidth in GB/s, (read + written bytes) / time."""
    if device.type == "cuda":
        from benchmarks.gpu_common import copy_bandwidth_gbs

        return copy_bandwidth_gbs()
    src = torch.empty(2**28, dtype=torch.uint8)
    dst = torch.empty_like(src)
    dst.copy_(src)
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        dst.copy_(src)
        samples.append(time.perf_counter() - start)
    return 2 * src.numel() / statistics.median(samples) / 1e9


# ----------------------------------------------------------------------------------------------- timing


class RunnerDecoder:
    """One sequence through the engine's ModelRunner, without scheduler or sampler: an eager prefill, then
    single-token decode steps that replay its CUDA graph for batch 1 (eager steps with ``--eager``). The greedy
    token goes back through the host, as in the engine (its sampler reads every step's logits)."""

    def __init__(self, model: DecoderModel, max_len: int, eager: bool, block_size: int = 16) -> None:
        num_blocks = -(-max_len // block_size)
        self.runner = ModelRunner(model, num_blocks, block_size, None if eager else 1, max_len)
        self.table = tuple(range(num_blocks))
        self.runner.warm_up()  # captures the graph

    def _step(self, token_ids: list[int], start: int) -> torch.Tensor:
        item = ScheduledRequest("bench", tuple(token_ids), start, self.table, len(token_ids) > 1, True, GREEDY)
        return self.runner.execute(SchedulerOutput((item,)), {}).logits

    def prefill(self, prompt: list[int]) -> int:
        """The prompt's K/V written from position 0; its greedy next token."""
        return int(self._step(prompt, 0).argmax(dim=-1).item())

    def decode(self, token: int, start_pos: int, steps: int) -> int:
        """``steps`` greedy steps from ``start_pos``; the last token."""
        for i in range(steps):
            token = int(self._step([token], start_pos + i).argmax(dim=-1).item())
        return token

    def release(self) -> None:
        self.runner.release()


def time_direct(
    model: DecoderModel, prompt: list[int], args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    n = len(prompt)
    start = time.perf_counter()
    decoder = RunnerDecoder(model, n + args.warmup_steps + args.decode_steps + args.profile_steps + 8, args.eager)
    sync(device)
    capture_s = time.perf_counter() - start
    start = time.perf_counter()
    first = decoder.prefill(prompt)
    first_prefill_s = time.perf_counter() - start
    decoder.decode(first, n, args.warmup_steps)
    sync(device)
    warmup_s = time.perf_counter() - start
    prefill_samples = []
    for _ in range(args.prefill_reps):
        sync(device)
        start = time.perf_counter()
        token = decoder.prefill(prompt)
        prefill_samples.append(time.perf_counter() - start)
    sync(device)
    start = time.perf_counter()
    decoder.decode(token, n, args.decode_steps)
    decode_s = time.perf_counter() - start
    decoder.release()
    prefill_s = statistics.median(prefill_samples)
    result = {
        "graphs": not args.eager,
        "warm_up_and_capture_s": capture_s,
        "first_prefill_s": first_prefill_s,
        "warmup_s": warmup_s,
        "prefill_s": prefill_samples,
        "prefill_tps": n / prefill_s,
        "decode_steps": args.decode_steps,
        "decode_s": decode_s,
        "decode_tps": args.decode_steps / decode_s,
        "decode_ms_per_step": decode_s / args.decode_steps * 1e3,
    }
    return result


def time_engine(path: Path, prompts: list[list[int]], args: argparse.Namespace) -> dict[str, Any]:
    n = len(prompts[0])
    config = EngineConfig(device=args.device, max_num_seqs=1, max_model_len=n + args.engine_tokens + 16, dtype="bf16")
    start = time.perf_counter()
    llm = LLM(path, config)
    load_s = time.perf_counter() - start
    try:
        params = SamplingParams(max_tokens=args.engine_tokens, temperature=0.0, ignore_eos=True)
        start = time.perf_counter()
        llm.generate(prompts[1], SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))
        warmup_s = time.perf_counter() - start
        start = time.perf_counter()
        output = llm.generate(prompts[2], params)[0]
        wall_s = time.perf_counter() - start
    finally:
        llm.shutdown()
    m = output.metrics
    generated = len(output.outputs[0].token_ids)
    assert m.first_token_time is not None and m.finished_time is not None
    ttft = m.first_token_time - m.arrival_time
    decode_s = m.finished_time - m.first_token_time
    return {
        "load_s": load_s,
        "warmup_s": warmup_s,
        "wall_s": wall_s,
        "output_tokens": generated,
        "cached_tokens": m.num_cached_tokens,
        "ttft_s": ttft,
        "prefill_tps": n / ttft,
        "decode_tps": (generated - 1) / decode_s if generated > 1 else None,
        "tpot_ms": decode_s / (generated - 1) * 1e3 if generated > 1 else None,
    }


# ----------------------------------------------------------------------------------------------- profile


def _device_time(avg: Any, self_only: bool) -> float:
    """Microseconds of device time of a profiler average (attribute names differ across torch versions)."""
    names = (
        ("self_device_time_total", "self_cuda_time_total") if self_only else ("device_time_total", "cuda_time_total")
    )
    for name in names:
        value = getattr(avg, name, None)
        if value is not None:
            return float(value)
    return 0.0


def _table(rows: list[Any], key: Callable[[Any], float], steps: int, limit: int) -> str:
    lines = [f"  {'op':<60} {'calls/step':>10} {'device us/step':>14} {'cpu us/step':>12} {'self cpu us/step':>16}"]
    for avg in sorted(rows, key=key, reverse=True)[:limit]:
        lines.append(
            f"  {avg.key[:60]:<60} {avg.count / steps:>10.1f} {_device_time(avg, False) / steps:>14.1f} "
            f"{avg.cpu_time_total / steps:>12.1f} {avg.self_cpu_time_total / steps:>16.1f}"
        )
    return "\n".join(lines)


def profile_decode(
    decoder: RunnerDecoder,
    token: int,
    start_pos: int,
    steps: int,
    device: torch.device,
    unprofiled_ms: float,
) -> dict[str, Any]:
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    decoder.decode(token, start_pos, 1)  # nothing left to compile inside the trace
    sync(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        decoder.decode(token, start_pos, steps)
        sync(device)
        wall_s = time.perf_counter() - start
    averages = list(prof.key_averages())
    # Device work from the raw events: kernels (and memcpy/memset) on the GPU, one stream, so they do not overlap.
    device_events = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    busy_us = sum(e.time_range.elapsed_us() for e in device_events) / steps
    span_us = (
        (max(e.time_range.end for e in device_events) - min(e.time_range.start for e in device_events)) / steps
        if device_events
        else 0.0
    )
    by_kernel: dict[str, list[float]] = {}
    for event in device_events:
        by_kernel.setdefault(event.name, []).append(event.time_range.elapsed_us())
    kernel_lines = [f"  {'kernel':<70} {'calls/step':>10} {'us/step':>9} {'mean us':>8}"]
    for name, times in sorted(by_kernel.items(), key=lambda kv: -sum(kv[1]))[:15]:
        kernel_lines.append(
            f"  {name[:70]:<70} {len(times) / steps:>10.1f} {sum(times) / steps:>9.1f} {statistics.mean(times):>8.1f}"
        )
    cpu_averages = [avg for avg in averages if avg.device_type != DeviceType.CUDA]
    profiled_ms = wall_s / steps * 1e3
    counts = {avg.key: avg.count / steps for avg in cpu_averages}
    cpu_us = {avg.key: avg.cpu_time_total / steps for avg in cpu_averages}
    in_ops_us = sum(avg.self_cpu_time_total for avg in cpu_averages) / steps
    return {
        "steps": steps,
        "profiled_wall_ms_per_step": profiled_ms,
        "unprofiled_wall_ms_per_step": unprofiled_ms,
        "device_busy_ms_per_step": busy_us / 1e3,
        "device_span_ms_per_step": span_us / 1e3,
        "gpu_idle_fraction_unprofiled": 1 - busy_us / 1e3 / unprofiled_ms,
        "gpu_idle_fraction_profiled": 1 - busy_us / 1e3 / profiled_ms,
        "device_ops_per_step": len(device_events) / steps,
        "launches_per_step": sum(counts.get(name, 0.0) for name in LAUNCH_EVENTS),
        "launch_cpu_us_per_step": sum(cpu_us.get(name, 0.0) for name in LAUNCH_EVENTS),
        "syncs_per_step": {name: counts[name] for name in SYNC_EVENTS if name in counts},
        "sync_cpu_us_per_step": {name: cpu_us[name] for name in SYNC_EVENTS if name in cpu_us},
        "cpu_ms_in_profiled_ops_per_step": in_ops_us / 1e3,
        "cpu_ms_outside_ops_per_step": profiled_ms - in_ops_us / 1e3,
        "top_by_device": _table(averages, lambda a: _device_time(a, False), steps, 15),
        "top_by_cpu": _table(cpu_averages, lambda a: a.cpu_time_total, steps, 15),
        "top_kernels": "\n".join(kernel_lines),
    }


# ----------------------------------------------------------------------------------------------- driver


@contextmanager
def stage(name: str) -> Iterator[None]:
    start = time.perf_counter()
    log(f"[{name}] ...")
    yield
    log(f"[{name}] done in {time.perf_counter() - start:.1f} s")


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_quant(
    quant: str, path: Path, synth: Synthesizer, args: argparse.Namespace, device: torch.device, bandwidth: float
) -> dict[str, Any]:
    row: dict[str, Any] = {"quant": quant, "file_bytes": path.stat().st_size}
    busy = synth.running()
    row["synth_running_during_direct"] = busy
    free(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer(path, dtype=torch.bfloat16, device=device, quantized=True)
    sync(device)
    row["load_s"] = time.perf_counter() - start
    if device.type == "cuda":
        row["weights_gpu_bytes"] = torch.cuda.memory_allocated(device) - before
        row["load_peak_gpu_bytes"] = torch.cuda.max_memory_allocated(device) - before
        row["gpu_over_file"] = row["weights_gpu_bytes"] / row["file_bytes"]
    pool = sampleable_token_ids(tokenizer, model.config.vocab_size)
    prompts = random_prompts(pool, 3, args.prompt_len, seed=0)
    row["weight_bytes_per_token"] = weight_bytes_per_token(model)
    row["roofline_tps"] = bandwidth * 1e9 / row["weight_bytes_per_token"]
    mid = args.prompt_len + args.decode_steps // 2
    row["kv_bytes_per_token_mid"] = kv_bytes_per_token(model, mid)
    log(
        f"{quant}: file {row['file_bytes'] / 1e9:.2f} GB, weights on GPU "
        f"{row.get('weights_gpu_bytes', 0) / 1e9:.2f} GB ({row.get('gpu_over_file', float('nan')):.3f}x file), "
        f"weight bytes/token {row['weight_bytes_per_token'] / 1e9:.3f} GB -> roofline {row['roofline_tps']:.0f} "
        f"tok/s; KV read/token at pos {mid}: {row['kv_bytes_per_token_mid'] / 1e6:.0f} MB; load {row['load_s']:.1f} s"
    )
    with stage(f"{quant} direct"):
        direct = time_direct(model, prompts[0], args, device)
    direct["decode_roof_fraction"] = direct["decode_tps"] / row["roofline_tps"]
    row["direct"] = direct
    log(
        f"{quant} direct: warm-up (JIT) {direct['warmup_s']:.1f} s; prefill {direct['prefill_tps']:.0f} tok/s; "
        f"decode {direct['decode_tps']:.2f} tok/s = {direct['decode_roof_fraction']:.1%} of roofline "
        f"({direct['decode_ms_per_step']:.2f} ms/step, CUDA graphs: {direct['graphs']}, warm-up + capture "
        f"{direct['warm_up_and_capture_s']:.1f} s)"
    )
    del model, tokenizer
    free(device)
    if not args.no_engine:
        row["synth_running_during_engine"] = synth.running()
        with stage(f"{quant} engine"):
            engine = time_engine(path, prompts, args)
        if engine["decode_tps"] is not None:
            engine["decode_roof_fraction"] = engine["decode_tps"] / row["roofline_tps"]
        row["engine"] = engine
        log(
            f"{quant} engine: load {engine['load_s']:.1f} s, warm-up {engine['warmup_s']:.1f} s; prefill "
            f"{engine['prefill_tps']:.0f} tok/s (TTFT {engine['ttft_s'] * 1e3:.0f} ms); decode "
            f"{engine['decode_tps']:.2f} tok/s = {engine.get('decode_roof_fraction', 0):.1%} of roofline"
        )
        free(device)
    if quant == args.profile_quant and args.profile_steps > 0:
        # Last, on a fresh load: the profiler leaves CUPTI hooked into the process, which slowed the engine's
        # decode measured after it by 13% on an H100 (BENCHMARKS.md, session 7).
        with stage(f"{quant} profile"):
            prof = profile_run(path, prompts[0], args, device, direct["decode_ms_per_step"])
        row["profile"] = prof
        log(f"{quant} profile, {prof['steps']} decode steps:")
        for key in ("top_by_device", "top_by_cpu", "top_kernels"):
            log(f" {key}:\n{prof[key]}")
        summary = {k: v for k, v in prof.items() if not k.startswith("top_")}
        log(f" summary: {json.dumps(summary, indent=1)}")
    return row


def profile_run(
    path: Path, prompt: list[int], args: argparse.Namespace, device: torch.device, unprofiled_ms: float
) -> dict[str, Any]:
    """The model loaded again and decoded to where the timed decode ended, then ``profile_decode`` from there."""
    model, _ = load_model_and_tokenizer(path, dtype=torch.bfloat16, device=device, quantized=True)
    n = len(prompt)
    decoder = RunnerDecoder(model, n + args.decode_steps + args.profile_steps + 8, args.eager)
    try:
        last = decoder.decode(decoder.prefill(prompt), n, args.decode_steps)
        return profile_decode(decoder, last, n + args.decode_steps, args.profile_steps, device, unprofiled_ms)
    finally:
        decoder.release()
        del model, decoder
        free(device)


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(card=props.name, memory_mib=props.total_memory // 2**20, sms=props.multi_processor_count)
        try:
            import triton

            env["triton"] = triton.__version__
        except ImportError:
            pass
    else:
        env["card"] = platform.processor() or "cpu"
    return env


def summary_table(rows: list[dict[str, Any]], env: dict[str, Any], bandwidth: float) -> str:
    lines = [
        f"card: {env.get('card')}, copy bandwidth {bandwidth:.0f} GB/s",
        "| quant | weights GB/token | roofline tok/s | direct prefill tok/s | direct decode tok/s | roof | "
        "engine prefill tok/s | engine decode tok/s | roof | GPU mem / file |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        d, e = row.get("direct", {}), row.get("engine", {})

        def fmt(value: float | None, spec: str) -> str:
            return "" if value is None else format(value, spec)

        lines.append(
            f"| {row['quant']} | {row['weight_bytes_per_token'] / 1e9:.3f} | {row['roofline_tps']:.0f} | "
            f"{fmt(d.get('prefill_tps'), '.0f')} | {fmt(d.get('decode_tps'), '.2f')} | "
            f"{fmt(d.get('decode_roof_fraction'), '.1%')} | {fmt(e.get('prefill_tps'), '.0f')} | "
            f"{fmt(e.get('decode_tps'), '.2f')} | {fmt(e.get('decode_roof_fraction'), '.1%')} | "
            f"{fmt(row.get('gpu_over_file'), '.3f')} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quants", nargs="+", default=list(QUANTS), choices=QUANTS)
    parser.add_argument("--arch", default="llama")
    parser.add_argument("--preset", default="7b")
    parser.add_argument("--tokenizer-from", help="GGUF (or named model) whose tokenizer the synthetic files copy")
    parser.add_argument("--model-dir", default="/tmp/rocmforge_gpu_decode", help="where the synthetic models go")
    parser.add_argument("--resynth", action="store_true", help="rewrite model files that exist already")
    parser.add_argument(
        "--parallel-synth",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="write all models at once in the background, beside the timed runs (faster; host-bound timings suffer)",
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--prompt-len", type=int, default=512)
    parser.add_argument("--prefill-reps", type=int, default=3)
    parser.add_argument("--warmup-steps", type=int, default=4)
    parser.add_argument("--decode-steps", type=int, default=64)
    parser.add_argument("--engine-tokens", type=int, default=64)
    parser.add_argument("--no-engine", action="store_true")
    parser.add_argument("--eager", action="store_true", help="direct decode steps op by op, not CUDA graphs")
    parser.add_argument("--profile-quant", default="q4_k_m", choices=QUANTS)
    parser.add_argument("--profile-steps", type=int, default=5)
    parser.add_argument("--json", help="write the results here (rewritten after every model)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    env = environment(device)
    log(f"environment: {json.dumps(env)}")
    synth = Synthesizer(args)
    bandwidth = copy_bandwidth(device)
    log(f"copy bandwidth (1 GiB D2D, read+written / time): {bandwidth:.0f} GB/s")
    results: dict[str, Any] = {"environment": env, "copy_bandwidth_gbs": bandwidth, "args": vars(args), "rows": []}
    for quant in args.quants:
        with stage(f"{quant} synth wait"):
            synth_s = synth.wait(quant)
        row = run_quant(quant, synth.path(args, quant), synth, args, device, bandwidth)
        row["synth_s"] = synth_s
        results["rows"].append(row)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        log(summary_table(results["rows"], env, bandwidth))
    return 0


if __name__ == "__main__":
    sys.exit(main())
