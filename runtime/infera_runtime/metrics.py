"""Prometheus metrics (names fixed by the contract; the operator and the HPA read them).

Each runtime has its own registry (so tests can build several apps in one process). ``/metrics``
renders it followed by the process-wide default registry, which holds the process collectors and,
with the vLLM engine, vLLM's own ``vllm:*`` metrics. Engine gauges (KV-cache usage, running,
waiting) are read from the engine at scrape time, never per request.
``infera_requests_total`` counts API requests (``/v1/...``) only, not probes or scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .engine.base import EngineStats

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
_TPOT_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.04,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    1.0,
    2.5,
)
_DURATION_BUCKETS = (
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    60.0,
    120.0,
    300.0,
    600.0,
)


class _EngineCollector(Collector):
    def __init__(self, stats: Callable[[], EngineStats | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        stats = self._stats() or EngineStats()
        kv = GaugeMetricFamily(
            "infera_kv_cache_usage_ratio", "Fraction of the engine's KV cache in use (0..1)."
        )
        kv.add_metric([], stats.kv_cache_usage if stats.kv_cache_usage is not None else 0.0)
        yield kv
        if stats.running is not None:
            g = GaugeMetricFamily("infera_engine_requests_running", "Requests the engine is running.")
            g.add_metric([], stats.running)
            yield g
        if stats.waiting is not None:
            g = GaugeMetricFamily(
                "infera_engine_requests_waiting", "Requests waiting in the engine's scheduler."
            )
            g.add_metric([], stats.waiting)
            yield g


class Metrics:
    def __init__(self, engine_stats: Callable[[], EngineStats | None]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "infera_requests", "API requests by endpoint and HTTP status.", ["endpoint", "status"], registry=r
        )
        self.prompt_tokens = Counter("infera_prompt_tokens", "Prompt tokens processed.", registry=r)
        self.generation_tokens = Counter("infera_generation_tokens", "Tokens generated.", registry=r)
        self.ttft = Histogram(
            "infera_time_to_first_token_seconds",
            "Time from request arrival to the first generated token.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "infera_time_per_output_token_seconds",
            "Mean time per generated token after the first, per request.",
            buckets=_TPOT_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "infera_request_duration_seconds",
            "End-to-end request duration.",
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "infera_requests_in_flight", "Requests admitted and running in the engine.", registry=r
        )
        self.queued = Gauge("infera_requests_queued", "Requests waiting for admission.", registry=r)
        self.engine_ready = Gauge(
            "infera_engine_ready", "1 when the engine is loaded and healthy.", registry=r
        )
        r.register(_EngineCollector(engine_stats))
        self._children: dict[tuple[str, str], Counter] = {}

    def count_request(self, endpoint: str, status: int) -> None:
        key = (endpoint, str(status))
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(endpoint, key[1])
        child.inc()

    def observe_generation(
        self,
        *,
        prompt_tokens: int,
        generation_tokens: int,
        ttft_s: float | None,
        tpot_s: float | None,
    ) -> None:
        """One call per finished request (never per token)."""
        if prompt_tokens:
            self.prompt_tokens.inc(prompt_tokens)
        if generation_tokens:
            self.generation_tokens.inc(generation_tokens)
        if ttft_s is not None:
            self.ttft.observe(ttft_s)
        if tpot_s is not None:
            self.tpot.observe(tpot_s)

    def render(self) -> bytes:
        return generate_latest(self.registry) + generate_latest(REGISTRY)
