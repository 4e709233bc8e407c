"""Serving: `rocmforge serve` against llama-cpp-python's OpenAI-compatible server, same model, machine and prompts.

One server at a time (two would fight over the same cores): start it, drive it with `rocmforge bench serve`'s
client (rocmforge.bench.serve) at each concurrency, stop it, go on to the next. Every concurrency level gets its own
seeded random prompts (rocmforge's prefix cache would otherwise serve the later levels' prefill), identical for
every server, plus a warm-up prompt of its own that is not timed. Decoding is greedy; every request asks for
ignore_eos (llama-cpp-python does not know the field and may stop at EOS, which the table would show as short
outputs; its output tokens are counted text chunks, since its streams carry no usage).

Servers:

- rocmforge: `rocmforge serve MODEL` with its defaults (bf16 weights, max_num_seqs 64, max_num_batched_tokens 2048,
  torch's default thread count).
- llama.cpp: `python -m llama_cpp.server --model <the same GGUF file> --n_ctx N --interrupt_requests False`.
  Its server has no parallel-sequence setting (one Llama, one sequence, behind a lock: requests run one after
  another). One default is changed: interrupt_requests=True ends the running stream (with [DONE] but no
  finish_reason) as soon as another request waits, so with it, concurrent clients get almost nothing but cut-off
  streams. Everything else is its default, n_threads = cpu_count // 2 for decoding (n_threads_batch, for prompts,
  is all cores) included.
- llama.cpp (n_threads T), for each --llama-threads T: the same with --n_threads T.
- llama.cpp (defaults): only --model, --port and --n_ctx, to show what interrupt_requests does.

While each server runs, the CPU time used by processes outside this script and its server is measured from
/proc, so a table can be trusted only where it is near zero. Needs llama-cpp-python's server extras
(`.venv/bin/pip install "llama-cpp-python[server]"`, which reuses an installed llama-cpp-python).

    .venv/bin/python benchmarks/serve_vs_llamacpp.py [--model smollm2-135m] [--concurrency 1 8 32]
        [--num-prompts 32] [--input-len 128] [--output-len 64] [--llama-threads T ...] [--no-llama-defaults]
        [--json results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.server.server_process

from tests.server.server_process import HttpServerProcess, free_port

from rocmforge.bench import serve
from rocmforge.bench.report import cpu_model, machine_info
from rocmforge.hub import resolve_model

LLAMA_SERVER_MODULES = ("llama_cpp", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
READY_TIMEOUT = 180.0
ROCMFORGE = "rocmforge"
LLAMA = "llama.cpp"
LLAMA_DEFAULTS = "llama.cpp (defaults)"


# ---------------------------------------------------------------------------------------------------- contention


def _cpu_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, user + system clock ticks, command line) of every process we may read."""
    table: dict[int, tuple[int, int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as stat:
                fields = stat.read().rpartition(")")[2].split()
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue  # exited meanwhile
        table[int(entry)] = (int(fields[1]), int(fields[11]) + int(fields[12]), command)
    return table


def _ours(table: dict[int, tuple[int, int, str]]) -> set[int]:
    ours = {os.getpid()}
    grew = True
    while grew:  # the servers and anything they start
        new = {pid for pid, (ppid, _, _) in table.items() if ppid in ours and pid not in ours}
        ours |= new
        grew = bool(new)
    return ours


@dataclass
class Contention:
    """CPU seconds used by other processes over a span: what another engineer's tests took from the benchmark."""

    before: dict[int, tuple[int, int, str]] = field(default_factory=_cpu_table)
    start: float = field(default_factory=time.monotonic)

    def measure(self) -> dict[str, Any]:
        after = _cpu_table()
        ours = _ours(after)
        ticks = os.sysconf("SC_CLK_TCK")
        used: dict[str, float] = {}
        for pid, (_, total, command) in after.items():
            if pid in ours:
                continue
            delta = (total - self.before[pid][1] if pid in self.before else total) / ticks
            if delta > 0:
                used[command or f"pid {pid}"] = used.get(command or f"pid {pid}", 0.0) + delta
        busiest = sorted(used.items(), key=lambda item: -item[1])[:5]
        return {
            "wall_s": time.monotonic() - self.start,
            "other_cpu_s": sum(used.values()),
            "busiest_others": [{"command": c[:160], "cpu_s": round(s, 2)} for c, s in busiest if s >= 0.5],
            "load_average": list(os.getloadavg()),
        }


# ---------------------------------------------------------------------------------------------------- servers


def server_commands(
    model: str, path: Path, n_ctx: int, llama_threads: Sequence[int], llama_defaults: bool
) -> list[tuple[str, list[str], str]]:
    """(name, command, readiness path) of each server, in the order they run."""
    python = sys.executable
    llama = [python, "-m", "llama_cpp.server", "--model", str(path), "--n_ctx", str(n_ctx)]
    queued = [*llama, "--interrupt_requests", "False"]  # requests wait for the running one instead of ending it
    servers = [
        (ROCMFORGE, [python, "-m", "rocmforge", "serve", model, "--port", str(free_port())], "/ready"),
        (LLAMA, [*queued, "--port", str(free_port())], "/v1/models"),
    ]
    for threads in llama_threads:
        command = [*queued, "--n_threads", str(threads), "--port", str(free_port())]
        servers.append((f"{LLAMA} (n_threads {threads})", command, "/v1/models"))
    if llama_defaults:
        servers.append((LLAMA_DEFAULTS, [*llama, "--port", str(free_port())], "/v1/models"))
    return servers


# ---------------------------------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class Run:
    server: str
    concurrency: int
    result: serve.ServeResult
    contention: dict[str, Any]


async def bench_server(
    name: str, url: str, workloads: dict[int, tuple[list[serve.ServePrompt], serve.ServePrompt]], output_len: int
) -> list[Run]:
    model = (await serve.list_models(url))[0]
    runs = []
    for concurrency, (prompts, warmup) in workloads.items():
        config = serve.ServeConfig(url=url, model=model, output_len=output_len, concurrency=concurrency)
        contention = Contention()
        result = await serve.run_benchmark(config, prompts, warmup)
        runs.append(Run(name, concurrency, result, contention.measure()))
        setup = [("server", f"{name} at {url}"), ("pace", f"concurrency {concurrency}")]
        print(serve.serve_table(result, setup), end="\n\n", flush=True)
    return runs


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pair(summary: dict[str, Any], digits: int = 1) -> str:
    return f"{_f(summary['p50'], digits)} / {_f(summary['p99'], digits)}"


def side_by_side(runs: Sequence[Run]) -> str:
    """Markdown: every run, then rocmforge over llama.cpp at each concurrency."""
    lines = [
        "| concurrency | server | completed | req/s | output tok/s | total tok/s | TTFT p50 / p99 ms | "
        "TPOT p50 / p99 ms | ITL p50 / p99 ms | E2E p50 / p99 ms | other CPU s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in sorted(runs, key=lambda r: r.concurrency):
        d = run.result.to_dict()
        completed = f"{d['completed']}/{d['num_prompts']}"
        if d["short_outputs"]:
            completed += f" ({d['short_outputs']} short)"
        lines.append(
            f"| {run.concurrency} | {run.server} | {completed} | {d['request_throughput']:.2f} | "
            f"{d['output_token_throughput']:.1f} | {d['total_token_throughput']:.1f} | {_pair(d['ttft_ms'], 0)} | "
            f"{_pair(d['tpot_ms'])} | {_pair(d['itl_ms'])} | {_pair(d['e2e_ms'], 0)} | "
            f"{run.contention['other_cpu_s']:.1f} |"
        )
    by_key = {(r.server, r.concurrency): r.result.to_dict() for r in runs}
    ratio_rows = []
    for concurrency in sorted({r.concurrency for r in runs}):
        ours, theirs = by_key.get((ROCMFORGE, concurrency)), by_key.get((LLAMA, concurrency))
        if ours is None or theirs is None:
            continue

        def ratio(a: float | None, b: float | None) -> str:
            return "-" if a is None or b is None or b == 0 else f"{a / b:.2f}x"

        ratio_rows.append(
            f"| {concurrency} | {ratio(ours['output_token_throughput'], theirs['output_token_throughput'])} | "
            f"{ratio(ours['ttft_ms']['p50'], theirs['ttft_ms']['p50'])} | "
            f"{ratio(ours['tpot_ms']['p50'], theirs['tpot_ms']['p50'])} | "
            f"{ratio(ours['e2e_ms']['p50'], theirs['e2e_ms']['p50'])} | "
            f"{ratio(ours['e2e_ms']['p99'], theirs['e2e_ms']['p99'])} |"
        )
    if ratio_rows:
        lines += [
            "",
            "rocmforge / llama.cpp (throughput: higher is better for rocmforge; latencies: lower is):",
            "",
            "| concurrency | output tok/s | TTFT p50 | TPOT p50 | E2E p50 | E2E p99 |",
            "|---:|---:|---:|---:|---:|---:|",
            *ratio_rows,
        ]
    return "\n".join(lines)


def check_llama_server() -> None:
    missing = [m for m in LLAMA_SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(
            f"llama-cpp-python's server needs {', '.join(missing)}: "
            f'{sys.executable} -m pip install "llama-cpp-python[server]"'
        )


def llama_prompt_tokens(path: Path, prompts: Sequence[serve.ServePrompt]) -> list[int]:
    """How llama.cpp itself tokenizes the prompts (BOS included), to check both servers get the same lengths."""
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    return [len(vocab.tokenize(p.text.encode(), add_bos=True, special=True)) for p in prompts]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-ctx", type=int, default=2048, help="llama.cpp's context (its default, 2048)")
    parser.add_argument(
        "--llama-threads",
        type=int,
        nargs="*",
        default=[],
        help="also run llama.cpp with each of these n_threads (default: only its own default, cpu_count // 2)",
    )
    parser.add_argument("--no-llama-defaults", action="store_true", help="skip llama.cpp with its own defaults")
    parser.add_argument("--json", type=Path, help="also write every result here")
    args = parser.parse_args(argv)
    check_llama_server()
    if args.input_len + args.output_len > args.n_ctx:
        parser.error("--input-len + --output-len exceeds --n-ctx")

    path = resolve_model(args.model)
    tokenizer = serve.load_tokenizer(str(path))
    workloads: dict[int, tuple[list[serve.ServePrompt], serve.ServePrompt]] = {}
    for concurrency in args.concurrency:
        *prompts, warmup = serve.exact_length_prompts(
            tokenizer, args.num_prompts + 1, args.input_len, args.seed + concurrency
        )
        workloads[concurrency] = (prompts, warmup)
    ours = [p.tokens for prompts, _ in workloads.values() for p in prompts]
    theirs = llama_prompt_tokens(path, [p for prompts, _ in workloads.values() for p in prompts])
    same = sum(a == b for a, b in zip(ours, theirs, strict=True))
    print(
        f"prompt tokens (BOS included): rocmforge {min(ours)}-{max(ours)}, llama.cpp {min(theirs)}-{max(theirs)}, "
        f"equal for {same} of {len(ours)} prompts",
        flush=True,
    )

    info = machine_info("cpu") | {"cpu": cpu_model()}
    runs: list[Run] = []
    servers = server_commands(args.model, path, args.n_ctx, args.llama_threads, not args.no_llama_defaults)
    for name, command, ready_path in servers:
        print(f"== {name}: {' '.join(command)}", flush=True)
        server = HttpServerProcess(command, int(command[command.index("--port") + 1]), ready_path, name=name)
        try:
            server.wait_ready(READY_TIMEOUT)
            runs += asyncio.run(bench_server(name, server.url, workloads, args.output_len))
        finally:
            server.stop()
    table = side_by_side(runs)
    print(table)
    if args.json is not None:
        payload = {
            "benchmark": "serve_vs_llamacpp",
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "servers": {name: command for name, command, _ in servers},
            "prompt_tokens": {"rocmforge": ours, "llama.cpp": theirs},
            "machine": info,
            "runs": [
                {"server": r.server, "concurrency": r.concurrency, "contention": r.contention} | r.result.to_dict()
                for r in runs
            ],
            "table": table,
        }
        args.json.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
