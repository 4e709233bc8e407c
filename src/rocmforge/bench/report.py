"""What a benchmark result is reported with (machine, software, model, date), its table, and its JSON file."""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from rocmforge import __version__
from rocmforge.bench.latency import LatencyResult
from rocmforge.bench.stats import Summary
from rocmforge.bench.throughput import ThroughputResult
from rocmforge.errors import ValidationError


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str) -> dict[str, Any]:
    """The hardware and software a result was measured on; numbers without this are not comparable."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 0
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cpu_cores_usable": cores,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "torch": torch.__version__,
        "rocmforge": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
    if hasattr(os, "getloadavg"):
        # Other processes on the same cores distort CPU numbers badly; the load average says whether there were.
        info["load_average"] = list(os.getloadavg())
    return info


def model_info(name: str, path: Path, dtype: str) -> dict[str, Any]:
    return {"name": name, "path": str(path), "file_bytes": path.stat().st_size, "dtype": dtype}


def check_json_target(path: Path | None) -> None:
    """Fail before a long run, not after it, when its results could not be saved."""
    if path is None:
        return
    if path.is_dir():
        raise ValidationError(f"--json {path}: is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ValidationError(f"--json {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValidationError(f"--json {path}: not writable")


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    try:
        path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    except OSError as exc:
        raise ValidationError(f"--json {path}: cannot write it ({exc.strerror or exc})") from None


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _rows(pairs: Sequence[tuple[str, str]]) -> list[str]:
    width = max(len(label) for label, _ in pairs)
    return [f"{label:<{width}}  {value}" for label, value in pairs]


def _summary_table(rows: Sequence[tuple[str, Summary]]) -> list[str]:
    keys = list(rows[0][1].percentiles)
    label_width = max(len(label) for label, _ in rows)
    header = f"{'':<{label_width}}" + "".join(f"{h:>10}" for h in ["mean", *keys, "max"])
    lines = [header]
    for label, summary in rows:
        values = [summary.mean, *(summary.percentiles[k] for k in keys), summary.max]
        lines.append(f"{label:<{label_width}}" + "".join(f"{_fmt(v):>10}" for v in values))
    return lines


def throughput_table(result: ThroughputResult, setup: Sequence[tuple[str, str]]) -> str:
    lines = ["== rocmforge bench throughput ==", *_rows(setup), ""]
    lines += _rows(
        [
            ("requests", str(result.num_requests)),
            ("prompt tokens", f"{result.prompt_tokens} ({result.cached_tokens} from the prefix cache)"),
            ("output tokens", str(result.output_tokens)),
            ("elapsed", f"{result.elapsed_s:.2f} s"),
            ("requests/s", f"{result.requests_per_s:.2f}"),
            ("output tok/s", f"{result.output_tokens_per_s:.1f}"),
            ("total tok/s", f"{result.total_tokens_per_s:.1f}"),
        ]
    )
    lines.append("")
    lines += _summary_table(
        [
            ("TTFT (ms)", result.ttft_ms),
            ("TPOT (ms)", result.tpot_ms),
            ("ITL (ms)", result.itl_ms),
            ("E2E (ms)", result.e2e_ms),
        ]
    )
    return "\n".join(lines)


def latency_table(result: LatencyResult, setup: Sequence[tuple[str, str]]) -> str:
    summary = result.latency_s
    lines = ["== rocmforge bench latency ==", *_rows(setup), ""]
    lines += _rows(
        [
            ("iterations", str(summary.count)),
            ("avg latency", f"{_fmt(summary.mean, 3)} s"),
            *((f"{key} latency", f"{_fmt(value, 3)} s") for key, value in summary.percentiles.items()),
            ("output tok/s", f"{result.output_tokens_per_s:.1f} (batch of {result.batch_size}, at avg latency)"),
        ]
    )
    return "\n".join(lines)
