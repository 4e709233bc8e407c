"""Prometheus metrics of one server (its own registry, so two apps in one process never share counters)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from rocmforge.engine.core import EngineStats
from rocmforge.engine.outputs import RequestMetrics

# Latency buckets from 5 ms to 5 min: a CPU engine's TTFT spans that range.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)


class ServerMetrics:
    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"model_name": model_name}

        def counter(name: str, doc: str, extra: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, ["model_name", *extra], registry=self.registry)

        def histogram(name: str, doc: str) -> Histogram:
            return Histogram(name, doc, ["model_name"], buckets=_LATENCY_BUCKETS, registry=self.registry)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, ["model_name"], registry=self.registry)

        self._labels = labels
        self.requests = counter("rocmforge_requests", "Finished requests by finish reason.", ("finish_reason",))
        self.prompt_tokens = counter("rocmforge_prompt_tokens", "Prompt tokens of finished requests.").labels(**labels)
        self.generation_tokens = counter("rocmforge_generation_tokens", "Generated tokens.").labels(**labels)
        self.ttft = histogram("rocmforge_time_to_first_token_seconds", "Time to first token.").labels(**labels)
        self.tpot = histogram("rocmforge_time_per_output_token_seconds", "Time per output token.").labels(**labels)
        self.e2e = histogram("rocmforge_e2e_request_latency_seconds", "Request latency.").labels(**labels)
        self.running = gauge("rocmforge_num_requests_running", "Requests in the running batch.").labels(**labels)
        self.waiting = gauge("rocmforge_num_requests_waiting", "Requests waiting to run.").labels(**labels)
        self.kv_usage = gauge("rocmforge_kv_cache_usage_perc", "Fraction of KV cache blocks in use.").labels(**labels)
        self.prefix_hit_rate = gauge(
            "rocmforge_prefix_cache_hit_rate", "Fraction of looked-up prompt tokens served from the prefix cache."
        ).labels(**labels)

    def observe_finished(self, metrics: RequestMetrics, finish_reasons: list[str | None]) -> None:
        for reason in finish_reasons:
            self.requests.labels(finish_reason=reason or "unknown", **self._labels).inc()
        self.prompt_tokens.inc(metrics.num_prompt_tokens)
        self.generation_tokens.inc(metrics.num_generation_tokens)
        if metrics.first_token_time is not None:
            self.ttft.observe(metrics.first_token_time - metrics.arrival_time)
            if metrics.finished_time is not None and metrics.num_generation_tokens > 1:
                decode = metrics.finished_time - metrics.first_token_time
                self.tpot.observe(decode / (metrics.num_generation_tokens - 1))
        if metrics.finished_time is not None:
            self.e2e.observe(metrics.finished_time - metrics.arrival_time)

    def render(self, stats: EngineStats) -> bytes:
        """The exposition text, with the engine's gauges read at scrape time."""
        self.running.set(stats.num_running)
        self.waiting.set(stats.num_waiting)
        self.kv_usage.set(stats.kv_cache_usage)
        self.prefix_hit_rate.set(stats.prefix_cache.hit_rate)
        return generate_latest(self.registry)
