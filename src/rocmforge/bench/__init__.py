"""Offline benchmarks of the engine, in the manner of vLLM's ``benchmark_throughput`` / ``benchmark_latency``.

workload.py builds the prompts, stats.py summarises timings, throughput.py and latency.py run the engine,
report.py describes the machine and prints or saves the results. The CLI (``rocmforge bench``) only wires
arguments to these.
"""

from __future__ import annotations
